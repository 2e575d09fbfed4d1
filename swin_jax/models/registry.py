"""Model registry: ``create_model(name, **overrides)`` with timm's names.

A family module registers its constructors with ``@register_model(name, family=...)``; the
registry imports the family modules lazily so ``import swin_jax`` stays cheap.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Callable, Dict, List

import flax.linen as nn

_MODELS: Dict[str, Callable[..., nn.Module]] = {}
_FAMILY: Dict[str, str] = {}
# Modules that define models; imported on first use of the registry.
_FAMILY_MODULES = ('swin_jax.models.vit', 'swin_jax.models.swin', 'swin_jax.models.shunted',
                   'swin_jax.models.resnet', 'swin_jax.models.detr')


def register_model(name: str, family: str):
  """Decorator: registers ``fn(**overrides) -> nn.Module`` under ``name``."""
  def wrap(fn):
    if name in _MODELS:
      raise ValueError(f'model {name!r} is registered twice')
    _MODELS[name] = fn
    _FAMILY[name] = family
    return fn
  return wrap


def _load_all():
  for mod in _FAMILY_MODULES:
    importlib.import_module(mod)


def list_models(family: str | None = None) -> List[str]:
  _load_all()
  return sorted(n for n in _MODELS if family is None or _FAMILY[n] == family)


def model_family(name: str) -> str:
  _load_all()
  _check_name(name)
  return _FAMILY[name]


def _check_name(name: str):
  if name not in _MODELS:
    close = difflib.get_close_matches(name, list(_MODELS), n=3)
    hint = f' Did you mean {", ".join(close)}?' if close else ''
    raise ValueError(f'unknown model name {name!r} (config.model.name).{hint} '
                     f'Available: {", ".join(sorted(_MODELS))}')


def create_model(name: str, **overrides) -> nn.Module:
  """Builds the linen module ``name`` with keyword ``overrides`` (num_classes, img_size, ...).

  Unknown override keys raise a TypeError naming the key and the model's fields.
  """
  _load_all()
  _check_name(name)
  try:
    return _MODELS[name](**overrides)
  except TypeError as e:
    fn = _MODELS[name]
    model = fn()
    fields = sorted(k for k in model.__dataclass_fields__ if k not in ('parent', 'name'))
    bad = [k for k in overrides if k not in fields]
    if bad:
      raise TypeError(f'{name}: unknown model override(s) {bad} (config.model.*). '
                      f'Valid fields: {fields}') from e
    raise
