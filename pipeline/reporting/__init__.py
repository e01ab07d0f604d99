"""Reporting: the tables, the run-level statistics behind their verdicts, the seed-noise report."""
