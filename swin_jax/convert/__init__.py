"""Loading PyTorch (timm layout) and original-JAX checkpoints into swin_jax models.

``load_torch_checkpoint(name, source, **model_overrides)`` reads a ``.pth``/``.pt``/``.bin``
/``.safetensors`` file or an in-memory state_dict and returns ``{'params': ...}`` for
``create_model(name, **model_overrides)``; the family converter is chosen by
``model_family(name)``. torch is imported only when needed (torch files / tensors).

Example::

  variables = load_torch_checkpoint('vit_base_patch16_224', 'vit_b16.safetensors')
  logits = create_model('vit_base_patch16_224').apply(variables, images_nhwc)

  # Fine-tune on 10 classes: keep a freshly initialised head.
  model = create_model('vit_base_patch16_224', num_classes=10)
  params = model.init(rng, images_nhwc)['params']
  loaded = load_torch_checkpoint('vit_base_patch16_224', path, num_classes=10, drop_head=True)
  params = {**params, **loaded['params']}
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional

from swin_jax.convert.detr import convert_detr, convert_resnet
from swin_jax.convert.resize import torch_bicubic_resize, torch_resize
from swin_jax.convert.shunted import convert_shunted
from swin_jax.convert.swin import (adapt_swin_param, convert_swin,
                                   resize_relative_position_bias_table)
from swin_jax.convert.torch_io import read_state_dict
from swin_jax.convert.vit import (adapt_vit_param, convert_timm_vit, load_vit_npz,
                                  resample_pos_embed)
from swin_jax.models import create_model, model_family, scan

__all__ = ['load_torch_checkpoint', 'load_vit_npz', 'resample_pos_embed', 'read_state_dict',
           'resize_relative_position_bias_table', 'torch_bicubic_resize', 'torch_resize',
           'CONVERTERS', 'adapt_param']

# family -> fn(state_dict, model, *, name, drop_head[, head_class_map]) -> params, or the whole
# variables dict where the converter is marked ``returns_variables``.
CONVERTERS: Dict[str, Callable[..., Dict[str, Any]]] = {
    'vit': convert_timm_vit,
    'swin': convert_swin,
    'shunted': convert_shunted,  # returns {'params', 'batch_stats'} (returns_variables)
    'detr': convert_detr,  # returns {'params', 'frozen'} (returns_variables)
    'resnet': convert_resnet,  # torchvision classifiers; {'params', 'frozen'}
}


def load_torch_checkpoint(name: str, source, *, drop_head: bool = False,
                          head_class_map: Optional[Any] = None,
                          **model_overrides) -> Dict[str, Any]:
  """Converts a PyTorch checkpoint into variables for ``create_model(name)``.

  ViT: timm's layout. Swin: the microsoft/Swin-Transformer release or timm's layout (told
  apart by the keys); a bias table of another window size is resized as the official
  fine-tuning code does (``swin_jax.convert.swin``).

  Args:
    name: a registered model name (``swin_jax.models.list_models()``).
    source: path to a ``.pth``/``.pt``/``.bin``/``.ckpt``/``.safetensors`` file, or a
      state_dict (dict of numpy arrays / torch tensors); weights nested under 'model' or
      'state_dict' are unwrapped.
    drop_head: leave the classifier ``head`` out of the returned params and ignore the
      checkpoint's head. The result then lacks ``params['head']``: merge it into your own
      initialised params (``{**init_params, **loaded['params']}``) to fine-tune on a
      different number of classes.
    head_class_map: (Swin) checkpoint class indices, one per model class, as a sequence or a
      text file with one index per line (the official ``data/map22kto1k.txt``): the head
      keeps those rows, e.g. ImageNet-22K weights into a 1000-class model.
    **model_overrides: passed to ``create_model`` (``num_classes``, ``img_size``, ...).
      A position embedding for another image size is resampled to the model's grid.

  Returns:
    ``{'params': params}``: numpy float32 arrays with the tree structure and shapes of
    ``create_model(name, **model_overrides).init(...)['params']`` (with ``scan_blocks=True``
    the stacked layout of swin_jax.models.scan: converted per block, then stacked).

  Raises:
    FileNotFoundError: ``source`` is a path that does not exist.
    ValueError: unknown model name, or a checkpoint that does not fit the model (the message
      names the first offending keys and the ``num_classes=`` / model name / overrides that
      would fit).
    NotImplementedError: no converter for the model's family yet.
  """
  family = model_family(name)
  if family not in CONVERTERS:
    raise NotImplementedError(f'no checkpoint converter for {family!r} models ({name!r}) yet; '
                              f'available: {sorted(CONVERTERS)}')
  convert = CONVERTERS[family]
  options = {}
  if head_class_map is not None:
    if 'head_class_map' not in inspect.signature(convert).parameters:
      raise ValueError(f'head_class_map= is not supported for {family!r} models ({name!r})')
    options['head_class_map'] = head_class_map
  model = create_model(name, **model_overrides)
  state_dict = read_state_dict(source)
  if family == 'detr' and not str(model.backbone).startswith('resnet'):
    return detr_backbone_variables(state_dict, model, name=name)
  # The converters map checkpoint keys block by block; a scanned model's stacked layout is
  # the per-block result stacked (swin_jax.models.scan).
  params = convert(state_dict, scan.unscanned(model), name=name, drop_head=drop_head,
                   **options)
  if not getattr(convert, 'returns_variables', False):  # Shunted: params and BN batch_stats
    params = {'params': params}
  return scan.stack(params, model)


def detr_backbone_variables(state_dict, model, *, name: str = 'detr') -> Dict[str, Any]:
  """A classifier / detection-backbone checkpoint of a DETR's non-ResNet ``backbone`` (Swin,
  Shunted) -> its variables under ``backbone_0/body``.

  The body is built as ``models.detr.Backbone`` builds it (``num_classes=0`` and the DETR's
  ``backbone_kwargs``) and converted by its family's converter with the head left out (a
  Swin with ``detection=True`` takes an official classification checkpoint as the detection
  configs' ``pretrained=``: ``swin_jax.convert.swin``). ``config.init_from`` merges the
  result into a fresh DETR: the transformer and heads keep their initialisation.
  """
  family = model_family(model.backbone)
  if family not in CONVERTERS:
    raise NotImplementedError(f'{name}: no checkpoint converter for backbone='
                              f'{model.backbone!r} ({family!r} models)')
  convert = CONVERTERS[family]
  body = create_model(model.backbone, num_classes=0, **dict(model.backbone_kwargs or {}))
  out = convert(state_dict, scan.unscanned(body), name=f'{name} backbone {model.backbone!r}',
                drop_head=True)
  if not getattr(convert, 'returns_variables', False):
    out = {'params': out}
  out = scan.stack(out, body)
  return {col: {'backbone_0': {'body': tree}} for col, tree in out.items()}


# family -> fn(model, path, value, target_shape) -> adapted array or None (cannot adapt).
ADAPTERS: Dict[str, Callable[..., Any]] = {
    'vit': adapt_vit_param,
    'swin': adapt_swin_param,
}


def adapt_param(name: str, model, path: str, value, shape):
  """Fits a checkpoint leaf to another shape where the model family knows how.

  Used when fine-tuning from a run at another resolution (``config.init_from``): a ViT's
  ``pos_embed`` is resampled to the model's grid (class token kept), a Swin
  ``relative_position_bias_table`` to the model's window (bicubic, as the official
  fine-tuning code). Returns None when the leaf cannot be adapted (e.g. a head with another
  number of classes).
  """
  fn = ADAPTERS.get(model_family(name))
  out = fn(model, path, value, tuple(shape)) if fn else None
  return None if out is None or tuple(out.shape) != tuple(shape) else out
