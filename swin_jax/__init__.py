"""swin_jax: Swin, Shunted Transformer, ViT and DETR in JAX/Flax."""
__version__ = '0.1.0'
