"""The I/O layer: the only code that knows about URIs, paths, buckets and files.

``uris`` parses and checks references, ``objects`` reads single objects (images, model
files, manifests) through boto3 or the local filesystem, and ``tables`` reads and writes
the Parquet libraries through Spark.
"""
