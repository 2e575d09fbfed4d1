"""Swin checkpoints -> ``swin_jax.models.swin.SwinTransformer`` params.

Two PyTorch layouts are read, told apart by their keys (``detect_layout``):

* the microsoft/Swin-Transformer release (``{'model': state_dict}``): PatchMerging at the END
  of stage N as ``layers.N.downsample.*`` (so stage 0 has one), classifier ``head.weight``;
  the same names as the flax params, so the mapping is one-to-one
  (``layers.0.blocks.1.attn.qkv.weight`` -> ``layers_0/blocks_1/attn/qkv/kernel``).
* timm's: PatchMerging at the START of the next stage, ``layers.{N+1}.downsample.*``, and the
  classifier as ``head.fc.*``. Older timm files also hold the ``relative_position_index`` /
  ``attn_mask`` buffers; they are ignored (the model rebuilds them), as in the official
  ``load_pretrained``.

Linear weights [out, in] become Dense kernels [in, out], the patch Conv2d weight (OIHW) a flax
Conv kernel (HWIO), LayerNorm ``weight`` becomes ``scale``.

Window size change: a ``relative_position_bias_table`` [(2s-1)^2, heads] of another window is
resized to the model's [(2ws-1)^2, heads] exactly as the official fine-tuning code
(``utils.load_pretrained``) does: the table viewed as [1, heads, 2s-1, 2s-1] goes through
``F.interpolate(size=(2ws-1, 2ws-1), mode='bicubic')`` (``align_corners=False``, no
antialias). timm's own loader resizes these tables differently (BEiT-style geometric
interpolation), so a timm model loaded at another window gives other values than this.

Classifier: ``drop_head=True`` leaves it out; ``head_class_map`` keeps the checkpoint rows it
lists (ImageNet-22K -> 1K with the official ``data/map22kto1k.txt``, as ``load_pretrained``).

Detection backbone (a model with ``detection=True``): the per-stage output norms are
``norm{i}`` as in SwinTransformer/Swin-Transformer-Object-Detection (``norm0`` ->
``norm0/{scale, bias}``). Two sources load:

* an official detection checkpoint: the backbone's own state_dict, or a whole mmdet detector
  (``{'state_dict': {'backbone.*', 'neck.*', ...}}``), whose ``backbone.`` keys are taken and
  the rest ignored;
* a classification checkpoint (either layout above), as the detection configs'
  ``pretrained=`` starts the backbone (``init_weights`` then ``mmcv_custom.load_checkpoint``
  with ``strict=False``): its ``norm`` and ``head`` are ignored and, where it has no
  ``norm{i}`` at all, those start as the official initialisation gives them (scale 1, bias
  0). Bias tables of another window are resized bicubic, as that loader does.
"""
from __future__ import annotations

import functools
import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import flax.linen as nn
import numpy as np
from flax import traverse_util

from swin_jax.convert import common, resize
from swin_jax.convert.common import Path
from swin_jax.convert.torch_io import StateDict, require_file, to_numpy

LAYOUTS = ('official', 'timm')
# Buffers that some checkpoints store and the model rebuilds (the official load_pretrained
# deletes them too).
IGNORED_BUFFERS = ('relative_position_index', 'attn_mask')
# Model fields that define the architecture, readable from a checkpoint.
_ARCH_FIELDS = ('embed_dim', 'depths', 'num_heads', 'patch_size', 'mlp_ratio', 'in_chans',
                'qkv_bias')
_TABLE = 'relative_position_bias_table'
_STAGE_NORM = re.compile(r'norm\d+')  # norm0 .. norm3: the detection backbone's stage norms
ClassMap = Union[str, os.PathLike, Sequence[int], np.ndarray]


# ---------------------------------------------------------------------------------------------
# Layouts and key names.


def detect_layout(sd: Mapping[str, Any]) -> str:
  """'official' (downsample at the end of a stage, ``head.weight``) or 'timm'.

  As timm's ``checkpoint_filter_fn``: only the official layout has ``layers.0.downsample``;
  a headless single-stage checkpoint is the same in both layouts.
  """
  if 'head.weight' in sd or any(k.startswith('layers.0.downsample.') for k in sd):
    return 'official'
  return 'timm'


