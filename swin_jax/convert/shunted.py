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

import re
from typing import Any, Dict, List, Mapping, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from swin_jax.convert.torch_io import StateDict, to_numpy, unwrap_state_dict
from swin_jax.convert.vit import (Path, _flax_to_torch_shape, _to_2tuple,
                                  _torch_to_flax, key_mismatch_lines)

# Buffers the model does not need (flax's BatchNorm has a fixed momentum).
IGNORED_BUFFERS = ('num_batches_tracked',)
# Model fields readable from a checkpoint (num_heads is not).
_ARCH_FIELDS = ('embed_dims', 'depths', 'mlp_ratios', 'sr_ratios', 'num_conv', 'in_chans',
                'qkv_bias')
_LEAF_TO_TORCH = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight',
                  ('params', 'bias'): 'bias', ('batch_stats', 'mean'): 'running_mean',
                  ('batch_stats', 'var'): 'running_var'}


def shunted_key(collection: str, path: Path) -> str:
  """(collection, flax path) -> official state_dict key, e.g. ('params', ('block1_0', 'attn',
  'kv1', 'kernel')) -> 'block1.0.attn.kv1.weight'."""
  *mods, leaf = path
  parts = []
  for m in mods:
    mm = re.fullmatch(r'(.+)_(\d+)', m)
    parts += [mm.group(1), mm.group(2)] if mm else [m]
  parts.append(_LEAF_TO_TORCH.get((collection, leaf), leaf))
  return '.'.join(parts)


