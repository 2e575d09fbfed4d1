"""Scan over repeated blocks (``nn.scan``) and rematerialisation (``jax.checkpoint``).

``scan_blocks=True`` on ViT / Swin / Shunted runs each run of identical blocks as one
``nn.scan``: XLA compiles the block once instead of ``depth`` times, and the parameters of
the run are stacked along a new leading layer axis. ``remat`` recomputes each block's
activations in the backward pass instead of keeping them: ``'none'``, ``'full'`` (keep
nothing but the block inputs) or the name of a ``jax.checkpoint_policies`` policy (e.g.
``'dots_saveable'``: keep matmul outputs, recompute the rest).

Stacked layout: a model lists its scanned runs with ``scan_layout()`` as
``[(scanned_prefix, steps)]``, where ``steps[k]`` is a list of ``(sub_path, unscanned_prefix)``
pairs: the leaves under ``unscanned_prefix`` in the unscanned tree are slice ``k`` of the
leaves under ``scanned_prefix + sub_path``. E.g. ViT: ``blocks_3/attn/qkv/kernel [D, 3D]`` is
``blocks/attn/qkv/kernel[3]`` of ``[depth, D, 3D]``; Swin scans (window, shifted-window)
pairs, so ``layers_1/blocks_3/...`` is ``layers_1/pairs/blocks_1/...[1]``. ``stack`` and
``unstack`` move any collection (params, batch_stats, optimizer-like trees of the same
shape) between the two; ``to_layout`` makes a tree fit a model whichever it came in.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from swin_jax.models import layers

Path = Tuple[str, ...]
Step = List[Tuple[Path, Path]]
Layout = List[Tuple[Path, List[Step]]]

# Named jax.checkpoint policies that take no arguments (the factories such as
# save_only_these_names need names, which the models do not tag).
POLICIES = tuple(n for n in ('dots_saveable', 'dots_with_no_batch_dims_saveable',
                             'nothing_saveable', 'everything_saveable', 'checkpoint_dots',
                             'checkpoint_dots_with_no_batch_dims')
                 if hasattr(jax.checkpoint_policies, n))
REMAT = ('none', 'full') + POLICIES


def check_remat(remat: str) -> None:
  if remat not in REMAT:
    raise ValueError(f'remat={remat!r} (config.model.remat): use one of {list(REMAT)}')


def remat_block(cls, remat: str, static_argnums: Tuple[int, ...], prevent_cse: bool = True):
  """``cls`` wrapped in ``nn.remat`` per ``remat`` (unchanged for 'none').

  static_argnums count ``self`` as 0 (the Python bool ``deterministic`` must be static).
  prevent_cse: True for unrolled blocks (jax.checkpoint's default, which keeps XLA from
  merging the recomputation back into the forward pass). The scan passes False, because its
  loop boundary already does that (jax.checkpoint's advice). Measured on XLA:CPU: remat
  without scan does not lower the temp memory (README "Scan and remat").
  """
  check_remat(remat)
  if remat == 'none':
    return cls
  policy = None if remat == 'full' else getattr(jax.checkpoint_policies, remat)
  return nn.remat(cls, policy=policy, prevent_cse=prevent_cse, static_argnums=static_argnums)


def scan_block(cls, length: int, remat: str, in_axes: Tuple[Any, ...],
               static_argnums: Tuple[int, ...]):
  """``nn.scan`` of a block class whose ``__call__(carry, *inputs)`` returns ``(carry,
  None)``; ``in_axes`` per input: 0 (a leading layer axis of ``length``) or ``nn.broadcast``.
  Params, batch_stats and intermediates (``capture_intermediates``, ``sow``) get the layer
  axis 0; the 'params' and 'dropout' RNGs are split per layer, so every block is initialised
  and draws its masks on its own."""
  return nn.scan(remat_block(cls, remat, static_argnums, prevent_cse=False),
                 variable_axes={'params': 0, 'batch_stats': 0, 'intermediates': 0},
                 split_rngs={'params': True, 'dropout': True},
                 in_axes=tuple(in_axes), length=length)


def scan_body(block_cls):
  """A block class ``__call__(x, deterministic, drop_path=None, noise=None)`` as an
  ``nn.scan`` body ``__call__(x, drop_path, noise, deterministic) -> (x, None)``:
  ``drop_path`` this layer's rate, ``noise`` its drop-path uniforms [2, B] or None.

  The block's field ``drop_path`` stays static: 0 = no drop path in any layer (no random
  draws compiled in), else the traced per-layer rate is applied.
  """

  class ScanBody(block_cls):
    def __call__(self, x, drop_path, noise, deterministic: bool = True):  # pylint: disable=arguments-renamed
      rate = drop_path if self.drop_path > 0.0 else None
      return block_cls.__call__(self, x, deterministic, drop_path=rate, noise=noise), None

  ScanBody.__name__ = ScanBody.__qualname__ = f'Scan{block_cls.__name__}'
  return ScanBody


def branch_drop_path(block: nn.Module, y, rate, deterministic: bool, noise, branch: int):
  """Drop path of a block's residual branch ``branch`` (0 attention, 1 MLP): the block's
  static field ``drop_path`` when ``rate`` is None, else ``rate``, the traced rate of a
  scanned layer. noise: None or the block's drop-path uniforms [2, B] (drop_path_noise)."""
  n = None if noise is None else noise[branch]
  if rate is None:
    return layers.DropPath(block.drop_path)(y, deterministic, noise=n)
  if deterministic:
    return y
  return layers.drop_path(block, y, 1.0 - jnp.asarray(rate, jnp.float32), n)


