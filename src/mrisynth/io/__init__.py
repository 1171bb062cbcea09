"""Side effects: NIfTI/TIFF/array files, the dataset manifest, Great Expectations, MLflow tracking."""
