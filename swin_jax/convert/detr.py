"""facebookresearch/detr state_dicts -> DETR variables ``{'params', 'frozen'}``.

The model's names follow the official keys (``swin_jax.models.detr``), so the mapping is
mechanical: a numeric key part joins the previous one with ``_`` (``layers.0`` ->
``layers_0``, ``backbone.0`` -> ``backbone_0``); torch Linear ``weight`` [out, in] -> flax
``kernel`` [in, out]; Conv2d ``weight`` OIHW -> HWIO; LayerNorm ``weight`` -> ``scale``;
Embedding ``weight`` -> ``embedding``; MultiheadAttention ``in_proj_weight`` [3d, d] /
``in_proj_bias`` -> ``in_proj/{kernel [d, 3d], bias}``. The ResNet's FrozenBatchNorm buffers
(``weight``, ``bias``, ``running_mean``, ``running_var``) go to the ``'frozen'`` collection;
``num_batches_tracked`` is dropped (the official ``_load_from_state_dict`` drops it too).

A torchvision ImageNet ResNet state_dict (``conv1.weight``, ``layer1.0.conv1.weight``, ...,
``fc.*``; e.g. ``resnet50-0676ba61.pth``, what the official training starts from) converts to
the backbone alone (``backbone_0/body``, ``fc`` dropped): merged by ``config.init_from`` into
a fresh model, the transformer and heads keep their initialisation.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
from flax import traverse_util

from swin_jax.convert.common import variable_shapes
from swin_jax.convert.torch_io import to_numpy

_FROZEN_LEAVES = ('weight', 'bias', 'running_mean', 'running_var')


def _module_path(key: str) -> Tuple[Tuple[str, ...], str]:
  """'transformer.decoder.layers.3.norm1.weight' -> (('transformer', 'decoder', 'layers_3',
  'norm1'), 'weight')."""
  parts: List[str] = []
  for p in key.split('.')[:-1]:
    if p.isdigit() and parts:
      parts[-1] = f'{parts[-1]}_{p}'
    else:
      parts.append(p)
  return tuple(parts), key.split('.')[-1]


def convert_detr(state_dict: Dict[str, Any], model, *, name: str = 'detr',
                 drop_head: bool = False) -> Dict[str, Any]:
  """Returns ``{'params': ..., 'frozen': ...}`` (numpy float32) for ``model`` (a DETR).

  drop_head: skip ``class_embed`` (fine-tuning on another number of classes): merge the
  result into freshly initialised params.

  Raises ValueError naming missing / unexpected keys or a shape mismatch (with the
  ``num_classes`` / ``num_queries`` the checkpoint would need).
  """
  if not str(model.backbone).startswith('resnet'):
    raise NotImplementedError(f'{name}: converting DETR checkpoints with backbone='
                              f'{model.backbone!r} is not supported (ResNet only)')
  backbone_only = is_torchvision_resnet(state_dict)
  if backbone_only:
    state_dict = {'backbone.0.body.' + k: v for k, v in state_dict.items()
                  if not k.startswith('fc.')}
  targets = _targets(model)
  out, unexpected = _map_keys(state_dict, targets, name, drop_head=drop_head)
  missing = [('/'.join(p)) for col in out for p in targets[col]
             if p not in out[col] and not (drop_head and p[0] == 'class_embed')
             and not (backbone_only and p[0] != 'backbone_0')]
  if unexpected or missing:
    raise _fit_error(name, unexpected, missing, 'A DC5 / R101 / other model name, or '
                     'backbone_depths=, enc_layers=, dec_layers= may fit it.')
  return {col: traverse_util.unflatten_dict(out[col]) for col in out}


convert_detr.returns_variables = True


def _targets(model) -> Dict[str, Dict[Tuple[str, ...], Tuple[int, ...]]]:
  """{'params' / 'frozen': {path tuple: shape}} of the model's variables."""
  out: Dict[str, Dict[Tuple[str, ...], Tuple[int, ...]]] = {'params': {}, 'frozen': {}}
  # A small image: no variable's shape depends on the image size.
  for (col, path), s in variable_shapes(model, tuple(out), image_hw=(64, 64)).items():
    out[col][path] = tuple(s.shape)
  return out


