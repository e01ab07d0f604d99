"""One thin entry point per pipeline stage: `python -m stages.<name>` (what dvc.yaml runs)."""