def timm_to_official_key(key: str) -> str:
  """``layers.{N+1}.downsample.*`` -> ``layers.N.downsample.*``, ``head.fc.*`` -> ``head.*``."""
  m = re.match(r'layers\.(\d+)\.downsample\.(.*)', key)
  if m:
    return f'layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}'
  if key.startswith('head.fc.'):
    return 'head.' + key[len('head.fc.'):]
  return key


def official_to_timm_key(key: str) -> str:
  """The inverse of ``timm_to_official_key``."""
  m = re.match(r'layers\.(\d+)\.downsample\.(.*)', key)
  if m:
    return f'layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}'
  if key in ('head.weight', 'head.bias'):
    return 'head.fc.' + key[len('head.'):]
  return key


def swin_key(path: Path) -> str:
  """Flax param path -> official state_dict key, e.g. ('layers_0', 'blocks_1', 'attn', 'qkv',
  'kernel') -> 'layers.0.blocks.1.attn.qkv.weight'."""
  return common.torch_key(path, 'layers|blocks')


# Module order inside a block / PatchMerging / PatchEmbed, for listing keys as the model has them.
_SUB_ORDER = ('proj', 'norm1', 'attn.relative_position_bias_table', 'attn.qkv', 'attn.proj',
              'norm2', 'mlp.fc1', 'mlp.fc2', 'norm', 'reduction')


def _sub_order(rest: str):
  base, _, leaf = rest.rpartition('.')
  if rest in _SUB_ORDER:
    base, leaf = rest, ''
  rank = _SUB_ORDER.index(base) if base in _SUB_ORDER else (len(_SUB_ORDER) if base else -1)
  return (rank, {'weight': 0, 'bias': 1}.get(leaf, 2), rest)


def _key_order(key: str):
  """Sort key in the model's order: patch_embed, layers.i (blocks.j, downsample), norm, head."""
  m = re.match(r'layers\.(\d+)\.(?:blocks\.(\d+)\.(.*)|downsample\.(.*))', key)
  if m:
    if m.group(2) is not None:
      return (1, int(m.group(1)), 0, int(m.group(2)), _sub_order(m.group(3)))
    return (1, int(m.group(1)), 1, 0, _sub_order(m.group(4)))
  top, _, rest = key.partition('.')
  m = re.fullmatch(r'norm(\d+)', top)  # a detection backbone's per-stage norms
  if m:
    return (2, int(m.group(1)), 0, 0, _sub_order(rest))
  return ({'patch_embed': 0, 'norm': 2, 'head': 3}.get(top, 4), 0, 0, 0, _sub_order(rest or top))


def backbone_state_dict(sd: Mapping[str, Any]) -> Mapping[str, Any]:
  """An mmdet detector's state_dict (``backbone.*``, ``neck.*``, ...) -> its backbone's,
  ``backbone.`` stripped; any other state_dict as it is."""
  if any(k.startswith(('patch_embed.', 'layers.')) for k in sd):
    return sd
  if any(k.startswith('backbone.') for k in sd):
    return {k[len('backbone.'):]: v for k, v in sd.items() if k.startswith('backbone.')}
  return sd


def _is_stage_norm(key: str) -> bool:
  return bool(_STAGE_NORM.fullmatch(key.split('.', 1)[0]))


def to_official_layout(sd: Mapping[str, Any]) -> Tuple[StateDict, str]:
  """(state_dict in the official layout without ignored buffers, detected layout)."""
  layout = detect_layout(sd)
  out = {}
  for k, v in sd.items():
    if any(b in k for b in IGNORED_BUFFERS):
      continue
    out[timm_to_official_key(k) if layout == 'timm' else k] = v
  return out, layout


def swin_params_to_torch(params: Mapping[str, Any], layout: str = 'official',
                         model: Optional[nn.Module] = None) -> StateDict:
  """The inverse of ``convert_swin``: flax params -> a state_dict (numpy) of ``layout``.
  ``model``: the model the params are for, needed for a scan_blocks=True (stacked) layout."""
  params = common.unscanned_variables({'params': params}, model)['params']
  if layout not in LAYOUTS:
    raise ValueError(f'layout={layout!r}: use one of {LAYOUTS}')
  rename = official_to_timm_key if layout == 'timm' else (lambda k: k)
  return common.to_state_dict({'params': params}, lambda _, path: rename(swin_key(path)))


