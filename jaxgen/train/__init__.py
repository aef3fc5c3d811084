"""Shared training: train state, optimizer/EMA, the generic loop, checkpoints, metrics."""
