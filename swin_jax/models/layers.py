"""Blocks shared by the model families: MLP, DropPath, multi-head self-attention.

dtype policy: parameters are float32 (``param_dtype``); matmuls run in ``dtype`` (the
compute dtype, bfloat16 on TPU/GPU when configured); softmax and LayerNorm in float32.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# timm's Linear init: trunc_normal(std=.02), zero bias. Conversion overwrites these anyway.
dense_init = nn.initializers.truncated_normal(stddev=0.02)


def gelu(x):
  """Exact (erf) GELU, as torch.nn.GELU() in timm and the official repos."""
  return jax.nn.gelu(x, approximate=False)


def layer_norm(epsilon: float, name: Optional[str] = None):
  """A plain ``nn.LayerNorm`` in float32 whose params sit directly under ``name``."""
  return nn.LayerNorm(epsilon=epsilon, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


def apply_norm(norm: nn.Module, x):
  """Applies a float32 norm and casts back to the compute dtype of ``x``."""
  return norm(x.astype(jnp.float32)).astype(x.dtype)


class DropPath(nn.Module):
  """Stochastic depth per sample (timm's ``drop_path``): drops the residual branch."""
  rate: float = 0.0

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


class Mlp(nn.Module):
  """fc1 -> GELU -> dropout -> fc2 -> dropout (timm ``Mlp``)."""
  hidden_features: int
  out_features: Optional[int] = None
  drop: float = 0.0
  act: Callable = gelu
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    out = self.out_features or x.shape[-1]
    x = nn.Dense(self.hidden_features, dtype=self.dtype, kernel_init=dense_init, name='fc1')(x)
    x = self.act(x)
    x = nn.Dropout(self.drop)(x, deterministic=deterministic)
    x = nn.Dense(out, dtype=self.dtype, kernel_init=dense_init, name='fc2')(x)
    x = nn.Dropout(self.drop)(x, deterministic=deterministic)
    return x


def dot_product_attention(q, k, v, bias=None, mask=None, dropout_rng=None, dropout_rate=0.0,
                          deterministic=True):
  """Scaled dot-product attention with softmax in float32.

  q: [B, h, Nq, d], k/v: [B, h, Nk, d]; bias broadcastable to [B, h, Nq, Nk] (added to the
  logits, e.g. a relative position bias or a -inf/-100 mask); mask: bool, True = attend.
  Returns [B, h, Nq, d] in the dtype of ``v``.
  """
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum('bhqd,bhkd->bhqk', q * jnp.asarray(scale, q.dtype), k)
  logits = logits.astype(jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  attn = jax.nn.softmax(logits, axis=-1)
  if not deterministic and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, attn.shape)
    attn = jnp.where(keep, attn / (1.0 - dropout_rate), 0.0)
  return jnp.einsum('bhqk,bhkd->bhqd', attn.astype(v.dtype), v)


class Attention(nn.Module):
  """Multi-head self-attention with a fused ``qkv`` projection and an output ``proj``.

  Input [B, N, C] -> output [B, N, C]. ``bias`` (e.g. a relative position bias) is added to
  the attention logits and must broadcast to [B, heads, N, N].
  """
  num_heads: int
  qkv_bias: bool = True
  attn_drop: float = 0.0
  proj_drop: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True, bias=None, mask=None):
    B, N, C = x.shape
    if C % self.num_heads:
      raise ValueError(f'embed dim {C} is not divisible by num_heads={self.num_heads}')
    head_dim = C // self.num_heads
    qkv = nn.Dense(3 * C, use_bias=self.qkv_bias, dtype=self.dtype, kernel_init=dense_init,
                   name='qkv')(x)
    # [B, N, 3C] -> [3, B, heads, N, head_dim], the order of timm's qkv reshape.
    qkv = qkv.reshape(B, N, 3, self.num_heads, head_dim).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    rng = None
    if not deterministic and self.attn_drop > 0.0:
      rng = self.make_rng('dropout')
    out = dot_product_attention(q, k, v, bias=bias, mask=mask, dropout_rng=rng,
                                dropout_rate=self.attn_drop, deterministic=deterministic)
    out = out.transpose(0, 2, 1, 3).reshape(B, N, C)  # [B, N, heads*head_dim]
    out = nn.Dense(C, dtype=self.dtype, kernel_init=dense_init, name='proj')(out)
    return nn.Dropout(self.proj_drop)(out, deterministic=deterministic)
