"""Optax optimizers and learning-rate schedules built from a config.

config.optimizer: name ('adamw' | 'sgd'), lr (peak), b1, b2, eps, momentum (sgd),
  weight_decay, clip_grad_norm (0 = off), ema_decay (0 = off),
  lr_mults: ((regex, multiplier), ...): a parameter whose path ('backbone_0/body/conv1/kernel')
    matches a regex (re.search, first match wins) trains at multiplier x the scheduled lr, as
    a torch param group with its own lr (weight decay scales with it, as in torch's AdamW).
    DETR: (('^backbone_0/', 0.1),) gives the backbone 1e-5 next to 1e-4.
  frozen: (regex, ...): parameters that get no update at all (no decay either), in addition
    to the model's own frozen ones (DETR's stem + layer1, ``detr.trainable_mask``).
  Both match per-block names ('blocks_3/...'), also with config.model.scan_blocks: a stacked
    leaf gets one multiplier per layer (``per_block_values``).
  layer_decay: 0 or 1 = off; d < 1 trains layer l of L at lr x d ** (L + 1 - l) (BEiT /
    SimMIM / Swin-V2 fine-tuning): ``layer_id`` numbers embeddings 0, blocks 1..L, the final
    norm and head L + 1. Multiplies with lr_mults. Also with config.model.scan_blocks: a
    stacked leaf gets one multiplier per layer.
config.finetune: new_head (re-initialise the classifier head after config.init_from loads
  it, e.g. another label set with the same number of classes), freeze ('' | 'backbone':
  train only the head, a linear probe | 'head': keep the loaded head as it is).
config.schedule: name ('cosine' | 'linear' | 'step' | 'constant'), warmup_steps or
  warmup_epochs, min_lr (end value for cosine/linear), warmup_init_lr,
  decay_epochs / decay_steps (boundaries for 'step'), decay_rate (factor at each boundary).
"""
from __future__ import annotations

import functools
import re
from typing import Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from swin_jax.models import create_model, model_family, scan

# Parameter names that never get weight decay (timm's no_weight_decay + 1-D params).
NO_DECAY_NAMES = ('pos_embed', 'cls_token', 'dist_token', 'absolute_pos_embed',
                  'relative_position_bias_table', 'query_embed')


def _path_str(path) -> str:
  parts = []
  for p in path:
    key = getattr(p, 'key', getattr(p, 'name', getattr(p, 'idx', p)))
    parts.append(str(key))
  return '/'.join(parts)


def _path_key(path) -> Tuple[str, ...]:
  """A tree path as flax's flat-dict key ('blocks', 'attn', 'qkv', 'kernel')."""
  return tuple(_path_str(path).split('/'))


def _stacked(model):
  """path -> whether the leaf is stacked over layers in ``model``'s scanned layout
  (always False for None or an unscanned model)."""
  prefixes = ([prefix for prefix, _ in model.scan_layout()]
              if model is not None and scan.is_scanned(model) else [])
  def stacked(path) -> bool:
    key = _path_key(path)
    return any(key[:len(q)] == q for q in prefixes)
  return stacked


def decay_mask(params, model=None):
  """True for leaves that get weight decay: kernels (ndim >= 2) not named in NO_DECAY_NAMES.

  Biases, norm scales/biases (1-D), position embeddings and class tokens get none.
  model: the module ``params`` belong to; with scan_blocks=True a stacked leaf counts its
  per-layer ndim (a stack of biases [L, D] is still biases).
  """
  stacked = _stacked(model)

  def keep(path, leaf):
    name = _path_str(path)
    if any(re.search(rf'(^|/){n}($|/)', name) for n in NO_DECAY_NAMES):
      return False
    return jnp.ndim(leaf) - int(stacked(path)) >= 2
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


def _first_mult(mults):
  """name -> the multiplier of the first (regex, mult) ``name`` matches (1 when none)."""
  compiled = [(re.compile(p), float(m)) for p, m in mults]
  return lambda name: next((m for c, m in compiled if c.search(name)), 1.0)


