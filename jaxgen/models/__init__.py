"""Architectures only (no losses, no training): DiT, U-Net, and later token models."""
