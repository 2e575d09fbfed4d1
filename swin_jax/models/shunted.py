"""Shunted Transformer (Ren et al., CVPR 2022), exact to OliverRensu/Shunted-Transformer.

The reference is the official ``SSA.py`` (commit 6861101). Parameter names follow its
state_dict with flax's ``_`` for list indices, so conversion is a one-to-one mapping:

* ``patch_embed1/conv_{k}`` the convolutional stem (``Head``): ``conv_0`` 7x7 stride 2 (no
  bias), ``conv_1`` BatchNorm, then per extra 3x3 block ``conv_{3i}`` / ``conv_{3i+1}``, and
  the final 2x2 stride-2 ``conv_{3 + 3 num_conv}``; ``patch_embed1/norm`` a LayerNorm.
  (Indices skip the ReLUs, exactly as in the official ``nn.Sequential``.)
* ``patch_embed{2,3,4}/{proj, norm}``: overlapping 3x3 stride-2 patch embeddings.
* ``block{i}_{j}/{norm1, attn, norm2, mlp}`` with ``attn/{q, sr1, norm1, sr2, norm2, kv1,
  kv2, local_conv1, local_conv2, proj}`` when sr > 1, ``attn/{q, kv, local_conv, proj}``
  when sr = 1, and ``mlp/{fc1, dwconv/dwconv, fc2}``.
* ``norm{i}`` after every stage, ``head``.

BatchNorm running statistics of the stem live in the ``batch_stats`` collection:
``train=True`` normalises with the batch statistics and updates the running averages with
torch's momentum 0.1 (= flax's 0.9), so it needs ``mutable=['batch_stats']`` as every flax
BatchNorm model; ``train=False`` uses the running averages. Under one jit over a sharded
global batch the statistics are those of the global batch. One difference from torch: the
running variance is updated with the biased batch variance (torch: unbiased, x n/(n-1), with
n = B*H/2*W/2 values per channel; a 1e-7 relative difference at ImageNet sizes).

LayerNorm epsilons are the official ones: 1e-6 in the blocks and the stage norms
(``norm_layer=partial(nn.LayerNorm, eps=1e-6)``), torch's default 1e-5 in the patch
embeddings and in the token-aggregation norms of the attention.

Input sizes: every stage's spatial reduction must divide its map exactly (the official code
reshapes the reduced tokens to [H/sr, W/sr]), i.e. H and W multiples of 32 at the default
sr ratios (8, 4, 2, 1). Other sizes are refused with an error naming the nearest valid ones
(``valid_sizes``); no padding is done, so a feature map never mixes in padded tokens.

As a detection backbone (DETR's ``backbone='shunted_s'``): ``return_features=True`` gives
all four maps (multi-scale use; DETR takes the last), ``frozen_bn=True`` freezes the stem's
BatchNorm statistics, and a padding ``mask=`` is accepted and ignored (``__call__``).

Input NHWC float images, normalised. Output logits [B, num_classes], or with
``return_features=True`` the stage maps [B, H/4, W/4, C1], [B, H/8, W/8, C2], ...,
[B, H/32, W/32, C4] (each after its stage norm ``norm{i}``, which is the map the next stage
consumes), float32.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from swin_jax.models import layers, scan
from swin_jax.models.registry import register_model

Dtype = Any


def conv_init(groups: int = 1):
  """The official Conv2d init: normal(0, sqrt(2 / fan_out)), fan_out = k*k*out / groups.

  flax kernels are HWIO (I = in / groups), so fan_out = H * W * O / groups.
  """
  def init(key, shape, dtype=jnp.float32):
    fan_out = shape[0] * shape[1] * shape[3] // groups
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / fan_out)
  return init


def use_fast_cpu(fast_cpu: Optional[bool]) -> bool:
  """ShuntedTransformer.fast_cpu resolved: None -> on where jax's default backend is CPU."""
  return jax.default_backend() == 'cpu' if fast_cpu is None else bool(fast_cpu)


