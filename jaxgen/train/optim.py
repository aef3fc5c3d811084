"""Optimizer, learning-rate schedule and EMA from ``config.optim``."""

from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp
import ml_collections
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


def per_network_optimizer(cfg, num_steps: int, lr_ratios: Dict[str, float]):
  """One optimizer per network for params ``{name: network_params, ...}``.

  Each network gets ``make_optimizer`` of ``cfg`` with its learning rate scaled by
  ``lr_ratios[name]`` (its own Adam moments, clipping norm and step count), combined
  by one ``optax.multi_transform`` over the top-level keys, so the train state and
  checkpoints hold a single optimizer state. Returns ``(tx, schedule)``: the schedule
  is the first network's (the one the loop logs as ``lr``).
  """
  txs, schedules = {}, []
  for name, ratio in lr_ratios.items():
    net_cfg = cfg
    if ratio != 1.0:
      net_cfg = ml_collections.ConfigDict(cfg.to_dict())
      net_cfg.lr = cfg.lr * ratio
    txs[name], schedule = make_optimizer(net_cfg, num_steps)
    schedules.append(schedule)
  labels = lambda params: {k: jax.tree.map(lambda _: k, v) for k, v in params.items()}
  return optax.multi_transform(txs, labels), schedules[0]


def update_networks(tx: optax.GradientTransformation, grads: Dict[str, Any], opt_state,
                    params: Dict[str, Any]):
  """Updates only the networks named in ``grads`` with a ``per_network_optimizer``.

  The other networks' parameters and optimizer states come back unchanged (the same
  arrays: not even Adam's momentum or weight decay moves them, as zero gradients
  would). Their share of the update is computed on zeros and discarded, which XLA
  removes as dead code. Returns ``(params, opt_state)``.
  """
  unknown = set(grads) - set(params)
  if unknown:
    raise KeyError(f"No network {sorted(unknown)} in params ({sorted(params)}).")
  full = {k: grads[k] if k in grads else jax.tree.map(jnp.zeros_like, v)
          for k, v in params.items()}
  updates, new_state = tx.update(full, opt_state, params)
  params = {k: optax.apply_updates(v, updates[k]) if k in grads else v
            for k, v in params.items()}
  inner = {k: new_state.inner_states[k] if k in grads else s
           for k, s in opt_state.inner_states.items()}
  return params, new_state._replace(inner_states=inner)


def ema_decay(cfg, step):
  """EMA decay at ``step``; with ``cfg.ema_warmup`` the decay ramps up as
  ``min(decay, (1 + step) / (10 + step))`` so early averages do not lag."""
  if cfg.ema_warmup:
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(cfg.ema_decay, (1.0 + step) / (10.0 + step))
  return jnp.asarray(cfg.ema_decay, jnp.float32)


def ema_update(ema, params, decay):
  return jax.tree.map(lambda e, p: e * decay + (1.0 - decay) * p, ema, params)
