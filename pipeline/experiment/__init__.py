"""Experiment assembly: the recipes a profile trains, one run of one recipe, the checks before any stage runs."""