# ---------------------------------------------------------------------------------------------
# Relative position bias tables.


def _table_side(length: int) -> Optional[int]:
  s = int(round(math.sqrt(length)))
  return s if s * s == length and s % 2 == 1 else None


def resize_relative_position_bias_table(table: np.ndarray, window_size: int) -> np.ndarray:
  """Resizes a bias table to another window as the official fine-tuning code does.

  ``utils.load_pretrained`` of microsoft/Swin-Transformer: ``F.interpolate(
  table.permute(1, 0).view(1, heads, S1, S1), size=(S2, S2), mode='bicubic')`` (no
  antialias, ``align_corners=False``) then ``.view(heads, S2 * S2).permute(1, 0)``, with
  ``S = 2 * window - 1``. Computed in NumPy (``swin_jax.convert.resize``), no torch.

  Args:
    table: [(2s-1)^2, heads] for a square window s.
    window_size: the target window ws.

  Returns:
    [(2ws-1)^2, heads] in the dtype of ``table`` (the input itself if the sizes agree).
  """
  table = np.asarray(table)
  if table.ndim != 2:
    raise ValueError(f'expected a relative position bias table [(2s-1)^2, heads], got shape '
                     f'{table.shape}')
  s1 = _table_side(table.shape[0])
  if s1 is None:
    raise ValueError(f'relative position bias table of {table.shape[0]} rows is not '
                     f'(2s-1)^2 for a square window s')
  s2 = 2 * int(window_size) - 1
  if s1 == s2:
    return table
  heads = table.shape[1]
  grid = table.T.reshape(heads, s1, s1).astype(np.float32)  # torch's [1, heads, S1, S1]
  out = resize.torch_bicubic_resize(grid, (s2, s2), antialias=False)
  return out.reshape(heads, s2 * s2).T.astype(table.dtype)