def variable_shapes(model: nn.Module) -> Dict[Tuple[str, Path], jax.ShapeDtypeStruct]:
  """Flat {(collection, path): ShapeDtypeStruct} of ``model``'s params and batch_stats."""
  h, w = (int(s) for s in _to_2tuple(model.img_size))
  x = jax.ShapeDtypeStruct((1, h, w, model.in_chans), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
  out = {}
  for col in ('params', 'batch_stats'):
    for path, s in traverse_util.flatten_dict(dict(shapes.get(col, {}))).items():
      out[(col, path)] = s
  return out


def shunted_variables_to_torch(variables: Mapping[str, Any]) -> StateDict:
  """The inverse of ``convert_shunted`` (without ``num_batches_tracked``): flax variables ->
  an official-layout state_dict of numpy arrays."""
  out: StateDict = {}
  for col in ('params', 'batch_stats'):
    for path, v in traverse_util.flatten_dict(dict(variables.get(col, {}))).items():
      v = np.asarray(v)
      if path[-1] == 'kernel':
        v = v.transpose(3, 2, 0, 1) if v.ndim == 4 else v.T
      out[shunted_key(col, path)] = np.ascontiguousarray(v)
  return out


# ---------------------------------------------------------------------------------------------
# Diagnostics.


def infer_shunted_config(sd: Mapping[str, np.ndarray]) -> Dict[str, Any]:
  """Model fields readable from an official Shunted state_dict."""
  cfg: Dict[str, Any] = {}
  w = sd.get('patch_embed1.conv.0.weight')
  if w is not None and w.ndim == 4:
    cfg['in_chans'] = int(w.shape[1])
  convs = [int(m.group(1)) for k in sd
           for m in [re.match(r'patch_embed1\.conv\.(\d+)\.weight$', k)] if m]
  if convs:  # indices 0 (7x7), 3, 6, ... (3x3 blocks), then the 2x2 conv at 3 + 3 num_conv
    cfg['num_conv'] = (max(convs) - 3) // 3
  stages = sorted({int(m.group(1)) for k in sd for m in [re.match(r'norm(\d+)\.weight$', k)] if m})
  if stages and stages == list(range(1, len(stages) + 1)):
    cfg['embed_dims'] = tuple(int(sd[f'norm{i}.weight'].shape[0]) for i in stages)
    depths, ratios, srs = [], [], []
    for i in stages:
      js = {int(m.group(1)) for k in sd for m in [re.match(rf'block{i}\.(\d+)\.', k)] if m}
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


def _model_value(model: nn.Module, field: str):
  v = getattr(model, field)
  if field in ('embed_dims', 'depths', 'sr_ratios'):
    return tuple(int(x) for x in v)
  if field == 'mlp_ratios':
    return tuple(int(r) if float(r).is_integer() else float(r) for r in v)
  return v


def matching_model_names(cfg: Mapping[str, Any]) -> List[str]:
  """Registered Shunted names whose architecture fits ``cfg``."""
  from swin_jax.models import create_model, list_models  # pylint: disable=g-import-not-at-top
  out = []
  for name in list_models('shunted'):
    m = create_model(name)
    if all(k not in cfg or _model_value(m, k) == cfg[k] for k in _ARCH_FIELDS):
      out.append(name)
  return out


def _key_order(key: str):
  """Sort key in the model's order: patch_embed{i}, block{i}, norm{i} per stage, then head."""
  m = re.match(r'(patch_embed|block|norm)(\d+)\.?(\d*)', key)
  if m:
    return (int(m.group(2)), ('patch_embed', 'block', 'norm').index(m.group(1)),
            int(m.group(3) or 0), key)
  return (1 << 20, 0, 0, key)


def _mismatch_error(name: str, model: nn.Module, sd: Mapping[str, np.ndarray],
                    missing: List[str], unexpected: List[str],
                    shape_errors: List[Tuple[str, tuple, tuple]],
                    drop_head: bool) -> ValueError:
  lines = key_mismatch_lines(
      f'checkpoint (official Shunted layout) does not fit model {name!r}:', missing,
      unexpected, shape_errors, _key_order)
  cfg = infer_shunted_config(sd)
  diffs = {k: cfg[k] for k in _ARCH_FIELDS if k in cfg and _model_value(model, k) != cfg[k]}
  fixes = []
  if diffs:
    ov = ', '.join(f'{k}={v!r}' for k, v in diffs.items())
    fix = f'pass the model overrides {ov}'
    if 'embed_dims' in diffs:
      fix += ' (and num_heads dividing them: heads cannot be read from a checkpoint)'
    names = [n for n in matching_model_names(cfg) if n != name]
    if names:
      fix = (f'this looks like a checkpoint of {" or ".join(repr(n) for n in names)}: use '
             f'that model name, or {fix}')
    fixes.append(fix)
  n_ckpt = cfg['num_classes']
  if n_ckpt != model.num_classes and not drop_head:
    fixes.append(
        f'the checkpoint head has {n_ckpt} classes, the model {model.num_classes}: pass '
        f'num_classes={n_ckpt} to load the head, or drop_head=True to leave the head out of '
        f'the loaded params (keep your own initialised head, e.g. for fine-tuning)')
  if not fixes:
    fixes.append('check that the checkpoint is an official Shunted Transformer (SSA.py) of '
                 'this configuration')
  lines.append('The checkpoint looks like: ' + ', '.join(f'{k}={v!r}' for k, v in cfg.items()))
  lines += [f'Fix: {f}.' for f in fixes]
  return ValueError('\n'.join(lines))


# ---------------------------------------------------------------------------------------------
# state_dict -> flax variables.


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
  targets = variable_shapes(model)
  if drop_head:
    targets = {p: s for p, s in targets.items() if p[1][0] != 'head'}
    sd = {k: v for k, v in sd.items() if not k.startswith('head.')}

  # Check names and shapes first, convert after: a mismatch costs no array work.
  missing, shape_errors, used, todo = [], [], set(), []
  for (col, path), target in targets.items():
    key = shunted_key(col, path)
    if key not in sd:
      missing.append(key)
      continue
    used.add(key)
    want = _flax_to_torch_shape(path, target.shape)
    got = tuple(sd[key].shape)
    if got != want:
      shape_errors.append((key, got, want))
      continue
    todo.append((col, path, key, target))
  unexpected = [k for k in sd if k not in used]
  if missing or unexpected or shape_errors:
    raise _mismatch_error(name, model, full_sd, missing, unexpected, shape_errors, drop_head)

  out: Dict[str, Dict[Path, np.ndarray]] = {'params': {}, 'batch_stats': {}}
  for col, path, key, target in todo:
    out[col][path] = np.ascontiguousarray(_torch_to_flax(path, sd[key])).astype(target.dtype)
  return {col: traverse_util.unflatten_dict(flat) for col, flat in out.items() if flat}


convert_shunted.returns_variables = True  # load_torch_checkpoint passes the result through
