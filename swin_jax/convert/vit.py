"""ViT checkpoints -> ``swin_jax.models.vit.VisionTransformer`` params.

Two sources:

* timm / PyTorch state_dicts (``convert_timm_vit``): names map one-to-one
  (``blocks.{i}.attn.qkv.weight`` -> ``blocks_{i}/attn/qkv/kernel``); Linear weights
  [out, in] are transposed to Dense kernels [in, out], the patch Conv2d weight
  [D, C, ph, pw] (OIHW) to a flax Conv kernel [ph, pw, C, D] (HWIO), LayerNorm
  ``weight`` becomes ``scale``; timm's old ``pre_logits.fc`` becomes ``pre_logits``.
* the original google-research/vision_transformer ``.npz`` files (``load_vit_npz``), mapped
  as timm's ``_load_weights`` does (q/k/v kernels [D, heads, hd] fused into ``qkv``).

A position embedding whose grid differs from the model's is resampled (prefix tokens kept,
the grid part resized in 2D; see ``resample_pos_embed``), as timm does on load.
"""
from __future__ import annotations

import functools
import re
import zipfile
from typing import Any, Dict, List, Mapping, Optional, Sequence

import flax.linen as nn
import numpy as np

from swin_jax.convert import common, resize
from swin_jax.convert.common import Path
from swin_jax.convert.torch_io import StateDict, require_file, to_numpy
from swin_jax.models import create_model, model_family


# ---------------------------------------------------------------------------------------------
# Position embedding resampling.


def resample_pos_embed(posemb: np.ndarray, new_hw: Sequence[int],
                       old_hw: Optional[Sequence[int]] = None, num_prefix_tokens: int = 1,
                       interpolation: str = 'bicubic', antialias: bool = True) -> np.ndarray:
  """Resizes an absolute position embedding to a new patch grid, keeping prefix tokens.

  Same as timm's ``resample_abs_pos_embed`` (numpy, no torch): the first
  ``num_prefix_tokens`` rows (class token) are kept as they are; the remaining
  ``old_h * old_w`` rows, read as a row-major [old_h, old_w] grid, are resized to ``new_hw``
  with ``F.interpolate(mode=interpolation, align_corners=False, antialias=antialias)``.

  The default ``antialias=True`` is timm's default (``checkpoint_filter_fn``, i.e. loading
  pretrained weights at another ``img_size``), so the result matches timm. Plain
  ``F.interpolate`` defaults to ``antialias=False``; the two differ (PIL-style cubic
  ``a=-0.5`` vs ``a=-0.75``), most when downsampling. timm's ``.npz`` loader uses
  ``interpolation='bilinear', antialias=False``.

  Args:
    posemb: [1, num_prefix_tokens + old_h * old_w, D].
    new_hw: target grid (new_h, new_w).
    old_hw: source grid; default: square, inferred from the token count.
    num_prefix_tokens: class/register tokens in front of the grid (0 or 1 for ViT).
    interpolation: 'bicubic' or 'bilinear'.
    antialias: as ``F.interpolate``.

  Returns:
    [1, num_prefix_tokens + new_h * new_w, D] in the dtype of ``posemb``.
  """
  posemb = np.asarray(posemb)
  if posemb.ndim != 3 or posemb.shape[0] != 1:
    raise ValueError(f'expected a position embedding [1, N, D], got shape {posemb.shape}')
  n_grid = posemb.shape[1] - num_prefix_tokens
  if old_hw is None:
    old_hw = resize.infer_square_grid(n_grid)
  old_h, old_w = (int(s) for s in old_hw)
  new_h, new_w = (int(s) for s in new_hw)
  if old_h * old_w != n_grid:
    raise ValueError(f'position embedding has {n_grid} grid tokens (after {num_prefix_tokens} '
                     f'prefix tokens), not old_hw={old_h}x{old_w}')
  prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
  if (old_h, old_w) == (new_h, new_w):
    return posemb
  dim = grid.shape[-1]
  grid = grid.reshape(old_h, old_w, dim).transpose(2, 0, 1)  # [D, h, w], torch's NCHW
  grid = resize.torch_resize(grid.astype(np.float32), (new_h, new_w), interpolation, antialias)
  grid = grid.transpose(1, 2, 0).reshape(1, new_h * new_w, dim).astype(posemb.dtype)
  return np.concatenate([prefix, grid], axis=1)


