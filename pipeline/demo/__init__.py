"""A web demo of face verification with a model the pipeline trained: `bash scripts/demo` (see docs/demo.md)."""
