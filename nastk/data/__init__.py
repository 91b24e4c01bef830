"""Data loading, preprocessing and augmentation for 3D segmentation patches."""
