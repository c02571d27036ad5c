"""Baseline models that MMBM is measured against (bench/): reimplementations, not MMBM code."""
