"""Evaluation: Frechet distances in classifier / Inception features, accuracy."""
