"""Blocks shared by the model families: MLP, DropPath, multi-head self-attention.

dtype policy: parameters are float32 (``param_dtype``); matmuls run in ``dtype`` (the
compute dtype, bfloat16 on TPU/GPU when configured); softmax and LayerNorm in float32.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any

# timm's Linear init: trunc_normal(std=.02), zero bias. Conversion overwrites these anyway.
dense_init = nn.initializers.truncated_normal(stddev=0.02)


class Dense(nn.Dense):
  """``nn.Dense`` (same parameters, same name scheme) that multiplies ``[..., C]`` inputs as
  one 2-D matrix ``[prod(...), C]``.

  Why: autodiff of a 3-D ``[B, N, C] @ [C, F]`` gives the kernel gradient as a dot that
  contracts two dims (B and N) of both operands, and XLA:CPU materialises a transposed copy
  of the output gradient ``[F, B*N]`` for it; from the 2-D product it is one dot of the
  operands as they lie, ``x^T g``, with no copy. The same numbers either way: the reshapes
  are free (row-major bitcasts), and under a Mesh they keep a sharding of the leading
  (batch) dim; an input whose sharded dim is not the leading one (DETR's heads on
  [layers, B, Q, d]) takes nn.Dense, or GSPMD all-gathers it (tests/test_collectives.py).
  Measured (2-core Xeon VM, batch 8, float32, median of 8 steps, 2 interleaved rounds):
  train step ViT-S/16 5.33, 5.20 -> 5.62, 5.89 img/s, Swin-T 4.20, 4.30 -> 4.74, 4.83 img/s;
  inference unchanged.
  """

  @nn.compact
  def __call__(self, inputs):
    if inputs.ndim <= 2:
      return super().__call__(inputs)
    lead = inputs.shape[:-1]
    y = super().__call__(inputs.reshape(-1, inputs.shape[-1]))  # [prod(lead), features]
    return y.reshape(lead + y.shape[-1:])


def gelu(x):
  """Exact (erf) GELU, as torch.nn.GELU() in timm and the official repos, in torch's own
  formulation x / 2 * (1 + erf(x / sqrt(2))) (aten's GeluKernel). jax.nn.gelu(approximate=
  False) computes x / 2 * erfc(-x / sqrt(2)) instead: the same function (within float32
  rounding; erfc keeps relative precision where the value underflows towards 0 below
  x ~ -5, where it is < 3e-6 in absolute value), but XLA:CPU's erfc is a range-split
  rational with selects and an exp, 2-3x slower than its erf (a ViT-S/16 train step runs 12
  of each forward and backward)."""
  return x * 0.5 * (1.0 + lax.erf(x * jnp.asarray(0.7071067811865476, x.dtype)))


def layer_norm(epsilon: float, name: Optional[str] = None):
  """A plain ``nn.LayerNorm`` in float32 whose params sit directly under ``name``."""
  return nn.LayerNorm(epsilon=epsilon, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


def apply_norm(norm: nn.Module, x):
  """Applies a float32 norm and casts back to the compute dtype of ``x``."""
  return norm(x.astype(jnp.float32)).astype(x.dtype)


def drop_path_noise(module: nn.Module, shape: Sequence[int], deterministic: bool,
                    enabled: bool) -> Optional[jax.Array]:
  """One uniform draw in [0, 1) for every drop-path site of a stack of blocks, e.g.
  ``[depth, 2, B]`` (two residual branches per block); None in eval or when no block drops.

  One draw instead of one per site: on XLA:CPU each draw (``make_rng``'s fold-in and the
  bits, both threefry) compiles to its own while loop; Swin-B's gradient held 92 of them, 8
  now (README "Scan and remat" has the compile times). Each site keeps its own independent
  uniforms, so the drop distribution is unchanged.
  """
  if deterministic or not enabled:
    return None
  return jax.random.uniform(module.make_rng('dropout'), tuple(shape), jnp.float32)


class DropPath(nn.Module):
  """Stochastic depth per sample (timm's ``drop_path``): drops the residual branch.

  noise: None (draw here) or this site's uniforms ``[B]`` from ``drop_path_noise``; sample b
  keeps its branch (scaled by 1 / keep) where ``noise[b] < keep``, as ``bernoulli`` does.
  """
  rate: float = 0.0

  @nn.compact
  def __call__(self, x, deterministic: bool, noise=None):
    if deterministic or self.rate == 0.0:
      return x
    return drop_path(self, x, 1.0 - self.rate, noise)


def drop_path(module: nn.Module, x, keep, noise=None):
  """Each sample's branch kept with probability ``keep`` (a float, or a traced scalar: a
  scanned layer's rate) and scaled by 1 / keep, else zeroed. noise: None (draw from
  ``module``'s 'dropout' stream) or this site's uniforms [B]; kept where noise < keep."""
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  if noise is None:
    noise = jax.random.uniform(module.make_rng('dropout'), (x.shape[0],), jnp.float32)
  mask = (noise < keep).reshape(shape)
  if isinstance(keep, float) and keep > 0:
    scale = keep  # a Python constant, divided as before (the same bits)
  else:  # keep 0 keeps nothing; the divide is guarded so its gradient is 0, not 0 * inf
    scale = jnp.where(keep > 0, keep, 1.0).astype(x.dtype)
  return jnp.where(mask, x / scale, jnp.zeros_like(x))


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
    x = Dense(self.hidden_features, dtype=self.dtype, kernel_init=dense_init, name='fc1')(x)
    x = self.act(x)
    x = nn.Dropout(self.drop)(x, deterministic=deterministic)
    x = Dense(out, dtype=self.dtype, kernel_init=dense_init, name='fc2')(x)
    x = nn.Dropout(self.drop)(x, deterministic=deterministic)
    return x


# Attention formulations (all the same function; see attention_implementation):
#   'einsum': the explicit softmax(q k^T * scale + bias) v below, heads moved before the
#             tokens so that XLA:CPU's dots see leading batch dims;
#   'xla':    jax.nn.dot_product_attention's XLA path (TPU, GPU fallback);
#   'cudnn':  jax.nn.dot_product_attention's cuDNN fused kernel (GPU, bf16/fp16).
IMPLEMENTATIONS = ('einsum', 'xla', 'cudnn')


def attention_implementation(dtype, head_dim: int, q_len: int, kv_len: int, has_bias: bool,
                             backend: Optional[str] = None) -> str:
  """The fastest exact formulation of attention on ``backend`` (default: jax's default).

  CPU: 'einsum'. jax.nn's XLA path measured slower on a shared 2-core CPU: ViT-S/16
  attention (qkv -> heads output, batch 8, float32), fastest of 7 interleaved runs:
  forward 30 ms vs 14 ms, forward + backward 78 ms vs 47 ms. GPU: cuDNN's fused kernel where
  it takes the shapes (bf16 / fp16, head dim a multiple of 8 up to 128; with a bias, even
  token counts, which its backward needs: Swin's 7x7 windows (49 tokens) take 'xla').
  Elsewhere (TPU): 'xla'.
  """
  backend = backend or jax.default_backend()
  if backend == 'cpu':
    return 'einsum'
  if (backend in ('gpu', 'cuda') and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
      and head_dim % 8 == 0 and head_dim <= 128
      and not (has_bias and (q_len % 2 or kv_len % 2))):
    return 'cudnn'
  return 'xla'


def _flatten_lead(t, lead: Tuple[int, ...]):
  """[*lead, x, y, z] (lead dims broadcastable) -> [prod(lead) or 1, x, y, z]."""
  t = t.reshape((1,) * (len(lead) + 3 - t.ndim) + t.shape)
  if all(n == 1 for n in t.shape[:len(lead)]):
    return t.reshape((1,) + t.shape[len(lead):])  # broadcast over the batch: kept small
  return jnp.broadcast_to(t, lead + t.shape[len(lead):]).reshape((-1,) + t.shape[len(lead):])


def dot_product_attention(q, k, v, bias=None, mask=None, dropout_rng=None, dropout_rate=0.0,
                          deterministic=True, implementation: Optional[str] = None):
  """softmax(q k^T / sqrt(d) + bias) v, with the logits and softmax in float32.

  q: [..., T, h, d], k / v: [..., S, h, d] (jax.nn's BTNH layout; any number of leading
  batch dims, e.g. [B, nW] windows); bias: float, broadcastable to [..., h, T, S] (a
  relative position bias, an additive mask); mask: bool, the same broadcast, True = attend.
  Returns [..., T, h, d] in the dtype of ``v``.

  implementation: one of IMPLEMENTATIONS, or None for ``attention_implementation``'s pick.
  Attention dropout (training with dropout_rate > 0) always takes 'einsum': jax.nn's
  attention has no dropout. In every formulation the q.k products accumulate into float32
  logits, the bias is added and the softmax taken in float32, and the probabilities are
  cast to the compute dtype for the product with v (cuDNN: bias in the compute dtype, its
  softmax in float32 inside the kernel).
  """
  *lead, T, h, d = q.shape
  lead = tuple(lead)
  S = k.shape[-3]
  dropout = not deterministic and dropout_rate > 0.0
  if implementation is None:
    implementation = attention_implementation(q.dtype, d, T, S, bias is not None)
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'implementation={implementation!r}: use one of {IMPLEMENTATIONS} or None')
  if dropout:
    implementation = 'einsum'
  if implementation != 'einsum':
    flat = lambda t: t.reshape((-1,) + t.shape[len(lead):])
    fb = None if bias is None else _flatten_lead(bias, lead)
    fm = None if mask is None else _flatten_lead(mask, lead)
    out = None
    if implementation == 'cudnn':
      try:
        out = jax.nn.dot_product_attention(
            flat(q), flat(k), flat(v), None if fb is None else fb.astype(q.dtype), fm,
            implementation='cudnn')
      except (NotImplementedError, RuntimeError, ValueError):
        out = None  # a shape / dtype / cuDNN version the kernel refuses: XLA's path
    if out is None:
      fb = None if fb is None else fb.astype(jnp.float32)
      out = jax.nn.dot_product_attention(flat(q), flat(k), flat(v), fb, fm,
                                         implementation='xla')
    return out.reshape(q.shape[:-1] + v.shape[-1:]).astype(v.dtype)

  scale = d ** -0.5
  q = jnp.swapaxes(q, -2, -3) * jnp.asarray(scale, q.dtype)  # [..., h, T, d]
  k, v = jnp.swapaxes(k, -2, -3), jnp.swapaxes(v, -2, -3)
  # float32 logits from bf16 operands; the preset keeps the backward's dots (float32
  # cotangent x bf16 operand) bf16 matmuls too, as jax.nn.dot_product_attention does.
  precision = lax.DotAlgorithmPreset.BF16_BF16_F32 if q.dtype == jnp.bfloat16 else None
  logits = jnp.einsum('...hqd,...hkd->...hqk', q, k, precision=precision,
                      preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  attn = jax.nn.softmax(logits, axis=-1)
  if dropout:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, attn.shape)
    attn = jnp.where(keep, attn / (1.0 - dropout_rate), 0.0)
  return jnp.einsum('...hqk,...hkd->...qhd', attn.astype(v.dtype), v)


class Attention(nn.Module):
  """Multi-head self-attention with a fused ``qkv`` projection and an output ``proj``.

  Input [B, N, C] -> output [B, N, C]. ``bias`` (e.g. a relative position bias) is added to
  the attention logits and must broadcast to [B, heads, N, N]; ``mask`` likewise (bool).
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
    qkv = Dense(3 * C, use_bias=self.qkv_bias, dtype=self.dtype, kernel_init=dense_init,
                name='qkv')(x)
    # [B, N, 3C] -> [B, N, 3, heads, head_dim], the order of timm's qkv reshape; q, k, v
    # are then [B, N, heads, head_dim], the layout dot_product_attention takes as it is.
    qkv = qkv.reshape(B, N, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    rng = None
    if not deterministic and self.attn_drop > 0.0:
      rng = self.make_rng('dropout')
    out = dot_product_attention(q, k, v, bias=bias, mask=mask, dropout_rng=rng,
                                dropout_rate=self.attn_drop, deterministic=deterministic)
    out = out.reshape(B, N, C)  # [B, N, heads*head_dim]
    out = Dense(C, dtype=self.dtype, kernel_init=dense_init, name='proj')(out)
    return nn.Dropout(self.proj_drop)(out, deterministic=deterministic)