def scale_by_path(mults, model=None) -> optax.GradientTransformation:
  """Multiplies each update by the multiplier of the first (regex, mult) its per-block path
  matches (1 when none does); per layer for the stacked leaves of a scanned ``model``
  (``per_block_values``). Stateless; the tree structure decides everything at trace time."""
  mult = _first_mult(mults)
  return scale_by_values(lambda u: per_block_values(mult, u, model))


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


# ---------------------------------------------------------------- layer-wise lr decay
LAYER_DECAY_FAMILIES = ('vit', 'swin', 'shunted')
# Parameters of the embedding (layer 0) in every family.
_EMBED_RE = re.compile(r'^(patch_embed\d*|cls_token|dist_token|reg_token|pos_embed|'
                       r'absolute_pos_embed|mask_token)(/|$)')


def _first(pattern: str, name: str):
  m = re.match(pattern, name)
  return tuple(int(g) for g in m.groups()) if m else None


def layer_id(family: str, name: str, depths: Sequence[int]) -> int:
  """Layer index of parameter ``name`` ('blocks_3/attn/qkv/kernel') for layer-wise lr decay.

  L = sum(depths) blocks. Embeddings are layer 0, block b (counted over all stages) is b + 1,
  the final norm and the head L + 1:
    vit:     patch_embed, cls/dist/reg tokens, pos_embed -> 0; blocks_i -> i + 1 (BEiT, timm
             ``param_groups_layer_decay`` with the ViT group_matcher).
    swin:    patch_embed -> 0; layers_s/blocks_j -> sum(depths[:s]) + j + 1; layers_s's
             PatchMerging (downsample, at the stage's end) -> sum(depths[:s + 1]), its last
             block's (the official ``optimizer.get_swin_layer`` of SimMIM fine-tuning).
    shunted: patch_embed1 (conv stem) -> 0; block{s}_j -> sum(depths[:s-1]) + j + 1;
             patch_embed{s} (s > 1, the downsampling before stage s) and norm{s-1} ->
             sum(depths[:s-1]), the previous stage's last block (as Swin's merging); the
             last stage's norm (the final norm) and the head -> L + 1.
  """
  depths = [int(d) for d in depths]
  last = sum(depths) + 1
  starts = [sum(depths[:s]) for s in range(len(depths) + 1)]
  if _EMBED_RE.match(name) and not (family == 'shunted' and name.startswith('patch_embed')):
    return 0
  if family == 'vit':
    m = _first(r'^blocks_(\d+)/', name)
    return m[0] + 1 if m else last
  if family == 'swin':
    m = _first(r'^layers_(\d+)/blocks_(\d+)/', name)
    if m:
      return starts[m[0]] + m[1] + 1
    m = _first(r'^layers_(\d+)/downsample/', name)
    return starts[m[0] + 1] if m else last
  if family == 'shunted':
    m = _first(r'^patch_embed(\d+)/', name)
    if m:
      return 0 if m[0] == 1 else starts[m[0] - 1]
    m = _first(r'^block(\d+)_(\d+)/', name)
    if m:
      return starts[m[0] - 1] + m[1] + 1
    m = _first(r'^norm(\d+)/', name)
    if m and m[0] < len(depths):
      return starts[m[0]]
    return last
  raise ValueError(f'layer-wise lr decay knows the families {list(LAYER_DECAY_FAMILIES)}, '
                   f'not {family!r}')


def _config_model(config):
  """The module config.model describes (no init)."""
  overrides = {k: v for k, v in config.model.to_dict().items()
               if k not in ('name', 'dtype') and v is not None}
  return create_model(config.model.name, **overrides)


def model_depths(config) -> Tuple[str, Tuple[int, ...]]:
  """(family, blocks per stage) of config.model, read off the module's fields (no init)."""
  family = model_family(config.model.name)
  if family not in LAYER_DECAY_FAMILIES:
    return family, ()
  model = _config_model(config)
  depths = (model.depth,) if family == 'vit' else tuple(model.depths)
  return family, tuple(int(d) for d in depths)


