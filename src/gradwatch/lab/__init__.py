"""Canonical experiments: data made in code or bundled, models, and the runs that show each
claim."""
