"""The training engine, its optimiser, data order, checkpoints, compilation and multi-process support."""
