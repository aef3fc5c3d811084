"""Paradigms: each wires a model, a loss, a train step and a sampler step together."""
