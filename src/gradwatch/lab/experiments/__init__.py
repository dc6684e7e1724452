"""One module per lab experiment; each defines EXPERIMENT (see ../experiment.py)."""