# ---------------------------------------------------------------------------------------------
# Name mapping between flax params and timm state_dict keys.

# Re-exported for callers that build or inspect timm state_dicts (the tests do).
param_shapes = common.param_shapes
_flax_to_torch_shape = common.flax_to_torch_shape


def timm_key(path: Path) -> str:
  """Flax param path -> timm state_dict key, e.g. ('blocks_0','attn','qkv','kernel') ->
  'blocks.0.attn.qkv.weight'."""
  return common.torch_key(path, 'blocks', modules={'pre_logits': 'pre_logits.fc'})


def _key_order(key: str):
  """Sort key: the model's order (patch_embed, cls_token, pos_embed, blocks.0, ..., head)."""
  m = re.match(r'blocks\.(\d+)\.(.*)', key)
  if m:
    return (3, int(m.group(1)), m.group(2))
  top = {'patch_embed': 0, 'cls_token': 1, 'pos_embed': 2}.get(key.split('.')[0], 4)
  return (top, 0, key)


def _pos_embed_for(model: nn.Module, value, shape: Sequence[int],
                   **resample) -> Optional[np.ndarray]:
  """``value`` [1, N, D] resampled to ``model``'s grid (``resample_pos_embed``), or None if
  it is not a position embedding of ``shape``'s width D."""
  if value.ndim != 3 or len(shape) != 3 or value.shape[-1] != shape[-1]:
    return None
  return resample_pos_embed(value, model.grid_size(), num_prefix_tokens=model.num_prefix_tokens,
                            **resample)


def adapt_vit_param(model: nn.Module, path: str, value, shape) -> Optional[np.ndarray]:
  """``ADAPTERS['vit']``: resamples a ``pos_embed`` to the model's grid, else None."""
  if not path.endswith("['pos_embed']"):
    return None
  return _pos_embed_for(model, value, tuple(shape))


# ---------------------------------------------------------------------------------------------
# Diagnostics: what does the checkpoint look like, and how to fix a mismatch.

# Every field infer_timm_vit_config reads but num_classes, in its order (the message's order).
_CONFIG_FIELDS = ('embed_dim', 'in_chans', 'patch_size', 'depth', 'class_token', 'global_pool',
                  'qkv_bias', 'mlp_ratio', 'representation_size')
# Those that tell the registered models apart.
_ARCH_FIELDS = ('embed_dim', 'depth', 'patch_size', 'mlp_ratio')


def infer_timm_vit_config(sd: Mapping[str, np.ndarray]) -> Dict[str, Any]:
  """Model fields readable from a timm ViT state_dict (num_heads is not among them)."""
  cfg: Dict[str, Any] = {}
  w = sd.get('patch_embed.proj.weight')
  if w is not None and w.ndim == 4:
    cfg['embed_dim'], cfg['in_chans'] = int(w.shape[0]), int(w.shape[1])
    ph, pw = int(w.shape[2]), int(w.shape[3])
    cfg['patch_size'] = ph if ph == pw else (ph, pw)
  blocks = common.key_indices(sd, r'blocks\.(\d+)\.')
  if blocks:
    cfg['depth'] = max(blocks) + 1
  cfg['class_token'] = 'cls_token' in sd
  if 'fc_norm.weight' in sd:
    cfg['global_pool'] = 'avg'
  elif 'norm.weight' in sd:
    cfg['global_pool'] = 'token'
  if 'blocks.0.attn.qkv.weight' in sd:
    cfg['qkv_bias'] = 'blocks.0.attn.qkv.bias' in sd
  fc1 = sd.get('blocks.0.mlp.fc1.weight')
  if fc1 is not None and 'embed_dim' in cfg:
    cfg['mlp_ratio'] = fc1.shape[0] / cfg['embed_dim']
  pre = sd.get('pre_logits.fc.weight')
  cfg['representation_size'] = int(pre.shape[0]) if pre is not None else None
  cfg['num_classes'] = int(sd['head.weight'].shape[0]) if 'head.weight' in sd else 0
  return cfg


