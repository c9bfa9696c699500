"""iceseg: pure-PyTorch reference implementations of ice and remote-sensing segmentation models.

Every model file imports only torch (plus the standard library), so it can be copied alone into
another project. Data, metrics and the training loop live in their own files; see README.md.
"""

__version__ = "0.1.0"
