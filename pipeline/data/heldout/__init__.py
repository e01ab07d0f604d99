"""Held-out test protocols of FaceX-Zoo's table beyond the three training-time ones, one kind per module, each
registered in `base.KINDS` (`kinds.parse` reads params `protocols`): cross_pose and cross_age verification with
look-alike negatives (CPLFW / CALFW-like), per-group verification (group, RFW-like), 1:N identification with
distractors (identification, MegaFace-like) and the same search on LFW's photos (lfw_identification).

A synthetic kind draws its identities from its own `block` (identity ids `block * IDENTITY_BLOCK + i`, seed streams
keyed by it), so they are disjoint from training, from the three pair protocols (blocks 1-3) and from each other. It
uses the generator of the training set (same seed, nuisance and look-alike strength); only the sampling of identities
and pairs differs, as the published protocols differ from LFW.

This module imports nothing: stage evaluate reads `scoring` alone, without the kinds and the generator behind them.
"""