def per_block_values(value: Callable[[str], float], params, model=None):
  """Pytree like ``params`` of ``value(name)`` for each leaf, ``name`` its per-block path
  ('blocks_3/attn/qkv/kernel'): the names of the unscanned model and of the checkpoints.

  model: the module ``params`` belong to. With ``scan_blocks=True`` a stacked leaf
  [steps, ...] holds several blocks: its value is a float32 array [steps, 1, ...] whose
  slice k is the value of the block it stacks (``scan.stack`` of the per-block values), or
  one Python float where every block's is the same; other leaves get Python floats. So a
  regex over block names (lr_mults, frozen, layer decay) means the same with scan on or
  off. Only shapes of ``params`` are read.
  """
  if model is None or not scan.is_scanned(model):
    return jax.tree_util.tree_map_with_path(lambda p, _: float(value(_path_str(p))), params)
  is_stacked = _stacked(model)
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  stacked = {_path_key(p) for p, _ in leaves if is_stacked(p)}
  # Unstack layer indices (a stacked leaf -> arange(steps)) to reach the per-block names,
  # take the values there, then stack them back into the scanned layout.
  index = {_path_key(p): np.arange(np.shape(v)[0]) if _path_key(p) in stacked else np.zeros(())
           for p, v in leaves}
  per_block = scan.unstack({'params': traverse_util.unflatten_dict(index)}, model)['params']
  values = per_block_values(value, per_block)
  values = traverse_util.flatten_dict(scan.stack({'params': values}, model)['params'])

  def out(path, leaf):
    k = _path_key(path)
    if k not in stacked:
      return values[k]
    v = np.asarray(values[k], np.float32)
    if np.all(v == v[0]):
      return float(v[0])
    return v.reshape((-1,) + (1,) * (np.ndim(leaf) - 1))
  return jax.tree_util.tree_map_with_path(out, params)


def scale_by_values(values: Callable) -> optax.GradientTransformation:
  """Multiplies each update by its entry of ``values(updates)`` (a pytree of floats or
  per-layer arrays, e.g. ``per_block_values``), fixed at trace time; stateless."""
  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates,
                        values(updates)), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def layer_decay_mults(family: str, depths: Sequence[int], decay: float, params, model=None):
  """Pytree like ``params`` of each leaf's lr multiplier decay ** (L + 1 - layer_id), by its
  per-block name; per-layer arrays [steps, 1, ...] for the stacked leaves of a scanned
  ``model`` (``per_block_values``)."""
  top = sum(int(d) for d in depths) + 1
  return per_block_values(
      lambda name: float(decay) ** (top - layer_id(family, name, depths)), params, model)


def scale_by_layer_decay(family: str, depths: Sequence[int], decay: float,
                         model=None) -> optax.GradientTransformation:
  """Multiplies each update by its ``layer_decay_mults`` entry; stateless."""
  return scale_by_values(lambda u: layer_decay_mults(family, depths, decay, u, model))


def _layer_decay(config, scanned=None):
  """config.optimizer.layer_decay checked -> (family, depths, decay, scanned) or None when
  off; scanned: the module when config.model.scan_blocks (stacked leaves), else None."""
  decay = config.optimizer.get('layer_decay', 0.0)
  try:
    decay = float(decay or 0.0)
  except (TypeError, ValueError):
    raise ValueError(f'config.optimizer.layer_decay={decay!r} must be a number in (0, 1] '
                     f'(0 or 1 = off; e.g. 0.75).') from None
  if decay in (0.0, 1.0):
    return None
  if not 0.0 < decay < 1.0:
    raise ValueError(f'config.optimizer.layer_decay={decay} must be in (0, 1] (0 or 1 = off; '
                     f'BEiT fine-tunes ViT-B with 0.65, SimMIM Swin-B with 0.8).')
  if not config.get('model') or not config.model.get('name'):
    raise ValueError('config.optimizer.layer_decay needs config.model.name to number layers.')
  family, depths = model_depths(config)
  if family not in LAYER_DECAY_FAMILIES:
    raise ValueError(f'config.optimizer.layer_decay={decay}: config.model.name='
                     f'{config.model.name!r} is a {family} model; layer-wise decay is defined '
                     f'for {list(LAYER_DECAY_FAMILIES)}. Set config.optimizer.layer_decay=0 '
                     f'(or use config.optimizer.lr_mults).')
  return family, depths, decay, scanned


