"""seggrid: a reproducible study of how training settings change 3D U-Net segmentation."""

__version__ = "0.1.0"
