"""ResNet body with frozen BatchNorm, as the DETR backbone (torchvision's ResNet v1.5).

Exact to ``torchvision.models.resnet{50,101}(replace_stride_with_dilation=[False, False,
dilation], norm_layer=FrozenBatchNorm2d)`` as facebookresearch/detr builds it
(``models/backbone.py``), without the pooling and classifier (DETR's
``IntermediateLayerGetter`` drops them). Names follow torchvision's state_dict with flax's
``_`` for list indices: ``conv1``, ``bn1``, ``layer{1..4}_{j}/{conv1, bn1, conv2, bn2, conv3,
bn3, downsample_0, downsample_1}``.

Frozen BatchNorm: the four per-channel vectors (``weight``, ``bias``, ``running_mean``,
``running_var``) are buffers in the official code, never trained. Here they live in the
``'frozen'`` collection (not ``'params'``), so no optimizer sees them and parameter counts
match the official ``named_parameters()``; they are applied as ``x * scale + shift`` with
``scale = weight / sqrt(running_var + 1e-5)`` exactly as DETR's ``FrozenBatchNorm2d``.

Input NHWC float images (normalised); output the stage-4 map [B, H/32, W/32, 2048]
(H/16 with ``dilation=True``: the DC5 variant).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from swin_jax.models.registry import register_model

Dtype = Any

RESNET_DEPTHS = {'resnet50': (3, 4, 6, 3), 'resnet101': (3, 4, 23, 3)}
FROZEN_BN_EPS = 1e-5  # DETR's FrozenBatchNorm2d adds eps before the rsqrt

# torchvision's init: kaiming_normal_(mode='fan_out', nonlinearity='relu').
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class FrozenBatchNorm(nn.Module):
  """BatchNorm with fixed statistics and affine (DETR's ``FrozenBatchNorm2d``).

  The vectors sit in the ``'frozen'`` collection: gradients are never taken w.r.t. them.
  """
  features: int

  @nn.compact
  def __call__(self, x):
    """x: [..., C] -> [..., C] in x's dtype (the affine is computed in float32)."""
    c = self.features
    weight = self.variable('frozen', 'weight', lambda: jnp.ones((c,), jnp.float32)).value
    bias = self.variable('frozen', 'bias', lambda: jnp.zeros((c,), jnp.float32)).value
    mean = self.variable('frozen', 'running_mean', lambda: jnp.zeros((c,), jnp.float32)).value
    var = self.variable('frozen', 'running_var', lambda: jnp.ones((c,), jnp.float32)).value
    scale = weight * jax.lax.rsqrt(var + FROZEN_BN_EPS)
    shift = bias - mean * scale
    scale, shift = jax.lax.stop_gradient(scale), jax.lax.stop_gradient(shift)
    return (x * scale.astype(x.dtype) + shift.astype(x.dtype)).astype(x.dtype)


def _conv(features: int, kernel: int, stride: int = 1, dilation: int = 1,
          dtype: Dtype = jnp.float32, name: Optional[str] = None):
  """torch Conv2d(bias=False) with padding = dilation * (kernel - 1) / 2 (symmetric)."""
  pad = dilation * (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), kernel_dilation=(dilation, dilation),
                 use_bias=False, dtype=dtype, kernel_init=conv_init, name=name)


def make_norm(kind: str, features: int, name: str) -> nn.Module:
  """'frozen': DETR's FrozenBatchNorm (pretrained statistics, the official setting);
  'group': GroupNorm with 8 groups (trainable affine, no statistics): a backbone trained from
  scratch (frozen identity statistics would leave it without any normalisation)."""
  if kind == 'frozen':
    return FrozenBatchNorm(features, name=name)
  if kind == 'group':
    return nn.GroupNorm(num_groups=min(8, features), epsilon=1e-5, name=name)
  raise ValueError(f"backbone_norm={kind!r}: use 'frozen' (official) or 'group'")


class Bottleneck(nn.Module):
  """torchvision Bottleneck (stride on the 3x3 conv, v1.5), expansion 4."""
  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  dtype: Dtype = jnp.float32
  norm: str = 'frozen'

  @nn.compact
  def __call__(self, x):
    """x: [B, H, W, Cin] -> [B, H/stride, W/stride, 4 * planes]."""
    identity = x
    out = _conv(self.planes, 1, dtype=self.dtype, name='conv1')(x)
    out = nn.relu(make_norm(self.norm, self.planes, 'bn1')(out))
    out = _conv(self.planes, 3, self.stride, self.dilation, self.dtype, name='conv2')(out)
    out = nn.relu(make_norm(self.norm, self.planes, 'bn2')(out))
    out = _conv(self.planes * 4, 1, dtype=self.dtype, name='conv3')(out)
    out = make_norm(self.norm, self.planes * 4, 'bn3')(out)
    if self.downsample:
      identity = _conv(self.planes * 4, 1, self.stride, dtype=self.dtype,
                       name='downsample_0')(x)
      identity = make_norm(self.norm, self.planes * 4, 'downsample_1')(identity)
    return nn.relu(out + identity)


