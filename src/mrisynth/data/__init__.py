"""Datasets in and out: BraTS/phantom import, nnU-Net/MONAI/NIfTI export."""