# ----------------------------------------------------------------------------- layouts
def is_scanned(model) -> bool:
  return bool(getattr(model, 'scan_blocks', False))


def unscanned(model):
  """The same model with ``scan_blocks=False`` (same function, per-block parameters)."""
  return model.clone(scan_blocks=False) if is_scanned(model) else model


def _flat(tree: Mapping[str, Any]) -> Dict[Path, Any]:
  return traverse_util.flatten_dict(dict(tree)) if tree else {}


def _unflat(flat: Dict[Path, Any]) -> Dict[str, Any]:
  return traverse_util.unflatten_dict(flat) if flat else {}


def _stack_tree(tree, layout: Layout, np_mod):
  flat = _flat(tree)
  out = dict(flat)
  for prefix, steps in layout:
    groups: Dict[Path, List[Any]] = {}
    for step in steps:
      for sub, src in step:
        keys = [k for k in flat if k[:len(src)] == src]
        for k in keys:
          groups.setdefault(prefix + sub + k[len(src):], []).append(flat[k])
          del out[k]
    for k, vals in groups.items():
      if len(vals) != len(steps):
        raise ValueError(f'cannot stack {"/".join(k)}: {len(vals)} of {len(steps)} layers '
                         f'have it (a tree of another depth?)')
      out[k] = np_mod.stack([np_mod.asarray(v) for v in vals])
  return _unflat(out)


def _unstack_tree(tree, layout: Layout):
  flat = _flat(tree)
  out = dict(flat)
  for prefix, steps in layout:
    for k in [k for k in flat if k[:len(prefix)] == prefix]:
      v = flat[k]
      del out[k]
      rest = k[len(prefix):]
      if np.shape(v)[0] != len(steps):
        raise ValueError(f'{"/".join(k)} has {np.shape(v)[0]} layers, the model '
                         f'{len(steps)}')
      for i, step in enumerate(steps):
        for sub, src in step:
          if rest[:len(sub)] == sub:
            out[src + rest[len(sub):]] = v[i]
  return _unflat(out)


def stack(variables: Mapping[str, Any], model, np_mod=np) -> Dict[str, Any]:
  """Unscanned variables ``{collection: tree}`` -> the layout of the scanned ``model``
  (``model.scan_blocks`` True; returned unchanged otherwise). ``np_mod``: numpy for host
  arrays (the converters), jax.numpy inside jit."""
  if not is_scanned(model):
    return dict(variables)
  layout = model.scan_layout()
  return {col: _stack_tree(tree, layout, np_mod) for col, tree in variables.items()}


def unstack(variables: Mapping[str, Any], model) -> Dict[str, Any]:
  """Scanned-layout variables of ``model`` -> the unscanned layout (per-block trees)."""
  if not is_scanned(model):
    return dict(variables)
  layout = model.scan_layout()
  return {col: _unstack_tree(tree, layout) for col, tree in variables.items()}


def tree_is_scanned(tree: Mapping[str, Any], model) -> bool:
  """Whether a params-like tree is in ``model``'s scanned layout (its first scanned prefix
  is present), for trees whose origin is unknown (an Orbax checkpoint of another run)."""
  scanned = model if is_scanned(model) else model.clone(scan_blocks=True)
  layout = scanned.scan_layout()
  if not layout:
    return False
  prefix = layout[0][0]
  return any(k[:len(prefix)] == prefix for k in _flat(tree))


def to_layout(variables: Mapping[str, Any], model) -> Dict[str, Any]:
  """Variables in either layout -> ``model``'s (stacked for scan_blocks=True, per-block
  otherwise); a no-op when they already fit. Looks at 'params' to tell which they are."""
  if not hasattr(model, 'scan_layout'):
    return dict(variables)
  scanned_in = tree_is_scanned(variables.get('params', {}), model)
  if scanned_in == is_scanned(model):
    return dict(variables)
  if scanned_in:
    return unstack(variables, model.clone(scan_blocks=True))
  return stack(variables, model)


def check_scannable(name: str, depths: Sequence[int], pair: bool = False) -> None:
  """A clear error for depths a scan cannot take (Swin scans pairs: depths must be even)."""
  if pair:
    odd = [(i, int(d)) for i, d in enumerate(depths) if int(d) % 2]
    if odd:
      raise ValueError(f'{name}: scan_blocks=True scans (window, shifted-window) pairs, but '
                       f'stage depths {tuple(int(d) for d in depths)} has odd depth(s) at '
                       f'stage(s) {[i for i, _ in odd]}: use even depths or scan_blocks=False '
                       f'(config.model.scan_blocks).')