def _conv(features: int, kernel: int, stride: int, padding: int, *, groups: int = 1,
          use_bias: bool = True, dtype: Dtype = jnp.float32, fast_cpu: bool = False,
          name: Optional[str] = None):
  """A torch-style Conv2d: explicit symmetric padding (flax 'SAME' pads stride-2 convs
  asymmetrically, which would shift every stride-2 output by one pixel).

  ``fast_cpu``: the same function and parameters computed without XLA:CPU's slow grouped and
  strided convolution kernels: depthwise convs as k*k shifted multiply-adds, non-overlapping
  ones (kernel = stride, no padding) as patchify + matmul.
  """
  if fast_cpu and groups == features and groups > 1 and stride == 1 and use_bias:
    return ShiftDepthwiseConv(features, kernel, padding, dtype, name=name)
  if fast_cpu and groups == 1 and kernel == stride and padding == 0:
    return PatchifyConv(features, kernel, use_bias, dtype, name=name)
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)), feature_group_count=groups,
                 use_bias=use_bias, dtype=dtype, kernel_init=conv_init(groups), name=name)


class ShiftDepthwiseConv(nn.Module):
  """Depthwise k x k conv (stride 1, bias) as k*k shifted multiply-adds. [B, H, W, C]."""
  features: int
  kernel: int
  padding: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, p = self.kernel, self.padding
    w = self.param('kernel', conv_init(self.features), (k, k, 1, self.features), jnp.float32)
    b = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    x = x.astype(self.dtype)
    H, W = x.shape[1] + 2 * p - k + 1, x.shape[2] + 2 * p - k + 1
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    out = jnp.broadcast_to(b.astype(self.dtype), x.shape[:1] + (H, W, self.features))
    for i in range(k):
      for j in range(k):
        out = out + xp[:, i:i + H, j:j + W] * w[i, j, 0].astype(self.dtype)
    return out


