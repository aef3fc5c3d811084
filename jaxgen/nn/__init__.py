"""Shared Flax Linen layers used by every architecture."""
