"""Models from a run's config: create_model with every field of config.model.

The trainer, the predict CLI and the tools build a run's model here, so a config
means the same model everywhere it is read.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp

from swin_jax.models import detr
from swin_jax.models.registry import create_model, model_family

# config.model.dtype -> the compute dtype of the matmuls (params stay float32).
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def model_overrides(config):
  """Every field of config.model but `name` (and the compute dtype), for create_model."""
  return {k: v for k, v in config.model.to_dict().items()
          if k not in ('name', 'dtype') and v is not None}


def model_from_config(config):
  """create_model(config.model.name, **every other field of config.model)."""
  overrides = model_overrides(config)
  dtype = config.model.get('dtype') or 'float32'
  if dtype not in DTYPES:
    raise ValueError(f'config.model.dtype={dtype!r}: use one of {list(DTYPES)}')
  overrides['dtype'] = DTYPES[dtype]
  return create_model(config.model.name, **overrides)


def trainable_from_config(config):
  """params -> bool pytree of the leaves the model trains, or None (all of them)."""
  if model_family(config.model.name) == 'detr':
    return functools.partial(detr.trainable_mask,
                             train_backbone=config.model.get('train_backbone', True),
                             freeze_stem=config.model.get('freeze_stem', True))
  return None
