"""Orchestration: the DVC graph, the stage scheduler, the Prefect artifacts and flows."""
