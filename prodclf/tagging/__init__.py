"""The tagging pipeline: ``transforms`` (pure DataFrame steps), ``udf`` (the worker side)
and ``job`` (preflight, read, tag, write, manifest).
"""
