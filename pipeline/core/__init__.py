"""Core infrastructure: typed config, paths, atomic writes, registries, devices, code dependencies, tracking, the stage runner."""
