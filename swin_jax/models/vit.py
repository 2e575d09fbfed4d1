"""Vision Transformer (Dosovitskiy et al., 2021), parameter-for-parameter as timm's.

Parameter names follow timm's ``VisionTransformer`` (``patch_embed/proj``, ``cls_token``,
``pos_embed``, ``blocks_{i}/{norm1,attn/qkv,attn/proj,norm2,mlp/fc1,mlp/fc2}``, ``norm``,
``fc_norm``, ``head``) so that ``swin_jax.convert`` is a short mapping.

Input: NHWC float images, already normalised. Output: logits [B, num_classes].
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from swin_jax.models import layers, scan
from swin_jax.models.registry import register_model

Dtype = Any


def to_2tuple(x) -> Tuple[int, int]:
  if isinstance(x, (tuple, list)):
    if len(x) != 2:
      raise ValueError(f'expected an int or a pair, got {x!r}')
    return int(x[0]), int(x[1])
  return int(x), int(x)


def posemb_sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
  """Fixed 2D sin-cos position embedding [1, h*w, dim] (MoCo v3 / big_vision layout)."""
  if dim % 4:
    raise ValueError(f'sincos2d position embedding needs embed_dim % 4 == 0, got {dim}')
  y, x = np.mgrid[:h, :w]
  omega = np.arange(dim // 4, dtype=np.float64) / (dim // 4 - 1 if dim > 4 else 1)
  omega = 1.0 / (temperature ** omega)
  y = np.einsum('m,d->md', y.flatten(), omega)
  x = np.einsum('m,d->md', x.flatten(), omega)
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return pe[None].astype(np.float32)


class PatchEmbed(nn.Module):
  """Non-overlapping patches by a strided conv: [B, H, W, C] -> [B, H/p * W/p, D]."""
  patch_size: Tuple[int, int]
  embed_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.embed_dim, self.patch_size, strides=self.patch_size, padding='VALID',
                dtype=self.dtype, name='proj')(x)
    B, h, w, D = x.shape
    return x.reshape(B, h * w, D)


class Block(nn.Module):
  """Pre-norm transformer block: x + DropPath(Attn(LN(x))), x + DropPath(MLP(LN(x)))."""
  num_heads: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop: float = 0.0
  attn_drop: float = 0.0
  drop_path: float = 0.0
  norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True, drop_path=None, noise=None):
    """drop_path: None (the field ``drop_path``) or a traced rate (a scanned input).
    noise: None or the drop-path uniforms [2, B] of the two branches (layers.drop_path_noise)."""
    C = x.shape[-1]

    def residual(y, branch):
      return scan.branch_drop_path(self, y, drop_path, deterministic, noise, branch)

    y = layers.apply_norm(layers.layer_norm(self.norm_eps, 'norm1'), x)
    y = layers.Attention(self.num_heads, qkv_bias=self.qkv_bias, attn_drop=self.attn_drop,
                         proj_drop=self.drop, dtype=self.dtype, name='attn')(y, deterministic)
    x = x + residual(y, 0)
    y = layers.apply_norm(layers.layer_norm(self.norm_eps, 'norm2'), x)
    y = layers.Mlp(int(C * self.mlp_ratio), drop=self.drop, dtype=self.dtype, name='mlp')(
        y, deterministic)
    return x + residual(y, 1)


# ``Block`` as an ``nn.scan`` body: (x, this layer's drop-path rate and uniforms) -> (x, None).
ScanBlock = scan.scan_body(Block)


class VisionTransformer(nn.Module):
  """ViT classifier. Fields are the hyper-parameters; nothing is hidden.

  global_pool: 'token' (class token, timm default) or 'avg' (mean of patch tokens, then
    ``fc_norm`` instead of ``norm``, as timm).
  pos_embed: 'learn' (trained parameter incl. the class-token slot) or 'sincos2d' (fixed).
  representation_size: optional pre-logits Dense + tanh (the original ViT's in21k heads).
  scan_blocks: run the blocks as one ``nn.scan`` (params ``blocks/...`` stacked [depth, ...]
    instead of ``blocks_{i}/...``; swin_jax.models.scan); remat: 'none' | 'full' | a
    ``jax.checkpoint_policies`` name, per block.
  """
  img_size: Union[int, Sequence[int]] = 224
  patch_size: Union[int, Sequence[int]] = 16
  in_chans: int = 3
  num_classes: int = 1000
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  class_token: bool = True
  global_pool: str = 'token'
  pos_embed: str = 'learn'
  representation_size: Optional[int] = None
  drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32
  scan_blocks: bool = False
  remat: str = 'none'

  def scan_layout(self):
    """The stacked layout (swin_jax.models.scan): blocks_{i} -> blocks[i]."""
    return [(('blocks',), [[((), (f'blocks_{i}',))] for i in range(self.depth)])]

  def grid_size(self) -> Tuple[int, int]:
    H, W = to_2tuple(self.img_size)
    ph, pw = to_2tuple(self.patch_size)
    if H % ph or W % pw:
      raise ValueError(
          f'img_size={H}x{W} is not divisible by patch_size={ph}x{pw}: set img_size '
          f'(config.model.img_size) to a multiple of the patch size, e.g. '
          f'{max(ph, H // ph * ph)}x{max(pw, W // pw * pw)}.')
    return H // ph, W // pw

  @property
  def num_prefix_tokens(self) -> int:
    return 1 if self.class_token else 0

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.global_pool not in ('token', 'avg'):
      raise ValueError(f"global_pool={self.global_pool!r}: use 'token' or 'avg'")
    if self.global_pool == 'token' and not self.class_token:
      raise ValueError("global_pool='token' needs class_token=True (or use global_pool='avg')")
    gh, gw = self.grid_size()
    H, W = to_2tuple(self.img_size)
    if x.ndim != 4 or x.shape[1:3] != (H, W) or x.shape[3] != self.in_chans:
      raise ValueError(
          f'expected NHWC images of shape [B, {H}, {W}, {self.in_chans}] (the model was built '
          f'with img_size={self.img_size}), got {tuple(x.shape)}. Resize the input or build the '
          f'model with img_size matching it (its pos_embed is resampled on checkpoint load).')
    deterministic = not train
    x = x.astype(self.dtype)
    x = PatchEmbed(to_2tuple(self.patch_size), self.embed_dim, dtype=self.dtype,
                   name='patch_embed')(x)  # [B, gh*gw, D]
    B, N, D = x.shape
    if self.class_token:
      cls = self.param('cls_token', nn.initializers.normal(1e-6), (1, 1, D), jnp.float32)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (B, 1, D)), x], axis=1)
    n_pos = N + self.num_prefix_tokens
    if self.pos_embed == 'learn':
      pos = self.param('pos_embed', nn.initializers.truncated_normal(0.02), (1, n_pos, D),
                       jnp.float32)
    elif self.pos_embed == 'sincos2d':
      pos = posemb_sincos_2d(gh, gw, D)
      if self.class_token:
        pos = np.concatenate([np.zeros((1, 1, D), np.float32), pos], axis=1)
      pos = jnp.asarray(pos)
    else:
      raise ValueError(f"pos_embed={self.pos_embed!r}: use 'learn' or 'sincos2d'")
    x = x + pos.astype(x.dtype)
    x = nn.Dropout(self.drop_rate)(x, deterministic=deterministic)

    dpr = np.linspace(0.0, self.drop_path_rate, self.depth)
    block = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias,
                 drop=self.drop_rate, attn_drop=self.attn_drop_rate, norm_eps=self.norm_eps,
                 dtype=self.dtype)
    noise = layers.drop_path_noise(self, (self.depth, 2, x.shape[0]), deterministic,
                                   self.drop_path_rate > 0)  # [depth, 2 branches, B]
    if self.scan_blocks:
      blocks = scan.scan_block(ScanBlock, self.depth, self.remat, (0, 0, nn.broadcast), (4,))
      x, _ = blocks(**block, drop_path=float(self.drop_path_rate), name='blocks')(
          x, jnp.asarray(dpr, jnp.float32), noise, deterministic)
    else:
      cls = scan.remat_block(Block, self.remat, (2,))
      for i in range(self.depth):
        x = cls(**block, drop_path=float(dpr[i]), name=f'blocks_{i}')(
            x, deterministic, noise=None if noise is None else noise[i])

    if self.global_pool == 'avg':
      x = x[:, self.num_prefix_tokens:].mean(axis=1)
      x = layers.apply_norm(layers.layer_norm(self.norm_eps, 'fc_norm'), x)
    else:
      x = layers.apply_norm(layers.layer_norm(self.norm_eps, 'norm'), x)
      x = x[:, 0]
    if self.representation_size:
      x = jnp.tanh(nn.Dense(self.representation_size, dtype=self.dtype, name='pre_logits')(x))
    x = nn.Dropout(self.drop_rate)(x, deterministic=deterministic)
    if self.num_classes > 0:
      x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                   name='head')(x)
    return x.astype(jnp.float32)


def _vit(defaults, **overrides):
  kwargs = dict(defaults)
  kwargs.update(overrides)
  return VisionTransformer(**kwargs)


# Architectures as timm defines them (timm/models/vision_transformer.py).
_VIT_ARCHS = {
    'vit_tiny_patch16_224': dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    'vit_small_patch16_224': dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    'vit_base_patch16_224': dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    'vit_base_patch32_224': dict(patch_size=32, embed_dim=768, depth=12, num_heads=12),
    'vit_large_patch16_224': dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    'vit_huge_patch14_224': dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
    # The 384 fine-tunes: the same networks at img_size 384 (timm takes it from the
    # pretrained_cfg's input_size); only pos_embed grows, to 1 + 24 * 24 (patch 32: 12 * 12).
    'vit_small_patch16_384': dict(img_size=384, patch_size=16, embed_dim=384, depth=12,
                                  num_heads=6),
    'vit_base_patch16_384': dict(img_size=384, patch_size=16, embed_dim=768, depth=12,
                                 num_heads=12),
    'vit_base_patch32_384': dict(img_size=384, patch_size=32, embed_dim=768, depth=12,
                                 num_heads=12),
    'vit_large_patch16_384': dict(img_size=384, patch_size=16, embed_dim=1024, depth=24,
                                  num_heads=16),
    # DeiT without distillation (timm/models/deit.py): a plain timm VisionTransformer, so
    # the same network as the vit_* of that size; the names differ so that a timm DeiT
    # checkpoint loads under its own name. (The distilled deit_*_distilled_* add a second
    # token and head: not registered.)
    'deit_tiny_patch16_224': dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    'deit_small_patch16_224': dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    'deit_base_patch16_224': dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    'deit_base_patch16_384': dict(img_size=384, patch_size=16, embed_dim=768, depth=12,
                                  num_heads=12),
}

for _name, _arch in _VIT_ARCHS.items():
  register_model(_name, family='vit')(lambda _arch=_arch, **kw: _vit(_arch, **kw))


@register_model('vit_demo', family='vit')
def vit_demo(**overrides):
  """A 4-layer ViT for 32x32 inputs (patch 4): the quickstart / test model."""
  return _vit(dict(img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=3,
                   mlp_ratio=2.0), **overrides)
