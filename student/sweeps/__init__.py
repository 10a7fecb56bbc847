"""Ablations: a grid of training runs over one store, and their comparison.

sweep.py     `python -m student.sweep`: one run folder per grid point, resumable
compare.py   `python -m student.compare`: a table, validation curves, the teacher FLOPs skipped
"""
