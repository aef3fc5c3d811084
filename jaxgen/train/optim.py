"""Optimizer, learning-rate schedule and EMA from ``config.optim``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def make_schedule(cfg, num_steps: int) -> optax.Schedule:
  """Linear warm-up to ``cfg.lr`` then cosine decay (to ``lr * cfg.final_lr_ratio``
  at ``num_steps``) or constant."""
  warmup = min(cfg.warmup_steps, max(num_steps - 1, 0))
  if cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, warmup_steps=max(warmup, 1), decay_steps=max(num_steps, warmup + 1),
        end_value=cfg.lr * cfg.final_lr_ratio)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, cfg.lr, max(warmup, 1)), optax.constant_schedule(cfg.lr)],
      [max(warmup, 1)])


def decay_mask(params):
  """Weight decay on matrices and conv kernels only (not biases, norms)."""
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(cfg, num_steps: int):
  """AdamW with global-norm clipping; returns ``(tx, schedule)``."""
  schedule = make_schedule(cfg, num_steps)
  parts = []
  if cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=decay_mask))
  return optax.chain(*parts), schedule


def ema_decay(cfg, step):
  """EMA decay at ``step``; with ``cfg.ema_warmup`` the decay ramps up as
  ``min(decay, (1 + step) / (10 + step))`` so early averages do not lag."""
  if cfg.get("ema_warmup", False):
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(cfg.ema_decay, (1.0 + step) / (10.0 + step))
  return jnp.asarray(cfg.ema_decay, jnp.float32)


def ema_update(ema, params, decay):
  return jax.tree.map(lambda e, p: e * decay + (1.0 - decay) * p, ema, params)
