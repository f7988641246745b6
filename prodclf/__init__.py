"""prodclf: tag an e-commerce catalog with product categories from its product photos.

Importing the package is cheap on purpose: TensorFlow is imported only on the workers
(``prodclf.model.runtime``) and by the training code, never by the driver's tagging path.
"""

__version__ = "0.1.0"
