"""Reference models: pretrained face embedders with their own preprocessing, scored beside the trained rows."""
