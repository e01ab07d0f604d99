"""Verification protocol (LFW 10-fold, insightface variant, TAR@FAR), embeddings, paired statistics.

Import from the submodules (`verification`, `embeddings`, `significance`): a stage that needs only one of them
does not pay for scipy at start-up.
"""
