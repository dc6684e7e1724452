"""Labelled training scenarios: cases built to have (or not have) a gradient problem."""
