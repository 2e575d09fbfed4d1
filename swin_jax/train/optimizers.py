"""Optax optimizers and learning-rate schedules built from a config.

config.optimizer: name ('adamw' | 'sgd'), lr (peak), b1, b2, eps, momentum (sgd),
  weight_decay, clip_grad_norm (0 = off), ema_decay (0 = off),
  lr_mults: ((regex, multiplier), ...): a parameter whose path ('backbone_0/body/conv1/kernel')
    matches a regex (re.search, first match wins) trains at multiplier x the scheduled lr, as
    a torch param group with its own lr (weight decay scales with it, as in torch's AdamW).
    DETR: (('^backbone_0/', 0.1),) gives the backbone 1e-5 next to 1e-4.
  frozen: (regex, ...): parameters that get no update at all (no decay either), in addition
    to the model's own frozen ones (DETR's stem + layer1, ``detr.trainable_mask``).
config.schedule: name ('cosine' | 'linear' | 'step' | 'constant'), warmup_steps or
  warmup_epochs, min_lr (end value for cosine/linear), warmup_init_lr,
  decay_epochs / decay_steps (boundaries for 'step'), decay_rate (factor at each boundary).
"""
from __future__ import annotations

import re
from typing import Callable, Optional, Sequence

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


def path_matcher(patterns):
  """Pytree-path predicate: True when '/'-joined path matches any regex in ``patterns``."""
  compiled = [re.compile(p) for p in patterns or ()]
  return lambda path: any(c.search(_path_str(path)) for c in compiled)


def scale_by_path(mults) -> optax.GradientTransformation:
  """Multiplies each update by the multiplier of the first (regex, mult) its path matches
  (1 when none does). Stateless; the tree structure decides everything at trace time."""
  compiled = [(re.compile(p), float(m)) for p, m in mults]

  def mult(path):
    name = _path_str(path)
    return next((m for c, m in compiled if c.search(name)), 1.0)

  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(lambda p, u: u * mult(p), updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _check_regexes(patterns, field: str):
  for i, p in enumerate(patterns):
    if not isinstance(p, str):
      raise ValueError(f'{field}[{i}]={p!r}: expected a regex string')
    try:
      re.compile(p)
    except re.error as e:
      raise ValueError(f'{field}[{i}]={p!r} is not a valid regex ({e})') from None


def _check_lr_mults(mults):
  """((regex, multiplier), ...) checked; a mistake names config.optimizer.lr_mults."""
  example = "e.g. (('^backbone_0/', 0.1),)"
  if isinstance(mults, str) or not all(
      isinstance(pm, (tuple, list)) and len(pm) == 2 for pm in mults):
    raise ValueError(f'config.optimizer.lr_mults={mults!r}: expected (regex, multiplier) '
                     f'pairs, {example}')
  out = []
  for i, (pattern, mult) in enumerate(mults):
    _check_regexes([pattern], f'config.optimizer.lr_mults[{i}]')
    try:
      mult = float(mult)
    except (TypeError, ValueError):
      raise ValueError(f'config.optimizer.lr_mults[{i}]=({pattern!r}, {mult!r}): the '
                       f'multiplier must be a number, {example}') from None
    out.append((pattern, mult))
  return tuple(out)


def make_optimizer(config, schedule: optax.Schedule,
                   trainable: Optional[Callable] = None) -> optax.GradientTransformation:
  """Gradient clipping -> AdamW/SGD with the decay mask and the schedule -> lr multipliers.

  trainable: optional params -> pytree of bools (the model's own frozen leaves are False).
  Frozen leaves (those and config.optimizer.frozen) get zero updates and no optimizer state;
  gradient clipping sees only the trained leaves, as torch's clip over params with grads.
  """
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
  mults = _check_lr_mults(o.get('lr_mults', None) or ())
  if mults:
    chain.append(scale_by_path(mults))
  tx = optax.chain(*chain)
  frozen_patterns = o.get('frozen', None) or ()
  if isinstance(frozen_patterns, str):  # one pattern, not its characters
    frozen_patterns = (frozen_patterns,)
  _check_regexes(frozen_patterns, 'config.optimizer.frozen')
  frozen = path_matcher(frozen_patterns)
  if trainable is None and not frozen_patterns:
    return tx

  def labels(params):
    base = trainable(params) if trainable is not None else jax.tree.map(lambda _: True, params)
    return jax.tree_util.tree_map_with_path(
        lambda p, t: 'train' if (t and not frozen(p)) else 'frozen', base)
  return optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)
