"""Shunted Transformer checkpoints -> ``swin_jax.models.shunted.ShuntedTransformer`` variables.

The layout is the official OliverRensu/Shunted-Transformer release: ``model.state_dict()``
of ``SSA.ShuntedTransformer``, possibly nested under ``'model'`` (the training script's
``{'model': ..., 'optimizer': ...}``; ``read_state_dict`` unwraps it). The flax names are the
torch ones with ``_`` for list indices (``block1.0.attn.kv1.weight`` ->
``block1_0/attn/kv1/kernel``, ``patch_embed1.conv.4.running_var`` ->
``batch_stats: patch_embed1/conv_4/var``), so the mapping is one-to-one.

Linear weights [out, in] become Dense kernels [in, out]; Conv2d weights (OIHW, depthwise
[C, 1, 3, 3] too) flax Conv kernels (HWIO); LayerNorm / BatchNorm ``weight`` becomes ``scale``;
BatchNorm ``running_mean`` / ``running_var`` go to the ``batch_stats`` collection as ``mean``
/ ``var``; ``num_batches_tracked`` is ignored (flax's BatchNorm uses a fixed momentum).

``convert_shunted`` returns the whole variables dict ``{'params': ..., 'batch_stats': ...}``
(it is marked ``returns_variables`` for ``load_torch_checkpoint``).
"""
from __future__ import annotations

import functools
import re
from typing import Any, Dict, List, Mapping, Optional

import flax.linen as nn
import numpy as np

from swin_jax.convert import common
from swin_jax.convert.common import Path
from swin_jax.convert.torch_io import StateDict, to_numpy, unwrap_state_dict

# Buffers the model does not need (flax's BatchNorm has a fixed momentum).
IGNORED_BUFFERS = ('num_batches_tracked',)
# Model fields readable from a checkpoint (num_heads is not).
_ARCH_FIELDS = ('embed_dims', 'depths', 'mlp_ratios', 'sr_ratios', 'num_conv', 'in_chans',
                'qkv_bias')
_COLLECTIONS = ('params', 'batch_stats')
# Flax leaf -> torch name, per collection: BatchNorm statistics are torch's running_* buffers.
_LEAVES = {'params': common.PARAM_LEAVES,
           'batch_stats': {'mean': 'running_mean', 'var': 'running_var'}}


def shunted_key(collection: str, path: Path) -> str:
  """(collection, flax path) -> official state_dict key, e.g. ('params', ('block1_0', 'attn',
  'kv1', 'kernel')) -> 'block1.0.attn.kv1.weight'."""
  return common.torch_key(path, '.+', _LEAVES.get(collection, {}))


def shunted_variables_to_torch(variables: Mapping[str, Any],
                               model: Optional[nn.Module] = None) -> StateDict:
  """The inverse of ``convert_shunted`` (without ``num_batches_tracked``): flax variables ->
  an official-layout state_dict of numpy arrays. ``model``: the model they are for, needed
  for a scan_blocks=True (stacked) layout."""
  variables = common.unscanned_variables(variables, model)
  return common.to_state_dict(variables, shunted_key, _COLLECTIONS)


# ---------------------------------------------------------------------------------------------
# Diagnostics.


