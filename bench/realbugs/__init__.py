"""Real deep-learning bug reports converted to small PyTorch programs (see README.md)."""
