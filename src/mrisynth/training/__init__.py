"""Training: the GAN trainer, its checkpoints and distributed sync, the segmenter, GAN usefulness."""