# ---------------------------------------------------------------- fine-tuning switches
# The classifier head's top-level parameter name per family (a Dense: kernel, bias).
HEAD_NAMES = {'vit': 'head', 'swin': 'head', 'shunted': 'head', 'resnet': 'fc'}
FREEZE_CHOICES = ('', 'backbone', 'head')


def head_name(model_name: str) -> str:
  """The classifier head's parameter name of ``model_name``'s family ('head', 'fc')."""
  family = model_family(model_name)
  if family not in HEAD_NAMES:
    raise ValueError(f'config.finetune: config.model.name={model_name!r} ({family}) has no '
                     f'classifier head to switch; config.finetune applies to '
                     f'{sorted(HEAD_NAMES)} models. Use config.optimizer.frozen regexes.')
  return HEAD_NAMES[family]


def finetune_options(config) -> Tuple[bool, str]:
  """config.finetune checked -> (new_head, freeze)."""
  ft = config.get('finetune') or {}
  new_head = bool(ft.get('new_head', False))
  freeze = ft.get('freeze', '') or ''
  if freeze not in FREEZE_CHOICES:
    raise ValueError(f'config.finetune.freeze={freeze!r}: use one of {list(FREEZE_CHOICES)} '
                     f"('backbone' trains only the head: a linear probe; 'head' keeps the "
                     f'loaded head fixed).')
  if new_head and freeze == 'head':
    raise ValueError("config.finetune.new_head=True with config.finetune.freeze='head' would "
                     'freeze a freshly initialised head: drop one of the two.')
  return new_head, freeze


def finetune_frozen_patterns(config) -> Tuple[str, ...]:
  """Regexes that config.finetune.freeze adds to config.optimizer.frozen."""
  _, freeze = finetune_options(config)
  if not freeze:
    return ()
  head = re.escape(head_name(config.model.name))
  return (f'^(?!{head}/)',) if freeze == 'backbone' else (f'^{head}/',)


def finetune_head(config, loaded_params, fresh_params, skipped: Sequence[str] = ()):
  """Applies config.finetune to params just loaded by config.init_from.

  Args:
    config: the run's config.
    loaded_params: params after loading the checkpoint (numpy or jax pytree).
    fresh_params: the model's fresh initialisation, the same structure.
    skipped: keystr paths the loader kept fresh (e.g. a head of another class count).

  Returns:
    (params, reset): with new_head, the head leaves are taken from ``fresh_params`` and
    named in ``reset``; else ``loaded_params`` unchanged and reset = [].

  Raises:
    ValueError: freeze='head' but the checkpoint's head did not load (kept fresh).
  """
  new_head, freeze = finetune_options(config)
  if not (new_head or freeze == 'head'):
    return loaded_params, []
  prefix = head_name(config.model.name) + '/'
  is_head = lambda p: _path_str(p).startswith(prefix)
  if freeze == 'head':
    fresh = [jax.tree_util.keystr(p) for p, _ in
             jax.tree_util.tree_flatten_with_path(fresh_params)[0] if is_head(p)]
    if set(fresh) & set(skipped):
      raise ValueError(f"config.finetune.freeze='head' but config.init_from's head did not "
                       f'fit the model (kept fresh: {sorted(set(fresh) & set(skipped))}): '
                       f"a frozen fresh head cannot learn. Use config.finetune.freeze='' or "
                       f"'backbone', or a checkpoint with config.input.num_classes classes.")
    return loaded_params, []
  reset = []

  def pick(p, loaded, fresh):
    if is_head(p):
      reset.append(jax.tree_util.keystr(p))
      return fresh
    return loaded
  params = jax.tree_util.tree_map_with_path(pick, loaded_params, fresh_params)
  if not reset:
    raise ValueError(f'config.finetune.new_head=True but the model has no {prefix[:-1]!r} '
                     f'parameters (config.model.num_classes=0?).')
  return params, reset