def _mismatch_error(name: str, model: nn.Module, sd: Mapping[str, np.ndarray], drop_head: bool,
                    missing: List[str], unexpected: List[str],
                    shape_errors: List[common.ShapeError]) -> ValueError:
  cfg = infer_timm_vit_config(sd)
  diffs = common.config_diffs(model, cfg, _CONFIG_FIELDS)
  fix = None
  if diffs:
    fix = common.overrides_fix(diffs, {
        'embed_dim': ' (and a num_heads dividing it: heads cannot be read from a checkpoint)'})
    names = (common.matching_model_names('vit', cfg, _ARCH_FIELDS)
             if any(k in diffs for k in _ARCH_FIELDS) else [])
    if names:  # the model's own name too: its defaults may fit where its overrides do not
      fix = f'use the matching model name {" or ".join(repr(n) for n in names)}, or {fix}'
  return common.mismatch_error(
      f'checkpoint does not fit model {name!r} (timm key names):', missing, unexpected,
      shape_errors, order=_key_order, cfg=cfg,
      fixes=[fix, common.head_fix(cfg['num_classes'], model.num_classes, drop_head)],
      fallback='check that the checkpoint is a timm VisionTransformer of this configuration')


# ---------------------------------------------------------------------------------------------
# timm state_dict -> flax params.


@common.scan_aware
def convert_timm_vit(sd: Mapping[str, Any], model: nn.Module, *, name: str = 'vit',
                     drop_head: bool = False, interpolation: str = 'bicubic',
                     antialias: bool = True) -> Dict[str, Any]:
  """Converts a timm ViT state_dict into ``model``'s params (nested dict of numpy float32).

  Args:
    sd: flat {timm key: array} (numpy or torch); see ``torch_io.read_state_dict``.
    model: a ``VisionTransformer`` (its fields decide the expected keys and shapes).
    name: the model name, for error messages.
    drop_head: leave ``head`` out of the returned params (and ignore the checkpoint's
      ``head.*``, and its ``pre_logits.*`` when the model has no ``representation_size``):
      merge the result into freshly initialised params to fine-tune on other classes.
    interpolation / antialias: position-embedding resampling when the checkpoint's patch grid
      differs from the model's (default: timm's, see ``resample_pos_embed``).

  Returns:
    The ``params`` tree, shapes and structure equal to ``model.init(...)['params']``
    (without 'head' if ``drop_head``).

  Raises:
    ValueError: missing / unexpected keys or shape mismatches, naming the first few keys and
      the overrides or model name that would fit.
  """
  sd = full_sd = {k: to_numpy(v) for k, v in sd.items()}
  targets = common.variable_shapes(model)
  if drop_head:
    targets, sd = common.without_head(
        targets, sd, ('head.',) if model.representation_size else ('head.', 'pre_logits.'))

  def fit(path, v, want):  # a pos_embed of another grid, resampled as timm does on load
    if path != ('pos_embed',):
      return None
    try:
      return _pos_embed_for(model, v, want, interpolation=interpolation, antialias=antialias)
    except ValueError:
      return None  # reported as a shape mismatch

  return common.map_state_dict(
      sd, targets, lambda _, path: timm_key(path), fit=fit,
      error=functools.partial(_mismatch_error, name, model, full_sd, drop_head))['params']


def vit_params_to_timm(params: Mapping[str, Any], model: Optional[nn.Module] = None
                       ) -> StateDict:
  """The inverse of ``convert_timm_vit``: flax params -> timm state_dict (numpy arrays).
  ``model``: the model the params are for, needed for a scan_blocks=True (stacked) layout."""
  params = common.unscanned_variables({'params': params}, model)['params']
  return common.to_state_dict({'params': params}, lambda _, path: timm_key(path))


