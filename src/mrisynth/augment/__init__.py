"""Building each augmentation arm's training set: classic transforms and GAN synthesis."""