def make_optimizer(config, schedule: optax.Schedule,
                   trainable: Optional[Callable] = None) -> optax.GradientTransformation:
  """Gradient clipping -> AdamW/SGD with the decay mask and the schedule -> lr multipliers
  (config.optimizer.lr_mults, then config.optimizer.layer_decay: they multiply).

  trainable: optional params -> pytree of bools (the model's own frozen leaves are False).
  Frozen leaves (those, config.optimizer.frozen and config.finetune.freeze) get zero updates
  and no optimizer state; gradient clipping sees only the trained leaves, as torch's clip
  over params with grads.
  """
  o = config.optimizer
  chain = []
  scanned = (_config_model(config) if config.get('model') and config.model.get('scan_blocks')
             else None)
  mask = functools.partial(decay_mask, model=scanned)
  if o.get('clip_grad_norm', 0.0):
    chain.append(optax.clip_by_global_norm(float(o.clip_grad_norm)))
  if o.name == 'adamw':
    chain.append(optax.adamw(schedule, b1=o.get('b1', 0.9), b2=o.get('b2', 0.999),
                             eps=o.get('eps', 1e-8), weight_decay=float(o.weight_decay),
                             mask=mask))
  elif o.name == 'sgd':
    if o.weight_decay:
      chain.append(optax.add_decayed_weights(float(o.weight_decay), mask=mask))
    chain.append(optax.sgd(schedule, momentum=o.get('momentum', 0.9), nesterov=False))
  else:
    raise ValueError(f"config.optimizer.name={o.name!r}: use 'adamw' or 'sgd'")
  mults = _check_lr_mults(o.get('lr_mults', None) or ())
  if mults:
    chain.append(scale_by_path(mults, scanned))
  layer_decay = _layer_decay(config, scanned)
  if layer_decay:
    chain.append(scale_by_layer_decay(*layer_decay))
  frozen_patterns = o.get('frozen', None) or ()
  if isinstance(frozen_patterns, str):  # one pattern, not its characters
    frozen_patterns = (frozen_patterns,)
  _check_regexes(frozen_patterns, 'config.optimizer.frozen')
  frozen_patterns = tuple(frozen_patterns) + finetune_frozen_patterns(config)
  if trainable is None and not frozen_patterns:
    return optax.chain(*chain)
  frozen = re.compile('|'.join(f'(?:{p})' for p in frozen_patterns)) if frozen_patterns else None
  # 1 where a leaf (a block's slice of a stacked leaf) trains, 0 where a regex freezes it.
  kept = lambda tree: per_block_values(
      lambda name: 0.0 if frozen is not None and frozen.search(name) else 1.0, tree, scanned)
  if scanned is not None and frozen is not None:
    # A stacked leaf frozen in some of its blocks only still trains, with those slices'
    # gradients (before clipping: its norm is over trained parameters, as torch's) and
    # updates (weight decay included) zeroed: the per-block model's updates.
    chain = [scale_by_values(kept)] + chain + [scale_by_values(kept)]
  tx = optax.chain(*chain)

  def labels(params):
    base = trainable(params) if trainable is not None else jax.tree.map(lambda _: True, params)
    return jax.tree.map(lambda t, k: 'train' if (t and np.any(np.asarray(k))) else 'frozen',
                        base, kept(params))
  return optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)
