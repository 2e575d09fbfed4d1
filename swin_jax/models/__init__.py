"""Flax (linen) models and the registry: ``create_model(name, **overrides)``."""
from swin_jax.models.registry import create_model, list_models, model_family, register_model

__all__ = ['create_model', 'list_models', 'model_family', 'register_model']
