"""The training pipeline: ``data`` (labelled rows, splits, decoding on the executors,
petastorm into ``tf.data``) and ``job`` (fit, score, export the bundle with its report).
"""