def max_pool_3x3_s2(x):
  """torch MaxPool2d(3, stride=2, padding=1) on [B, H, W, C] (padding is -inf).

  The same values as ``nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))``, computed as a
  row max then a column max of three strided slices each: XLA:CPU runs this ~4x faster
  than the reduce-window inside the train step, and its gradient ~4x faster too. Where a
  window holds tied maxima the gradient is shared between them (reduce-window gives it to
  one); after the stem's ReLU those ties are zeros, whose gradient the ReLU drops anyway.
  """
  h, w = x.shape[1], x.shape[2]
  ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  x = jnp.maximum(jnp.maximum(x[:, 0:2 * ho - 1:2], x[:, 1:2 * ho:2]), x[:, 2:2 * ho + 1:2])
  return jnp.maximum(jnp.maximum(x[:, :, 0:2 * wo - 1:2], x[:, :, 1:2 * wo:2]),
                     x[:, :, 2:2 * wo + 1:2])


class ResNetBody(nn.Module):
  """ResNet stem + 4 stages; returns the last stage's map.

  ``freeze_stem``: stop gradients after ``layer1`` (DETR trains only layer2-4:
  ``BackboneBase`` sets ``requires_grad_(False)`` on the stem and layer1). The kernels stay
  in ``'params'``; ``swin_jax.models.detr.trainable_mask`` tells an optimizer to leave them
  alone (weight decay would otherwise still move them).
  """
  depths: Sequence[int] = (3, 4, 6, 3)
  dilation: bool = False  # DC5: dilation instead of stride in the last stage
  freeze_stem: bool = True
  dtype: Dtype = jnp.float32
  # Not in the official DETR (always 64 and 4 stages): a narrower / shallower body for small
  # CPU runs (the embedded-dataset demo). Stage i has width * 2**i planes (x4 out).
  width: int = 64
  norm: str = 'frozen'  # 'group' for a backbone trained from scratch (make_norm)

  @nn.compact
  def __call__(self, x):
    """x: [B, H, W, 3] -> [B, ceil(H/32), ceil(W/32), 2048] (H/16 when dilation).

    In general: stride 2 ** (len(depths) + 1) (halved with dilation), 4 * width *
    2 ** (len(depths) - 1) channels.
    """
    w = self.width
    x = _conv(w, 7, 2, dtype=self.dtype, name='conv1')(x.astype(self.dtype))
    x = nn.relu(make_norm(self.norm, w, 'bn1')(x))
    x = max_pool_3x3_s2(x)
    inplanes, cur_dilation = w, 1
    for i, depth in enumerate(self.depths):
      planes = w * 2 ** i
      stride = 1 if i == 0 else 2
      prev_dilation = cur_dilation
      if self.dilation and i == len(self.depths) - 1:
        # torchvision's _make_layer(dilate=True): the stride becomes dilation for the later
        # blocks; the first block keeps the previous dilation and gets stride 1.
        cur_dilation *= stride
        stride = 1
      for j in range(depth):
        x = Bottleneck(planes, stride if j == 0 else 1,
                       prev_dilation if j == 0 else cur_dilation,
                       downsample=(j == 0 and (stride != 1 or inplanes != planes * 4)),
                       dtype=self.dtype, norm=self.norm, name=f'layer{i + 1}_{j}')(x)
        inplanes = planes * 4
      if i == 0 and self.freeze_stem:
        x = jax.lax.stop_gradient(x)
    return x


class ResNet(nn.Module):
  """torchvision's ResNet-50 / 101 classifier: ResNetBody, global average pool, ``fc``.

  The body's params sit under ``body`` with DETR's backbone names, so a classification
  workdir initialises a DETR backbone (``config.init_from``, or ``config.pretrain``: the
  ImageNet-then-COCO recipe of the DETR paper, at any scale). Normalisation: 'frozen'
  (torchvision's eval-mode BatchNorm statistics, in the ``'frozen'`` collection) or 'group'
  (a body trained from scratch, e.g. the embedded-digits demo).
  """
  num_classes: int = 1000
  depths: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  norm: str = 'frozen'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """x: [B, H, W, 3] normalised -> logits [B, num_classes] (pooled features [B, C] when
    num_classes is 0). ``train`` is accepted for the trainer; nothing here depends on it."""
    del train
    feats = ResNetBody(tuple(self.depths), False, False, self.dtype, self.width, self.norm,
                       name='body')(x)
    feats = jnp.mean(feats.astype(jnp.float32), axis=(1, 2))  # [B, C]
    if not self.num_classes:
      return feats
    return nn.Dense(self.num_classes, name='fc')(feats)


for _name, _depths in RESNET_DEPTHS.items():
  register_model(_name, family='resnet')(
      lambda _depths=_depths, **kw: ResNet(**{'depths': _depths, **kw}))
