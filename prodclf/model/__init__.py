"""The model: the bundle contract, the architecture catalogue, the Keras builders and
augmentation, and the TensorFlow runtime on a worker.

``catalog`` and ``bundle`` need no TensorFlow (the driver uses them); ``builders``,
``augment`` and ``runtime`` import it only inside the functions that need it.
"""