class PatchifyConv(nn.Module):
  """Conv with kernel = stride = s, no padding, as patchify + matmul. [B, H, W, C] ->
  [B, H/s, W/s, features] (H, W multiples of s)."""
  features: int
  stride: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    B, H, W, C = x.shape
    s = self.stride
    w = self.param('kernel', conv_init(1), (s, s, C, self.features), jnp.float32)
    x = x.astype(self.dtype).reshape(B, H // s, s, W // s, s, C)
    out = jnp.einsum('bhiwjc,ijcd->bhwd', x, w.astype(self.dtype))
    if self.use_bias:
      out = out + self.param('bias', nn.initializers.zeros, (self.features,),
                             jnp.float32).astype(self.dtype)
    return out


def stage_reductions(sr_ratios: Sequence[int]) -> Tuple[int, ...]:
  """Per stage, the factor its input H (and W) must be a multiple of: the stage's stride
  (4, 8, 16, 32, ...) times its sr ratio (the token-aggregation kernel)."""
  return tuple(4 * 2 ** i * int(sr) for i, sr in enumerate(sr_ratios))


def size_multiple(sr_ratios: Sequence[int]) -> int:
  """H and W must be multiples of this (32 at the default sr ratios (8, 4, 2, 1))."""
  n = len(sr_ratios)
  return int(np.lcm.reduce([4 * 2 ** (n - 1)] + list(stage_reductions(sr_ratios))))


def valid_sizes(size: int, sr_ratios: Sequence[int]) -> Tuple[int, ...]:
  """The valid sizes nearest to ``size`` (the one below, if any, and the one above)."""
  m = size_multiple(sr_ratios)
  lo, hi = (size // m) * m, -(-size // m) * m
  return tuple(s for s in sorted({lo, hi}) if s > 0) or (m,)


# ----------------------------------------------------------------------------- modules
class Head(nn.Module):
  """The convolutional stem: [B, H, W, 3] -> [B, H/4, W/4, dim].

  Conv 7x7/2 (no bias) + BN + ReLU, ``num_conv`` x (conv 3x3 + BN + ReLU), conv 2x2/2,
  LayerNorm (eps 1e-5). Submodule indices are the official ``nn.Sequential`` ones.
  """
  num_conv: int
  dim: int = 64
  dtype: Dtype = jnp.float32
  fast_cpu: bool = False
  frozen_bn: bool = False  # running averages in training too (ShuntedTransformer.frozen_bn)

  @nn.compact
  def __call__(self, x, train: bool = False):
    def bn(x, idx):
      # Statistics in float32 whatever the compute dtype; torch momentum 0.1 = flax 0.9.
      norm = nn.BatchNorm(use_running_average=not train or self.frozen_bn, momentum=0.9,
                          epsilon=1e-5, dtype=jnp.float32, name=f'conv_{idx}')
      return norm(x.astype(jnp.float32)).astype(x.dtype)

    x = _conv(self.dim, 7, 2, 3, use_bias=False, dtype=self.dtype, name='conv_0')(x)
    x = nn.relu(bn(x, 1))
    for i in range(self.num_conv):
      x = _conv(self.dim, 3, 1, 1, use_bias=False, dtype=self.dtype, name=f'conv_{3 + 3 * i}')(x)
      x = nn.relu(bn(x, 4 + 3 * i))
    x = _conv(self.dim, 2, 2, 0, dtype=self.dtype, fast_cpu=self.fast_cpu,
              name=f'conv_{3 + 3 * self.num_conv}')(x)
    return layers.apply_norm(layers.layer_norm(1e-5, 'norm'), x)


class OverlapPatchEmbed(nn.Module):
  """Conv 3x3 stride 2 (padding 1) + LayerNorm (eps 1e-5): [B, H, W, C] -> [B, H/2, W/2, D]."""
  embed_dim: int
  patch_size: int = 3
  stride: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = _conv(self.embed_dim, self.patch_size, self.stride, self.patch_size // 2,
              dtype=self.dtype, name='proj')(x)
    return layers.apply_norm(layers.layer_norm(1e-5, 'norm'), x)


class ShuntedAttention(nn.Module):
  """Shunted self-attention (the official ``Attention``). x: [B, H, W, C] -> [B, H, W, C].

  sr > 1: two token aggregations of the map, conv kernel = stride = sr (coarse) and sr/2
  (fine), each + LayerNorm + GELU; ``kv1`` / ``kv2`` project each to keys and values for half
  of the heads. Query heads [0, h/2) attend to the coarse tokens, [h/2, h) to the fine ones;
  each value set gets a depthwise 3x3 "local enhancement" on its own token map, added to the
  values before attention.
  sr = 1: one ``kv`` for all heads; as the official code, the local enhancement of v is
  added to the attention OUTPUT (not to v before attention).
  """
  num_heads: int
  sr_ratio: int = 1
  qkv_bias: bool = True
  qk_scale: Optional[float] = None
  attn_drop: float = 0.0
  proj_drop: float = 0.0
  dtype: Dtype = jnp.float32
  fast_cpu: bool = False

  def _attend(self, q, k, v, deterministic):
    """q: [B, N, h, d], k / v: [B, M, h, d] -> [B, N, h*d]."""
    if self.qk_scale is not None:  # dot_product_attention scales by d**-0.5 itself
      q = q * jnp.asarray(self.qk_scale * q.shape[-1] ** 0.5, q.dtype)
    rng = None
    if not deterministic and self.attn_drop > 0.0:
      rng = self.make_rng('dropout')
    out = layers.dot_product_attention(q, k, v, dropout_rng=rng, dropout_rate=self.attn_drop,
                                       deterministic=deterministic)
    B, N, h, d = out.shape
    return out.reshape(B, N, h * d)

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    B, H, W, C = x.shape
    nh, sr = self.num_heads, self.sr_ratio
    hd = C // nh
    N = H * W
    dense = lambda n, name, bias=self.qkv_bias: layers.Dense(
        n, use_bias=bias, dtype=self.dtype, kernel_init=layers.dense_init, name=name)
    q = dense(C, 'q')(x).reshape(B, N, nh, hd)  # [B, N, nh, hd]: channels head-major
    if sr > 1:
      outs = []
      for idx, kernel in ((1, sr), (2, sr // 2)):
        t = _conv(C, kernel, kernel, 0, dtype=self.dtype, fast_cpu=self.fast_cpu,
                  name=f'sr{idx}')(x)  # [B, h, w, C]
        t = layers.gelu(layers.apply_norm(layers.layer_norm(1e-5, f'norm{idx}'), t))
        h, w = t.shape[1], t.shape[2]
        kv = dense(C, f'kv{idx}')(t).reshape(B, h * w, 2, nh // 2, hd)
        k = kv[:, :, 0]  # [B, M, nh/2, hd]
        v = kv[:, :, 1]  # [B, M, nh/2, hd]: channels head-major, as the official reshape
        vmap = v.reshape(B, h, w, C // 2)
        v = v + _conv(C // 2, 3, 1, 1, groups=C // 2, dtype=self.dtype, fast_cpu=self.fast_cpu,
                      name=f'local_conv{idx}')(vmap).reshape(B, h * w, nh // 2, hd)
        heads = slice(0, nh // 2) if idx == 1 else slice(nh // 2, nh)
        outs.append(self._attend(q[:, :, heads], k, v, deterministic))
      out = jnp.concatenate(outs, axis=-1)  # [B, N, C]: coarse heads first, as torch.cat
    else:
      kv = dense(2 * C, 'kv')(x).reshape(B, N, 2, nh, hd)
      k = kv[:, :, 0]
      v = kv[:, :, 1]  # [B, N, nh, hd]
      out = self._attend(q, k, v, deterministic)
      local = _conv(C, 3, 1, 1, groups=C, dtype=self.dtype, fast_cpu=self.fast_cpu,
                    name='local_conv')(
          v.reshape(B, H, W, C))
      out = out + local.reshape(B, N, C)
    out = dense(C, 'proj', bias=True)(out).reshape(B, H, W, C)
    return nn.Dropout(self.proj_drop)(out, deterministic=deterministic)


class DWConv(nn.Module):
  """Depthwise 3x3 conv (padding 1, bias) on a [B, H, W, C] map; param ``dwconv``."""
  dtype: Dtype = jnp.float32
  fast_cpu: bool = False

  @nn.compact
  def __call__(self, x):
    C = x.shape[-1]
    return _conv(C, 3, 1, 1, groups=C, dtype=self.dtype, fast_cpu=self.fast_cpu,
                 name='dwconv')(x)


class Mlp(nn.Module):
  """Detail-specific feed-forward: fc1 -> GELU(x + DWConv3x3(x)) -> drop -> fc2 -> drop."""
  hidden_features: int
  drop: float = 0.0
  dtype: Dtype = jnp.float32
  fast_cpu: bool = False

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    C = x.shape[-1]
    x = layers.Dense(self.hidden_features, dtype=self.dtype, kernel_init=layers.dense_init,
                     name='fc1')(x)
    x = layers.gelu(x + DWConv(self.dtype, self.fast_cpu, name='dwconv')(x))
    x = nn.Dropout(self.drop)(x, deterministic=deterministic)
    x = layers.Dense(C, dtype=self.dtype, kernel_init=layers.dense_init, name='fc2')(x)
    return nn.Dropout(self.drop)(x, deterministic=deterministic)


class Block(nn.Module):
  """Pre-norm block: x + DropPath(SSA(LN(x))), x + DropPath(Mlp(LN(x))). [B, H, W, C]."""
  num_heads: int
  mlp_ratio: float
  sr_ratio: int
  qkv_bias: bool = True
  qk_scale: Optional[float] = None
  drop: float = 0.0
  attn_drop: float = 0.0
  drop_path: float = 0.0
  norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32
  fast_cpu: bool = False

  @nn.compact
  def __call__(self, x, deterministic: bool = True, drop_path=None, noise=None):
    """drop_path: None (the field ``drop_path``) or a traced rate (a scanned input).
    noise: None or the drop-path uniforms [2, B] of the two branches (layers.drop_path_noise)."""
    C = x.shape[-1]

    def residual(y, branch):
      return scan.branch_drop_path(self, y, drop_path, deterministic, noise, branch)

    y = layers.apply_norm(layers.layer_norm(self.norm_eps, 'norm1'), x)
    y = ShuntedAttention(self.num_heads, self.sr_ratio, self.qkv_bias, self.qk_scale,
                         self.attn_drop, self.drop, self.dtype, self.fast_cpu,
                         name='attn')(y, deterministic)
    x = x + residual(y, 0)
    y = layers.apply_norm(layers.layer_norm(self.norm_eps, 'norm2'), x)
    y = Mlp(int(C * self.mlp_ratio), self.drop, self.dtype, self.fast_cpu, name='mlp')(
        y, deterministic)
    return x + residual(y, 1)


# ``Block`` as an ``nn.scan`` body: (x, this layer's drop-path rate and uniforms) -> (x, None).
ScanBlock = scan.scan_body(Block)


class ShuntedTransformer(nn.Module):
  """Shunted Transformer classifier / backbone. Fields are the hyper-parameters."""
  img_size: Any = 224
  in_chans: int = 3
  num_classes: int = 1000
  embed_dims: Sequence[int] = (64, 128, 256, 512)
  num_heads: Sequence[int] = (2, 4, 8, 16)
  mlp_ratios: Sequence[float] = (8, 8, 4, 4)
  depths: Sequence[int] = (1, 2, 4, 1)
  sr_ratios: Sequence[int] = (8, 4, 2, 1)
  num_conv: int = 0
  qkv_bias: bool = True
  qk_scale: Optional[float] = None
  drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32
  # Depthwise convs as shifted multiply-adds and kernel = stride convs as patchify matmuls:
  # the same function and params without XLA:CPU's slow grouped / strided conv kernels.
  # None (default): the backend's fastest, i.e. on for CPU (Shunted-T train step 5-6x faster
  # there), the convolutions elsewhere; True / False force one. swin_jax.tools.count counts
  # the convolution formulation whichever runs (the papers' FLOPs).
  fast_cpu: Optional[bool] = None
  # The stem's BatchNorms normalise with their running averages in training too and never
  # update them (a detection backbone, as DETR's FrozenBatchNorm ResNet); False: batch
  # statistics in training, of the global batch under one jit (synchronised BatchNorm).
  frozen_bn: bool = False
  # Each stage's blocks as one nn.scan: params block{i}/... stacked [depths[i-1], ...] instead
  # of block{i}_{j}/... (swin_jax.models.scan); remat: 'none' | 'full' | a policy name.
  scan_blocks: bool = False
  remat: str = 'none'

  def scan_layout(self):
    """The stacked layout: block{i}_{j} -> block{i}[j]."""
    return [((f'block{i + 1}',), [[((), (f'block{i + 1}_{j}',))] for j in range(int(d))])
            for i, d in enumerate(self.depths)]

  def _check(self, H: int, W: int):
    n = len(self.depths)
    fields = dict(embed_dims=self.embed_dims, num_heads=self.num_heads,
                  mlp_ratios=self.mlp_ratios, sr_ratios=self.sr_ratios)
    bad = {k: tuple(v) for k, v in fields.items() if len(v) != n}
    if bad:
      raise ValueError(f'depths {tuple(self.depths)} has {n} stages but {bad} do not')
    for i, (dim, heads, sr) in enumerate(zip(self.embed_dims, self.num_heads, self.sr_ratios)):
      if dim % heads:
        raise ValueError(f'stage {i + 1}: embed_dims[{i}]={dim} is not divisible by '
                         f'num_heads[{i}]={heads}')
      if sr > 1 and (sr % 2 or heads % 2):
        raise ValueError(f'stage {i + 1}: shunted attention with sr_ratios[{i}]={sr} needs an '
                         f'even sr ratio (kernels sr and sr/2) and an even number of heads '
                         f'(num_heads[{i}]={heads}) to split between them')
    m = size_multiple(self.sr_ratios)
    for axis, s in (('height', H), ('width', W)):
      if s % m:
        raise ValueError(
            f'image {axis} {s} (input {H}x{W}) is not a multiple of {m}: the Shunted '
            f'Transformer with sr_ratios={tuple(self.sr_ratios)} needs H and W multiples of '
            f'{m} so that every stage\'s token aggregation divides its map. Nearest valid '
            f'sizes: {" or ".join(map(str, valid_sizes(s, self.sr_ratios)))} (resize the '
            f'input; config.input.image_size / img_size).')

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False,
               mask: Optional[jax.Array] = None):
    """x: [B, H, W, in_chans] with H, W multiples of ``size_multiple(sr_ratios)``.

    mask (bool [B, H, W], True = padded pixel; as DETR's backbone passes it) is accepted and
    not used: the attention is global and nothing is padded inside the model, so a batch's
    padding is seen as pixels, as an mmdet backbone sees it.
    """
    del mask
    if x.ndim != 4 or x.shape[-1] != self.in_chans:
      raise ValueError(f'expected NHWC images [B, H, W, {self.in_chans}], got {x.shape}')
    self._check(x.shape[1], x.shape[2])
    deterministic = not train
    dpr = np.linspace(0.0, self.drop_path_rate, int(sum(self.depths)))
    cur = 0
    features = []
    x = x.astype(self.dtype)
    fast_cpu = use_fast_cpu(self.fast_cpu)
    for i, depth in enumerate(self.depths):
      if i == 0:
        x = Head(self.num_conv, self.embed_dims[0], self.dtype, fast_cpu,
                 self.frozen_bn, name='patch_embed1')(x, train)
      else:
        x = OverlapPatchEmbed(self.embed_dims[i], dtype=self.dtype,
                              name=f'patch_embed{i + 1}')(x)
      block = dict(num_heads=self.num_heads[i], mlp_ratio=self.mlp_ratios[i],
                   sr_ratio=self.sr_ratios[i], qkv_bias=self.qkv_bias, qk_scale=self.qk_scale,
                   drop=self.drop_rate, attn_drop=self.attn_drop_rate, norm_eps=self.norm_eps,
                   dtype=self.dtype, fast_cpu=fast_cpu)
      noise = layers.drop_path_noise(self, (depth, 2, x.shape[0]), deterministic,
                                     depth > 0 and self.drop_path_rate > 0)  # [depth, 2, B]
      if self.scan_blocks and depth:
        blocks = scan.scan_block(ScanBlock, depth, self.remat, (0, 0, nn.broadcast), (4,))
        rates = jnp.asarray(dpr[cur:cur + depth], jnp.float32)
        x, _ = blocks(**block, drop_path=float(self.drop_path_rate),
                      name=f'block{i + 1}')(x, rates, noise, deterministic)
      else:
        cls = scan.remat_block(Block, self.remat, (2,))
        for j in range(depth):
          x = cls(**block, drop_path=float(dpr[cur + j]), name=f'block{i + 1}_{j}')(
              x, deterministic, noise=None if noise is None else noise[j])
      cur += depth
      x = layers.apply_norm(layers.layer_norm(self.norm_eps, f'norm{i + 1}'), x)
      if return_features:
        features.append(x.astype(jnp.float32))
    if return_features:
      return features
    x = x.mean(axis=(1, 2))
    if self.num_classes > 0:
      x = layers.Dense(self.num_classes, dtype=self.dtype, kernel_init=layers.dense_init,
                       name='head')(x)
    return x.astype(jnp.float32)


def _shunted(defaults, **overrides):
  kwargs = dict(defaults)
  kwargs.update(overrides)
  return ShuntedTransformer(**kwargs)


# Official SSA.py shunted_{t,s,b}; drop_path_rate: the DeiT-style recipe of the paper.
_SHARED = dict(embed_dims=(64, 128, 256, 512), num_heads=(2, 4, 8, 16), mlp_ratios=(8, 8, 4, 4),
               sr_ratios=(8, 4, 2, 1), qkv_bias=True, norm_eps=1e-6)
_SHUNTED_ARCHS = {
    'shunted_t': dict(_SHARED, depths=(1, 2, 4, 1), num_conv=0, drop_path_rate=0.1),
    'shunted_s': dict(_SHARED, depths=(2, 4, 12, 1), num_conv=1, drop_path_rate=0.2),
    'shunted_b': dict(_SHARED, depths=(3, 4, 24, 2), num_conv=2, drop_path_rate=0.3),
}

for _name, _arch in _SHUNTED_ARCHS.items():
  register_model(_name, family='shunted')(lambda _arch=_arch, **kw: _shunted(_arch, **kw))
