"""Measurements of the pipeline itself (speed, memory, calibration, GPU checks); run each as `python -m bench.<name>`
from the project root. Results go to reports/bench/ (and reports/ for the statistical ones)."""