# ---------------------------------------------------------------------------------------------
# Original JAX ViT (.npz) -> timm state_dict layout.

_NPZ_PREFIXES = ('', 'opt/target/', 'params/', 'params/img/')


def _n2t(w: np.ndarray, t: bool = True) -> np.ndarray:
  """timm's ``_n2p`` without torch: JAX layout -> torch layout."""
  w = np.asarray(w)
  if w.ndim == 4 and w.shape[0] == w.shape[1] == w.shape[2] == 1:
    w = w.reshape(-1)
  if t:
    if w.ndim == 4:
      w = w.transpose(3, 2, 0, 1)
    elif w.ndim == 3:
      w = w.transpose(2, 0, 1)
    elif w.ndim == 2:
      w = w.T
  return w


def vit_npz_to_timm(w: Mapping[str, np.ndarray]) -> StateDict:
  """Maps an original ViT ``.npz`` dict (or big_vision's layout) to timm state_dict keys.

  Follows timm's ``_load_weights`` (timm/models/vision_transformer.py): q/k/v kernels
  [D, heads, hd] become rows of ``qkv.weight`` [3D, D], ``out/kernel`` [heads, hd, D] becomes
  ``proj.weight`` [D, D]; ``LayerNorm_0``/``LayerNorm_2`` -> ``norm1``/``norm2``,
  ``MlpBlock_3/Dense_{0,1}`` -> ``mlp.fc{1,2}``, ``encoder_norm`` -> ``norm``.
  big_vision files (``params/`` prefix, ``pos_embedding`` at the top, LayerNorm_1,
  MultiHeadDotProductAttention_0, MlpBlock_0, optionally a scanned ``encoderblock``) too.
  """
  prefix = next((p for p in _NPZ_PREFIXES if f'{p}embedding/kernel' in w), None)
  if prefix is None:
    raise ValueError(f'not a ViT .npz checkpoint: no embedding/kernel among its keys '
                     f'{list(w)[:8]}')
  big_vision = (prefix.startswith('params/') or f'{prefix}pos_embedding' in w or
                f'{prefix}Transformer/encoderblock/LayerNorm_0/scale' in w)
  mha, mlp, ln2 = (0, 0, 1) if big_vision else (1, 3, 2)
  sd: StateDict = {}
  sd['patch_embed.proj.weight'] = _n2t(w[f'{prefix}embedding/kernel'])
  sd['patch_embed.proj.bias'] = _n2t(w[f'{prefix}embedding/bias'])
  if f'{prefix}cls' in w:
    sd['cls_token'] = _n2t(w[f'{prefix}cls'], t=False)
  pos_key = (f'{prefix}pos_embedding' if big_vision else
             f'{prefix}Transformer/posembed_input/pos_embedding')
  if pos_key in w:
    sd['pos_embed'] = _n2t(w[pos_key], t=False)
  if f'{prefix}Transformer/encoder_norm/scale' in w:
    sd['norm.weight'] = _n2t(w[f'{prefix}Transformer/encoder_norm/scale'])
    sd['norm.bias'] = _n2t(w[f'{prefix}Transformer/encoder_norm/bias'])
  for part, dst in (('pre_logits', 'pre_logits.fc'), ('head', 'head')):
    if f'{prefix}{part}/kernel' in w:
      sd[f'{dst}.weight'] = _n2t(w[f'{prefix}{part}/kernel'])
      sd[f'{dst}.bias'] = _n2t(w[f'{prefix}{part}/bias'])

  scanned = f'{prefix}Transformer/encoderblock/LayerNorm_0/scale' in w
  if scanned:
    depth = w[f'{prefix}Transformer/encoderblock/LayerNorm_0/scale'].shape[0]
  else:
    ids = common.key_indices(w, re.escape(prefix) + r'Transformer/encoderblock_(\d+)/')
    depth = max(ids) + 1 if ids else 0
  for i in range(depth):
    bp = f'{prefix}Transformer/encoderblock/' if scanned else (
        f'{prefix}Transformer/encoderblock_{i}/')
    get = (lambda k, bp=bp, i=i: np.asarray(w[bp + k])[i]) if scanned else (
        lambda k, bp=bp: np.asarray(w[bp + k]))
    t = f'blocks.{i}.'
    mp = f'MultiHeadDotProductAttention_{mha}/'
    sd[t + 'norm1.weight'] = _n2t(get('LayerNorm_0/scale'))
    sd[t + 'norm1.bias'] = _n2t(get('LayerNorm_0/bias'))
    sd[t + 'attn.qkv.weight'] = np.concatenate(
        [get(f'{mp}{n}/kernel').reshape(get(f'{mp}{n}/kernel').shape[0], -1).T
         for n in ('query', 'key', 'value')], axis=0)
    sd[t + 'attn.qkv.bias'] = np.concatenate(
        [get(f'{mp}{n}/bias').reshape(-1) for n in ('query', 'key', 'value')])
    out_k = get(f'{mp}out/kernel')  # [heads, hd, D]
    sd[t + 'attn.proj.weight'] = out_k.reshape(-1, out_k.shape[-1]).T
    sd[t + 'attn.proj.bias'] = _n2t(get(f'{mp}out/bias'))
    sd[t + 'norm2.weight'] = _n2t(get(f'LayerNorm_{ln2}/scale'))
    sd[t + 'norm2.bias'] = _n2t(get(f'LayerNorm_{ln2}/bias'))
    for r in range(2):
      sd[t + f'mlp.fc{r + 1}.weight'] = _n2t(get(f'MlpBlock_{mlp}/Dense_{r}/kernel'))
      sd[t + f'mlp.fc{r + 1}.bias'] = _n2t(get(f'MlpBlock_{mlp}/Dense_{r}/bias'))
  return sd