def infer_shunted_config(sd: Mapping[str, np.ndarray]) -> Dict[str, Any]:
  """Model fields readable from an official Shunted state_dict."""
  cfg: Dict[str, Any] = {}
  w = sd.get('patch_embed1.conv.0.weight')
  if w is not None and w.ndim == 4:
    cfg['in_chans'] = int(w.shape[1])
  convs = common.key_indices(sd, r'patch_embed1\.conv\.(\d+)\.weight$')
  if convs:  # indices 0 (7x7), 3, 6, ... (3x3 blocks), then the 2x2 conv at 3 + 3 num_conv
    cfg['num_conv'] = (max(convs) - 3) // 3
  stages = sorted(common.key_indices(sd, r'norm(\d+)\.weight$'))
  if stages and stages == list(range(1, len(stages) + 1)):
    cfg['embed_dims'] = tuple(int(sd[f'norm{i}.weight'].shape[0]) for i in stages)
    depths, ratios, srs = [], [], []
    for i in stages:
      js = common.key_indices(sd, rf'block{i}\.(\d+)\.')
      depths.append(max(js) + 1 if js else 0)
      fc1 = sd.get(f'block{i}.0.mlp.fc1.weight')
      ratios.append(fc1.shape[0] / fc1.shape[1] if fc1 is not None else None)
      sr1 = sd.get(f'block{i}.0.attn.sr1.weight')
      srs.append(int(sr1.shape[2]) if sr1 is not None else
                 (1 if f'block{i}.0.attn.kv.weight' in sd else None))
    cfg['depths'] = tuple(depths)
    if None not in ratios:
      cfg['mlp_ratios'] = tuple(int(r) if float(r).is_integer() else r for r in ratios)
    if None not in srs:
      cfg['sr_ratios'] = tuple(srs)
  if 'block1.0.attn.q.weight' in sd:
    cfg['qkv_bias'] = 'block1.0.attn.q.bias' in sd
  head = sd.get('head.weight')
  cfg['num_classes'] = int(head.shape[0]) if head is not None else 0
  return cfg


def _key_order(key: str):
  """Sort key in the model's order: patch_embed{i}, block{i}, norm{i} per stage, then head."""
  m = re.match(r'(patch_embed|block|norm)(\d+)\.?(\d*)', key)
  if m:
    return (int(m.group(2)), ('patch_embed', 'block', 'norm').index(m.group(1)),
            int(m.group(3) or 0), key)
  return (1 << 20, 0, 0, key)


def _mismatch_error(name: str, model: nn.Module, sd: Mapping[str, np.ndarray], drop_head: bool,
                    missing: List[str], unexpected: List[str],
                    shape_errors: List[common.ShapeError]) -> ValueError:
  cfg = infer_shunted_config(sd)
  notes = {'embed_dims': ' (and num_heads dividing them: heads cannot be read from a checkpoint)'}
  return common.mismatch_error(
      f'checkpoint (official Shunted layout) does not fit model {name!r}:', missing,
      unexpected, shape_errors, order=_key_order, cfg=cfg,
      fixes=[common.arch_fix(name, model, cfg, 'shunted', _ARCH_FIELDS, notes),
             common.head_fix(cfg['num_classes'], model.num_classes, drop_head)],
      fallback='check that the checkpoint is an official Shunted Transformer (SSA.py) of '
               'this configuration')


# ---------------------------------------------------------------------------------------------
# state_dict -> flax variables.


@common.scan_aware
def convert_shunted(sd: Mapping[str, Any], model: nn.Module, *, name: str = 'shunted',
                    drop_head: bool = False) -> Dict[str, Any]:
  """Converts an official Shunted Transformer state_dict into ``model``'s variables.

  Args:
    sd: flat {key: array} (numpy or torch) of the official release, or a dict nesting it
      under 'model' / 'state_dict'; ``num_batches_tracked`` buffers are ignored.
    model: a ``ShuntedTransformer`` (its fields decide the expected keys and shapes).
    name: the model name, for error messages.
    drop_head: leave ``head`` out of the returned params and ignore the checkpoint's head.

  Returns:
    ``{'params': ..., 'batch_stats': ...}`` (numpy float32) with the structure and shapes of
    ``model.init(...)`` (without ``params['head']`` if ``drop_head``).

  Raises:
    ValueError: missing / unexpected keys or shape mismatches, naming the first few keys and
      the model name or overrides that would fit (e.g. a shunted_s checkpoint for
      shunted_t), or a head of another size without ``num_classes=`` / ``drop_head=True``.
  """
  sd = {k: to_numpy(v) for k, v in unwrap_state_dict(sd).items()
        if not any(k.endswith(b) for b in IGNORED_BUFFERS)}
  full_sd = sd
  targets = common.variable_shapes(model, _COLLECTIONS)
  if drop_head:
    targets, sd = common.without_head(targets, sd)
  return common.map_state_dict(
      sd, targets, shunted_key,
      error=functools.partial(_mismatch_error, name, model, full_sd, drop_head))


convert_shunted.returns_variables = True  # load_torch_checkpoint passes the result through