def _table_for(value: np.ndarray, shape: Sequence[int]) -> Optional[np.ndarray]:
  """``value`` resized to a bias table of ``shape`` [(2ws-1)^2, heads], or None where either
  is not such a table or the heads differ."""
  if value.ndim != 2 or len(shape) != 2 or value.shape[1] != shape[1]:
    return None
  s2 = _table_side(shape[0])
  if s2 is None or _table_side(value.shape[0]) is None:
    return None
  return resize_relative_position_bias_table(value, (s2 + 1) // 2)


def adapt_swin_param(model: nn.Module, path: str, value, shape) -> Optional[np.ndarray]:
  """``ADAPTERS['swin']``: resizes a bias table to the model's window, else None."""
  del model  # the target shape says everything
  if not path.endswith(f"['{_TABLE}']"):
    return None
  return _table_for(np.asarray(value), tuple(shape))


# ---------------------------------------------------------------------------------------------
# Classifier rows.


def read_class_map(head_class_map: ClassMap) -> np.ndarray:
  """Source-class indices [num_classes] from a sequence or a text file (one index a line).

  The file format is the official ``data/map22kto1k.txt`` (1000 lines of ImageNet-22K
  indices); blank lines are skipped.
  """
  if isinstance(head_class_map, (str, os.PathLike)):
    path = require_file(head_class_map, 'head_class_map file')
    idx = []
    with open(path) as f:
      for n, line in enumerate(f, 1):
        line = line.strip()
        if not line:
          continue
        try:
          idx.append(int(line))
        except ValueError:
          raise ValueError(f'{path}:{n}: expected one integer class index per line, got '
                           f'{line[:40]!r}') from None
    idx = np.asarray(idx, np.int64)
  else:
    idx = np.asarray(list(head_class_map) if not isinstance(head_class_map, np.ndarray)
                     else head_class_map)
    if idx.size == 0:
      idx = idx.astype(np.int64)
    if idx.ndim != 1 or idx.dtype.kind not in 'iu':
      raise ValueError(f'head_class_map must be a 1-D sequence of integer class indices (or a '
                       f'text file of them), got {idx.dtype} array of shape {idx.shape}')
  if idx.size == 0:
    raise ValueError('head_class_map is empty')
  return idx.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Diagnostics.


def infer_swin_config(sd: Mapping[str, np.ndarray]) -> Dict[str, Any]:
  """Model fields readable from an official-layout Swin state_dict."""
  cfg: Dict[str, Any] = {}
  w = sd.get('patch_embed.proj.weight')
  if w is not None and w.ndim == 4:
    cfg['embed_dim'], cfg['in_chans'] = int(w.shape[0]), int(w.shape[1])
    if w.shape[2] == w.shape[3]:
      cfg['patch_size'] = int(w.shape[2])
  stages = common.key_indices(sd, r'layers\.(\d+)\.blocks\.\d+\.')
  if stages:
    cfg['depths'] = tuple(
        max(common.key_indices(sd, rf'layers\.{i}\.blocks\.(\d+)\.'), default=-1) + 1
        for i in range(max(stages) + 1))
    heads, windows = [], []
    for i in range(len(cfg['depths'])):
      t = sd.get(f'layers.{i}.blocks.0.attn.{_TABLE}')
      heads.append(int(t.shape[1]) if t is not None and t.ndim == 2 else None)
      s = _table_side(t.shape[0]) if t is not None and t.ndim == 2 else None
      if s:
        windows.append((s + 1) // 2)
    if None not in heads:
      cfg['num_heads'] = tuple(heads)
    if windows:
      # A stage whose map is not larger than the window has a smaller table: take the largest.
      cfg['window_size'] = max(windows)
    fc1 = sd.get('layers.0.blocks.0.mlp.fc1.weight')
    if fc1 is not None and fc1.ndim == 2 and fc1.shape[1]:
      cfg['mlp_ratio'] = fc1.shape[0] / fc1.shape[1]
    if 'layers.0.blocks.0.attn.qkv.weight' in sd:
      cfg['qkv_bias'] = 'layers.0.blocks.0.attn.qkv.bias' in sd
  head = sd.get('head.weight')
  cfg['num_classes'] = int(head.shape[0]) if head is not None else 0
  return cfg


def _mismatch_error(name: str, model: nn.Module, sd: Mapping[str, np.ndarray], layout: str,
                    drop_head: bool, missing: List[str], unexpected: List[str],
                    shape_errors: List[common.ShapeError]) -> ValueError:
  cfg = infer_swin_config(sd)

  def same_window(m):  # of the registered names that fit, those of the checkpoint's window
    return cfg.get('window_size') in (None, m.window_size)

  detection = None
  if not getattr(model, 'detection', False) and any(_is_stage_norm(k) for k in unexpected):
    detection = ('a detection backbone checkpoint (norm0 .. per stage, no head): pass '
                 'detection=True to get the detection backbone')

  n_ckpt = cfg['num_classes']
  if getattr(model, 'detection', False):  # no head to fit
    drop_head = True
  head = common.head_fix(n_ckpt, model.num_classes, drop_head, more=(
      'head_class_map= (checkpoint class indices, one per model class, or a text file of '
      'them) to keep the listed rows of the head',))
  if head and n_ckpt == 21841 and model.num_classes == 1000:
    head += (" (ImageNet-22K -> 1K: head_class_map='data/map22kto1k.txt' of "
             'microsoft/Swin-Transformer, as its fine-tuning code does)')
  return common.mismatch_error(
      f'checkpoint ({layout} layout) does not fit model {name!r}:', missing, unexpected,
      shape_errors, order=_key_order, cfg=cfg,
      show=official_to_timm_key if layout == 'timm' else (lambda k: k),
      fixes=[common.arch_fix(name, model, cfg, 'swin', _ARCH_FIELDS, prefer=same_window),
             head, detection],
      fallback='check that the checkpoint is a Swin Transformer (v1) of this configuration')


# ---------------------------------------------------------------------------------------------
# state_dict -> flax params.


def _select_head_rows(sd: StateDict, model: nn.Module, head_class_map: ClassMap) -> StateDict:
  if 'head.weight' not in sd:
    raise ValueError('head_class_map= was given but the checkpoint has no classifier head '
                     '(head.weight / head.fc.weight)')
  idx = read_class_map(head_class_map)
  n_ckpt = sd['head.weight'].shape[0]
  bad = idx[(idx < 0) | (idx >= n_ckpt)]
  if bad.size:
    raise ValueError(f'head_class_map has indices outside the checkpoint head of {n_ckpt} '
                     f'classes: {bad[:5].tolist()}')
  if idx.size != model.num_classes:
    raise ValueError(f'head_class_map selects {idx.size} classes but the model has '
                     f'num_classes={model.num_classes}: pass num_classes={idx.size}')
  sd = dict(sd)
  sd['head.weight'] = sd['head.weight'][idx]
  if 'head.bias' in sd:
    sd['head.bias'] = sd['head.bias'][idx]
  return sd


@common.scan_aware
def convert_swin(sd: Mapping[str, Any], model: nn.Module, *, name: str = 'swin',
                 drop_head: bool = False,
                 head_class_map: Optional[ClassMap] = None) -> Dict[str, Any]:
  """Converts an official or timm Swin state_dict into ``model``'s params.

  Args:
    sd: flat {key: array} (numpy or torch), either layout (detected; see ``detect_layout``);
      ``relative_position_index`` / ``attn_mask`` buffers are ignored.
    model: a ``SwinTransformer`` (its fields decide the expected keys and shapes).
    name: the model name, for error messages.
    drop_head: leave ``head`` out of the returned params and ignore the checkpoint's head.
    head_class_map: checkpoint class indices, one per model class (a sequence, or a text file
      with one index per line like the official ``data/map22kto1k.txt``): the head keeps
      those rows, in that order (ImageNet-22K weights into a 1K model).

  A ``detection=True`` model takes an official detection checkpoint (the backbone's, or a
  whole mmdet detector's ``backbone.*``) or a classification one (module docstring: its
  norm / head ignored, ``norm{i}`` returned as scale 1 / bias 0 where it has none).

  Returns:
    The ``params`` tree (numpy float32), structure and shapes of
    ``model.init(...)['params']`` (without 'head' if ``drop_head``). Bias tables of another
    window size are resized as the official fine-tuning code does.

  Raises:
    ValueError: missing / unexpected keys or shape mismatches (naming the first few keys,
      in the checkpoint's layout, and the model name or overrides that would fit), a head of
      another size without ``num_classes=`` / ``drop_head=True`` / ``head_class_map=``, or
      a bad ``head_class_map``.
  """
  if drop_head and head_class_map is not None:
    raise ValueError('pass drop_head=True (leave the head out) or head_class_map= (keep some '
                     'rows of the checkpoint head), not both')
  detection = bool(getattr(model, 'detection', False))
  if detection and head_class_map is not None:
    raise ValueError('head_class_map= selects classifier rows, but a detection=True backbone '
                     'has no head: leave head_class_map out')
  sd = backbone_state_dict(sd)
  sd, layout = to_official_layout({k: to_numpy(v) for k, v in sd.items()})
  full_sd = sd
  targets = common.variable_shapes(model)
  fresh = {}
  if detection:
    # As the official pretrained= load (strict=False): a classifier's norm / head are unused,
    # and without any norm{i} in the checkpoint they keep init_weights' LayerNorm 1 / 0.
    sd = {k: v for k, v in sd.items() if not k.startswith(('norm.', 'head.'))}
    if not any(_is_stage_norm(k) for k in sd):
      fresh = {k: t for k, t in targets.items() if _STAGE_NORM.fullmatch(k[1][0])}
      targets = {k: t for k, t in targets.items() if k not in fresh}
  elif drop_head:
    targets, sd = common.without_head(targets, sd)
  elif head_class_map is not None:
    sd = _select_head_rows(sd, model, head_class_map)

  def fit(path, v, want):  # a bias table of another window, resized as the official code
    return _table_for(v, want) if path[-1] == _TABLE else None

  params = common.map_state_dict(
      sd, targets, lambda _, path: swin_key(path), fit=fit,
      error=functools.partial(_mismatch_error, name, model, full_sd, layout,
                              drop_head or head_class_map is not None))['params']
  if fresh:
    flat = traverse_util.flatten_dict(params)
    for (_, path), t in fresh.items():
      flat[path] = (np.ones if path[-1] == 'scale' else np.zeros)(t.shape, t.dtype)
    params = traverse_util.unflatten_dict(flat)
  return params