def load_vit_npz(name: str, path: str, *, drop_head: bool = False,
                 **model_overrides) -> Dict[str, Any]:
  """Loads an original google-research/vision_transformer ``.npz`` into ``create_model(name)``.

  Args:
    name: a registered ViT model name, e.g. 'vit_base_patch16_224'.
    path: the ``.npz`` file (e.g. ``ViT-B_16.npz``; big_vision layouts are read too).
    drop_head: leave ``head`` out of the result (see ``convert_timm_vit``).
    **model_overrides: passed to ``create_model`` (num_classes, img_size, ...).

  Returns:
    ``{'params': ...}`` for ``create_model(name, **model_overrides)``. A position embedding
    of another grid is resampled bilinearly without antialiasing, as timm's npz loader.
    Unlike timm, a head with another number of classes is an error (pass ``num_classes=``
    or ``drop_head=True``) rather than silently left at its initialisation. The checkpoint's
    ``encoder_norm`` is the model's ``norm``, so the model needs ``global_pool='token'``.
  """
  family = model_family(name)
  if family != 'vit':
    raise ValueError(f'load_vit_npz loads ViT models; {name!r} is a {family!r} model')
  path = require_file(path)
  try:
    with np.load(path) as f:
      w = {k: f[k] for k in f.files}
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # cut short, not a zip
    raise ValueError(f'{path} is not a readable .npz file ({type(e).__name__}: {e}): it is '
                     f'truncated or damaged; download it again.') from None
  try:
    sd = vit_npz_to_timm(w)
  except KeyError as e:
    raise ValueError(f'{path} has no array {e.args[0]!r} (it holds {len(w)} arrays): not a '
                     f'complete google-research/vision_transformer ViT .npz; download it '
                     f'again, or check that it is that release\'s layout.') from None
  model = create_model(name, **model_overrides)
  params = convert_timm_vit(sd, model, name=name, drop_head=drop_head,
                            interpolation='bilinear', antialias=False)
  return {'params': params}
