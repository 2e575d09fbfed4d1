"""Optax optimizers and learning-rate schedules built from a config.

config.optimizer: name ('adamw' | 'sgd'), lr (peak), b1, b2, eps, momentum (sgd),
  weight_decay, clip_grad_norm (0 = off), ema_decay (0 = off).
config.schedule: name ('cosine' | 'linear' | 'step' | 'constant'), warmup_steps or
  warmup_epochs, min_lr (end value for cosine/linear), warmup_init_lr,
  decay_epochs / decay_steps (boundaries for 'step'), decay_rate (factor at each boundary).
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

# Parameter names that never get weight decay (timm's no_weight_decay + 1-D params).
NO_DECAY_NAMES = ('pos_embed', 'cls_token', 'dist_token', 'absolute_pos_embed',
                  'relative_position_bias_table', 'query_embed')


def _path_str(path) -> str:
  parts = []
  for p in path:
    key = getattr(p, 'key', getattr(p, 'name', getattr(p, 'idx', p)))
    parts.append(str(key))
  return '/'.join(parts)


def decay_mask(params):
  """True for leaves that get weight decay: kernels (ndim >= 2) not named in NO_DECAY_NAMES.

  Biases, norm scales/biases (1-D), position embeddings and class tokens get none.
  """
  def keep(path, leaf):
    name = _path_str(path)
    if any(re.search(rf'(^|/){n}($|/)', name) for n in NO_DECAY_NAMES):
      return False
    return jnp.ndim(leaf) >= 2
  return jax.tree_util.tree_map_with_path(keep, params)


def _steps(cfg, key_steps: str, key_epochs: str, steps_per_epoch: int, default=0):
  steps = cfg.get(key_steps)
  if steps is not None:
    return steps
  epochs = cfg.get(key_epochs)
  if epochs is not None:
    if isinstance(epochs, (list, tuple)):
      return [int(round(e * steps_per_epoch)) for e in epochs]
    return int(round(epochs * steps_per_epoch))
  return default


def make_schedule(config, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
  """Warm-up (linear from warmup_init_lr) followed by the decay named in config.schedule."""
  s = config.schedule
  lr = float(config.optimizer.lr)
  warmup = int(_steps(s, 'warmup_steps', 'warmup_epochs', steps_per_epoch))
  if warmup >= total_steps and total_steps > 0:
    raise ValueError(f'config.schedule warm-up ({warmup} steps) is not shorter than the run '
                     f'({total_steps} steps): lower config.schedule.warmup_epochs/_steps.')
  init_lr = float(s.get('warmup_init_lr', 0.0) or 0.0)
  min_lr = float(s.get('min_lr', 0.0) or 0.0)
  decay_steps = max(total_steps - warmup, 1)
  name = s.name
  if name == 'cosine':
    main = optax.cosine_decay_schedule(lr, decay_steps, alpha=min_lr / lr if lr else 0.0)
  elif name == 'linear':
    main = optax.linear_schedule(lr, min_lr, decay_steps)
  elif name == 'constant':
    main = optax.constant_schedule(lr)
  elif name == 'step':
    bounds = _steps(s, 'decay_steps', 'decay_epochs', steps_per_epoch, default=[])
    rate = float(s.get('decay_rate', 0.1))
    main = optax.piecewise_constant_schedule(
        lr, {int(b) - warmup: rate for b in bounds if int(b) > warmup})
  else:
    raise ValueError(f"config.schedule.name={name!r}: use 'cosine', 'linear', 'step' or "
                     f"'constant'")
  if warmup == 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(init_lr, lr, warmup), main], [warmup])


def make_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
  """Gradient clipping -> AdamW/SGD with the decay mask and the schedule."""
  o = config.optimizer
  chain = []
  if o.get('clip_grad_norm', 0.0):
    chain.append(optax.clip_by_global_norm(float(o.clip_grad_norm)))
  if o.name == 'adamw':
    chain.append(optax.adamw(schedule, b1=o.get('b1', 0.9), b2=o.get('b2', 0.999),
                             eps=o.get('eps', 1e-8), weight_decay=float(o.weight_decay),
                             mask=decay_mask))
  elif o.name == 'sgd':
    if o.weight_decay:
      chain.append(optax.add_decayed_weights(float(o.weight_decay), mask=decay_mask))
    chain.append(optax.sgd(schedule, momentum=o.get('momentum', 0.9), nesterov=False))
  else:
    raise ValueError(f"config.optimizer.name={o.name!r}: use 'adamw' or 'sgd'")
  return optax.chain(*chain)
