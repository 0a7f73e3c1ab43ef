"""Judging: evaluation on the datasets, the exact optimum and certificate, plots, composite assembly."""