def _fit_error(name: str, unexpected: Sequence[str], missing: Sequence[str],
               hint: str) -> ValueError:
  return ValueError(f'{name}: checkpoint does not fit the model: unexpected keys '
                    f'{unexpected[:5]}, missing {missing[:5]} ({len(unexpected)} / '
                    f'{len(missing)} in all). {hint}')


def _map_keys(state_dict, targets, name: str, *, drop_head: bool = False, rename=None):
  """torch keys -> ({'params' / 'frozen': {path: array}}, unexpected keys).

  rename: key -> key before mapping (e.g. a torchvision ResNet's 'layer1.0...' ->
  'body.layer1.0...'). Raises ValueError on a shape mismatch, naming the key and the
  num_classes / num_queries the checkpoint would need.
  """
  out: Dict[str, Dict[Tuple[str, ...], np.ndarray]] = {'params': {}, 'frozen': {}}
  unexpected = []
  for key, value in state_dict.items():
    mod, leaf = _module_path(rename(key) if rename else key)
    if leaf == 'num_batches_tracked':
      continue
    if drop_head and mod[:1] in (('class_embed',), ('fc',)):
      continue
    v = to_numpy(value).astype(np.float32, copy=False)
    if leaf in _FROZEN_LEAVES and mod + (leaf,) in targets['frozen']:
      col, path = 'frozen', mod + (leaf,)
    elif leaf in ('in_proj_weight', 'in_proj_bias'):
      col, path = 'params', mod + ('in_proj', 'kernel' if leaf == 'in_proj_weight' else 'bias')
      v = v.T if v.ndim == 2 else v
    elif leaf == 'bias':
      col, path = 'params', mod + ('bias',)
    elif leaf == 'weight':
      col = 'params'
      path = next((mod + (k,) for k in ('kernel', 'scale', 'embedding')
                   if mod + (k,) in targets['params']), mod + ('kernel',))
      if path[-1] == 'kernel':
        v = v.transpose(2, 3, 1, 0) if v.ndim == 4 else v.T
    else:
      unexpected.append(key)
      continue
    if path not in targets[col]:
      unexpected.append(key)
      continue
    if tuple(v.shape) != targets[col][path]:
      hint = ''
      if mod[:1] in (('class_embed',), ('fc',)):
        n = v.shape[-1] - (1 if mod[0] == 'class_embed' else 0)  # no-object column
        hint = f' (the checkpoint has num_classes={n}: pass num_classes= or drop_head=True)'
      elif mod[:1] == ('query_embed',):
        hint = f' (the checkpoint has num_queries={v.shape[0]})'
      raise ValueError(f'{name}: {key} has shape {tuple(np.shape(value))}, the model wants '
                       f'{"/".join(path)} {targets[col][path]}{hint}')
    out[col][path] = v
  return out, unexpected


def convert_resnet(state_dict: Dict[str, Any], model, *, name: str = 'resnet50',
                   drop_head: bool = False) -> Dict[str, Any]:
  """A torchvision ResNet classifier state_dict (``resnet50-0676ba61.pth``) ->
  ``{'params': {'body', 'fc'}, 'frozen': {'body'}}`` for ``swin_jax.models.resnet.ResNet``
  with norm='frozen' (torchvision's eval-mode BatchNorm)."""
  if model.norm != 'frozen':
    raise ValueError(f"{name}: torchvision weights carry BatchNorm statistics: build the "
                     f"model with norm='frozen' (got norm={model.norm!r})")
  targets = _targets(model)
  out, unexpected = _map_keys(state_dict, targets, name, drop_head=drop_head,
                              rename=lambda k: k if k.startswith('fc.') else 'body.' + k)
  missing = ['/'.join(p) for col in out for p in targets[col]
             if p not in out[col] and not (drop_head and p[0] == 'fc')]
  if unexpected or missing:
    raise _fit_error(name, unexpected, missing, 'resnet101 or depths= may fit it.')
  return {col: traverse_util.unflatten_dict(out[col]) for col in out if out[col]}


convert_resnet.returns_variables = True


def is_torchvision_resnet(state_dict) -> bool:
  """A torchvision ResNet classifier's keys (no DETR ``backbone.`` / ``transformer.``)."""
  keys = list(state_dict)
  return ('layer1.0.conv1.weight' in state_dict and 'conv1.weight' in state_dict and
          not any(k.startswith(('backbone.', 'transformer.')) for k in keys))
