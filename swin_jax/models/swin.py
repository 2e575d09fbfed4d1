"""Swin Transformer (Liu et al., ICCV 2021), exact to microsoft/Swin-Transformer.

Parameter names follow the official release (``patch_embed/{proj,norm}``,
``layers_{i}/blocks_{j}/{norm1, attn/{relative_position_bias_table, qkv, proj}, norm2,
mlp/{fc1, fc2}}``, ``layers_{i}/downsample/{norm, reduction}`` at the END of stage i,
``norm``, ``head``), so conversion is a short mapping (timm's layout moves downsample to the
start of the next stage; swin_jax.convert handles both).

Any input size: every stage pads its map to a multiple of the window (and to even sizes
before PatchMerging) as the official detection backbone does, but padded tokens are masked
out of attention and zeroed before merging and pooling, so the outputs at real tokens do not
depend on how much padding follows (an optional pixel ``mask``, True = padded, extends this to
images padded in a batch, as DETR feeds them). Masks and indices are numpy constants built at
trace time; only O(H*W) constants are baked in, never an [N, N] matrix of the whole image.

Input NHWC float images, normalised. Output logits [B, num_classes], or with
``return_features=True`` the four stage maps [B, H/4, W/4, C] ... [B, H/32, W/32, 8C] (each
stage's norm is not applied; ``features_norm=True`` adds the LayerNorm ``norm{i}`` per stage
as the detection backbone does).

``detection=True`` is the official detection backbone (SwinTransformer/Swin-Transformer-
Object-Detection, ``mmdet/models/backbones/swin_transformer.py``): ``window_size`` on every
stage and every odd block shifted by ``window_size // 2`` at any input size (a map smaller
than the window is padded up to one window and still shifts), the shift mask built on the
padded map of the actual input, and the stage maps of ``out_indices`` returned, each through
its own LayerNorm ``norm{i}`` (no ``norm`` / ``head``). The official code lets zero-padded
tokens into attention and ignores batch padding; that is the default here too
(``mask_padding=None`` means False with ``detection=True``); ``mask_padding=True`` adds our
masking on top (padded tokens and the pixel ``mask`` out of attention, zeroed before merging).
Both modes have the same parameters, so an official classification checkpoint (the
detection configs' ``pretrained=``) and an official detection checkpoint both load
(swin_jax.convert.swin).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from swin_jax.models import layers, scan
from swin_jax.models.registry import register_model

Dtype = Any
MASK_VALUE = -100.0  # the official shifted-window mask value
PAD_VALUE = -1e9  # padded keys: exp() underflows to exactly 0 in float32


# ----------------------------------------------------------------------------- helpers
def window_partition(x, ws: int):
  """[B, H, W, C] -> [B * H/ws * W/ws, ws*ws, C] (H, W multiples of ws)."""
  B, H, W, C = x.shape
  x = x.reshape(B, H // ws, ws, W // ws, ws, C).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, ws * ws, C)


def window_reverse(windows, ws: int, H: int, W: int):
  """[B * H/ws * W/ws, ws*ws, C] -> [B, H, W, C]."""
  C = windows.shape[-1]
  x = windows.reshape(-1, H // ws, W // ws, ws, ws, C).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, H, W, C)


def relative_position_index(ws: int) -> np.ndarray:
  """[ws*ws, ws*ws] index into the (2ws-1)^2 bias table (the official construction)."""
  coords = np.stack(np.meshgrid(np.arange(ws), np.arange(ws), indexing='ij'))  # [2, ws, ws]
  flat = coords.reshape(2, -1)
  rel = (flat[:, :, None] - flat[:, None, :]).transpose(1, 2, 0)  # [N, N, 2]
  rel[:, :, 0] += ws - 1
  rel[:, :, 1] += ws - 1
  rel[:, :, 0] *= 2 * ws - 1
  return rel.sum(-1)


def shift_region_ids(H: int, W: int, ws: int, shift: int) -> np.ndarray:
  """[H, W] region ids of the official shifted-window mask (H, W multiples of ws)."""
  img = np.zeros((H, W), np.int32)
  cnt = 0
  for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
    for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
      img[hs, wsl] = cnt
      cnt += 1
  return img


def shifted_window_mask(H: int, W: int, ws: int, shift: int) -> np.ndarray:
  """[nW, ws*ws, ws*ws] additive mask of the official code: 0 within a region, -100 across.

  Kept for reference and tests; the model builds the same values from region ids in-graph.
  """
  ids = window_partition(shift_region_ids(H, W, ws, shift)[None, :, :, None], ws)[..., 0]
  return np.where(ids[:, None, :] != ids[:, :, None], MASK_VALUE, 0.0).astype(np.float32)


def _pad_to(x, mult_h: int, mult_w: int):
  B, H, W, C = x.shape
  ph, pw = (-H) % mult_h, (-W) % mult_w
  if ph or pw:
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
  return x


# ----------------------------------------------------------------------------- modules
class WindowAttention(nn.Module):
  """Window multi-head self-attention with the relative position bias.

  x: [B, nW, N, C] windows (N = ws*ws); region_bias: None or [nW, N, N] (the shift mask);
  key_bias: None or [B, nW, N] (0 for real keys, PAD_VALUE for padded ones).
  """
  window_size: int
  num_heads: int
  qkv_bias: bool = True
  attn_drop: float = 0.0
  proj_drop: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, region_bias=None, key_bias=None, deterministic: bool = True):
    B, nW, N, C = x.shape
    ws, nh = self.window_size, self.num_heads
    hd = C // nh
    table = self.param('relative_position_bias_table', nn.initializers.truncated_normal(0.02),
                       ((2 * ws - 1) * (2 * ws - 1), nh), jnp.float32)
    rel = table[relative_position_index(ws).reshape(-1)].reshape(N, N, nh).transpose(2, 0, 1)
    qkv = layers.Dense(3 * C, use_bias=self.qkv_bias, dtype=self.dtype,
                       kernel_init=layers.dense_init, name='qkv')(x)
    qkv = qkv.reshape(B, nW, N, 3, nh, hd)
    q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]  # [B, nW, N, nh, hd]
    # One float32 bias for the logits [B, nW, nh, N, N], broadcast where it can be.
    bias = rel[None, None]  # [1, 1, nh, N, N]
    if region_bias is not None:
      bias = bias + region_bias[None, :, None]  # [1, nW, nh, N, N]
    if key_bias is not None:
      bias = bias + key_bias[:, :, None, None, :]  # [B, nW, nh, N, N]
    rng = None
    if not deterministic and self.attn_drop > 0.0:
      rng = self.make_rng('dropout')
    out = layers.dot_product_attention(q, k, v, bias=bias, dropout_rng=rng,
                                       dropout_rate=self.attn_drop,
                                       deterministic=deterministic)  # [B, nW, N, nh, hd]
    out = out.reshape(B, nW, N, C)
    out = layers.Dense(C, dtype=self.dtype, kernel_init=layers.dense_init, name='proj')(out)
    return nn.Dropout(self.proj_drop)(out, deterministic=deterministic)


class SwinBlock(nn.Module):
  """(Shifted) window attention block. x: [B, H, W, C] -> [B, H, W, C] (any H, W)."""
  num_heads: int
  window_size: int
  shift_size: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop: float = 0.0
  attn_drop: float = 0.0
  drop_path: float = 0.0
  norm_eps: float = 1e-5
  dtype: Dtype = jnp.float32
  # False: the zero tokens that pad the map to whole windows take part in attention, as in
  # the official detection code; True: they are masked out of it.
  mask_padding: bool = True

  @nn.compact
  def __call__(self, x, valid: Optional[jax.Array], deterministic: bool = True,
               drop_path=None, noise=None):
    """valid: None (every token real) or bool [B, H, W] (False = padded token).
    drop_path: None (the field ``drop_path``) or a traced rate (a scanned input).
    noise: None or the drop-path uniforms [2, B] of the two branches (layers.drop_path_noise)."""
    def residual(y, branch):
      return scan.branch_drop_path(self, y, drop_path, deterministic, noise, branch)

    B, H, W, C = x.shape
    ws, shift = self.window_size, self.shift_size
    shortcut = x
    x = layers.apply_norm(layers.layer_norm(self.norm_eps, 'norm1'), x)
    x = _pad_to(x, ws, ws)
    Hp, Wp = x.shape[1], x.shape[2]
    if valid is None and self.mask_padding and (Hp, Wp) != (H, W):
      valid = jnp.ones((B, H, W), bool)
    key_ok = None
    if valid is not None:
      key_ok = jnp.pad(valid, ((0, 0), (0, Hp - H), (0, Wp - W)))  # [B, Hp, Wp]
    if shift:
      x = jnp.roll(x, (-shift, -shift), axis=(1, 2))
      if key_ok is not None:
        key_ok = jnp.roll(key_ok, (-shift, -shift), axis=(1, 2))
    nW = (Hp // ws) * (Wp // ws)
    xw = window_partition(x, ws).reshape(B, nW, ws * ws, C)
    region = key_bias = None
    if shift:
      ids = window_partition(shift_region_ids(Hp, Wp, ws, shift)[None, :, :, None], ws)[..., 0]
      ids = jnp.asarray(ids)  # [nW, N] int constant: O(H*W), the [nW, N, N] mask is built here
      region = jnp.where(ids[:, None, :] != ids[:, :, None], MASK_VALUE, 0.0)
    if key_ok is not None:
      kw = window_partition(key_ok[..., None], ws)[..., 0].reshape(B, nW, ws * ws)
      key_bias = jnp.where(kw, 0.0, PAD_VALUE)
    y = WindowAttention(ws, self.num_heads, self.qkv_bias, self.attn_drop, self.drop,
                        dtype=self.dtype, name='attn')(xw, region, key_bias, deterministic)
    y = y.reshape(B * nW, ws * ws, C)
    y = window_reverse(y, ws, Hp, Wp)  # [B, Hp, Wp, C]
    if shift:
      y = jnp.roll(y, (shift, shift), axis=(1, 2))
    y = y[:, :H, :W]
    x = shortcut + residual(y, 0)
    y = layers.apply_norm(layers.layer_norm(self.norm_eps, 'norm2'), x)
    y = layers.Mlp(int(C * self.mlp_ratio), drop=self.drop, dtype=self.dtype, name='mlp')(
        y, deterministic)
    return x + residual(y, 1)


class SwinPair(nn.Module):
  """A (window, shifted-window) pair of blocks, ``blocks_0`` then ``blocks_1``: the
  ``nn.scan`` body of a stage with scan_blocks=True. x: [B, H, W, C]; drop_path: [2] rates,
  applied when the static ``use_drop_path`` is (False: no random draws compiled in)."""
  num_heads: int
  window_size: int
  shift_size: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop: float = 0.0
  attn_drop: float = 0.0
  norm_eps: float = 1e-5
  dtype: Dtype = jnp.float32
  mask_padding: bool = True
  use_drop_path: bool = True

  @nn.compact
  def __call__(self, x, drop_path, noise, valid, deterministic: bool = True):
    """noise: None or this pair's drop-path uniforms [2 blocks, 2 branches, B]."""
    for j, shift in enumerate((0, self.shift_size)):
      rate = drop_path[j] if self.use_drop_path else None
      x = SwinBlock(self.num_heads, self.window_size, shift, self.mlp_ratio, self.qkv_bias,
                    self.drop, self.attn_drop, 0.0, self.norm_eps, self.dtype,
                    self.mask_padding, name=f'blocks_{j}')(
                        x, valid, deterministic, drop_path=rate,
                        noise=None if noise is None else noise[j])
    return x, None


class PatchMerging(nn.Module):
  """[B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 2C]: concat (x0, x1, x2, x3), LN(4C), Linear.

  x0 = x[0::2, 0::2], x1 = x[1::2, 0::2], x2 = x[0::2, 1::2], x3 = x[1::2, 1::2] (official
  order); odd sizes are zero-padded as the official detection code does.
  """
  norm_eps: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    C = x.shape[-1]
    x = _pad_to(x, 2, 2)
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                         x[:, 1::2, 1::2]], axis=-1)  # [B, H/2, W/2, 4C]
    x = layers.apply_norm(layers.layer_norm(self.norm_eps, 'norm'), x)
    return layers.Dense(2 * C, use_bias=False, dtype=self.dtype, kernel_init=layers.dense_init,
                        name='reduction')(x)


class PatchEmbed(nn.Module):
  """Conv p x p stride p + LayerNorm: [B, H, W, 3] -> [B, ceil(H/p), ceil(W/p), D]."""
  patch_size: int
  embed_dim: int
  norm_eps: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    x = _pad_to(x, p, p)  # zero pixels up to the patch size, as the official code pads
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype,
                name='proj')(x)
    return layers.apply_norm(layers.layer_norm(self.norm_eps, 'norm'), x)


class BasicLayer(nn.Module):
  """One stage: `depth` blocks alternating plain / shifted windows, then PatchMerging.

  window_size / shift_size are this stage's, fixed at construction (see stage_windows).
  """
  depth: int
  num_heads: int
  window_size: int
  shift_size: int
  mlp_ratio: float
  qkv_bias: bool
  drop: float
  attn_drop: float
  drop_path: Sequence[float]
  downsample: bool
  norm_eps: float = 1e-5
  dtype: Dtype = jnp.float32
  mask_padding: bool = True  # see SwinBlock
  scan_blocks: bool = False  # the blocks as an nn.scan over pairs (SwinPair), params 'pairs'
  remat: str = 'none'  # see swin_jax.models.scan

  @nn.compact
  def __call__(self, x, valid, deterministic: bool = True):
    """Returns (stage output before merging, merged map or None, merged validity)."""
    ws, shift = self.window_size, self.shift_size
    use_drop_path = any(float(r) > 0 for r in self.drop_path)
    noise = layers.drop_path_noise(self, (self.depth, 2, x.shape[0]), deterministic,
                                   use_drop_path)  # [depth, 2 branches, B]
    if self.scan_blocks:
      rates = jnp.asarray(np.asarray(self.drop_path, np.float32).reshape(self.depth // 2, 2))
      pairs = scan.scan_block(SwinPair, self.depth // 2, self.remat,
                              (0, 0, nn.broadcast, nn.broadcast), (5,))
      if noise is not None:
        noise = noise.reshape(self.depth // 2, 2, 2, x.shape[0])  # [pairs, 2 blocks, 2, B]
      x, _ = pairs(self.num_heads, ws, shift, self.mlp_ratio, self.qkv_bias, self.drop,
                   self.attn_drop, self.norm_eps, self.dtype, self.mask_padding,
                   use_drop_path=use_drop_path, name='pairs')(x, rates, noise, valid,
                                                              deterministic)
    else:
      block = scan.remat_block(SwinBlock, self.remat, (3,))
      for j in range(self.depth):
        x = block(self.num_heads, ws, shift if j % 2 else 0, self.mlp_ratio, self.qkv_bias,
                  self.drop, self.attn_drop, float(self.drop_path[j]), self.norm_eps,
                  self.dtype, self.mask_padding, name=f'blocks_{j}')(
                      x, valid, deterministic, noise=None if noise is None else noise[j])
    if valid is not None:
      x = x * valid[..., None].astype(x.dtype)  # padded tokens never leak into merges
    if not self.downsample:
      return x, None, valid
    merged = PatchMerging(self.norm_eps, self.dtype, name='downsample')(x)
    if valid is not None:
      valid = _pad_to(valid[..., None], 2, 2)[:, ::2, ::2, 0]
    return x, merged, valid


def stage_window(h: int, w: int, window_size: int) -> Tuple[int, int]:
  """(window, shift) for a stage map h x w: the official rule, no shift and window = the map
  when the map is not larger than the window (also when a user forces a larger window)."""
  if min(h, w) <= window_size:
    return min(h, w), 0
  return window_size, window_size // 2


def stage_windows(img_size, patch_size: int, window_size: int, num_stages: int):
  """[(window, shift)] per stage, from the configured img_size (as the official classifier).

  Fixed at construction so the relative-position tables keep their shapes: any other input
  size is padded to these windows, never given a smaller window.
  """
  h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
  h, w = -(-h // patch_size), -(-w // patch_size)
  out = []
  for _ in range(num_stages):
    out.append(stage_window(h, w, window_size))
    h, w = -(-h // 2), -(-w // 2)
  return out


class SwinTransformer(nn.Module):
  """Swin classifier / backbone. Fields are the hyper-parameters; nothing is hidden.

  Each stage's window and shift are fixed from ``img_size`` (``stage_windows``): the official
  rule gives a stage whose map at ``img_size`` is not larger than ``window_size`` one window
  of the map's size and no shift (Swin-T at 224: stage 4 is one 7x7 window); a window_size a
  user forces above the first stage's map is shrunk the same way. Inputs of any other size
  are padded to these windows, so the parameters never change shape with the input.

  ``detection=True``: the official detection backbone instead (module docstring): window
  ``window_size`` with shift ``window_size // 2`` on every stage at every input size; the
  call returns the list of ``out_indices`` stage maps, each through ``norm{i}``, whatever
  ``return_features`` says.
  """
  img_size: Any = 224
  patch_size: int = 4
  in_chans: int = 3
  num_classes: int = 1000
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window_size: int = 7
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.1
  norm_eps: float = 1e-5
  features_norm: bool = False
  dtype: Dtype = jnp.float32
  detection: bool = False  # the official detection backbone (see above)
  # Stages returned as features, in stage order (None: all), as mmdet's out_indices; with
  # detection=True only these get a norm{i}.
  out_indices: Optional[Sequence[int]] = None
  # Mask padded tokens out of attention (and the pixel mask's padding): None = True, except
  # with detection=True, where the official code lets them in (False).
  mask_padding: Optional[bool] = None
  # Each stage's blocks as one nn.scan over (window, shifted-window) pairs (even depths):
  # params layers_{i}/pairs/blocks_{0,1}/... stacked [depth/2, ...] (swin_jax.models.scan).
  scan_blocks: bool = False
  remat: str = 'none'  # 'none' | 'full' | a jax.checkpoint_policies name, per block / pair

  def scan_layout(self):
    """The stacked layout: layers_i/blocks_{2k + j} -> layers_i/pairs/blocks_j[k]."""
    return [((f'layers_{i}', 'pairs'),
             [[(('blocks_0',), (f'layers_{i}', f'blocks_{2 * k}')),
               (('blocks_1',), (f'layers_{i}', f'blocks_{2 * k + 1}'))]
              for k in range(int(d) // 2)])
            for i, d in enumerate(self.depths)]

  @nn.compact
  def __call__(self, x, train: bool = False, mask: Optional[jax.Array] = None,
               return_features: bool = False):
    """x: [B, H, W, in_chans]; mask: optional bool [B, H, W], True = padded pixel.

    Returns logits [B, num_classes], or (``return_features`` or ``detection``) the list of
    stage maps [B, ceil(H/(p*2^i)), ceil(W/(p*2^i)), embed_dim*2^i] of ``out_indices``.
    """
    if len(self.depths) != len(self.num_heads):
      raise ValueError(f'depths {tuple(self.depths)} and num_heads {tuple(self.num_heads)} '
                       f'must have the same length')
    if x.ndim != 4 or x.shape[-1] != self.in_chans:
      raise ValueError(f'expected NHWC images [B, H, W, {self.in_chans}], got {x.shape}')
    B, H, W, _ = x.shape
    p = self.patch_size
    if H < p or W < p:
      raise ValueError(f'image {H}x{W} is smaller than one patch ({p}x{p}): Swin needs at '
                       f'least {p}x{p} pixels (resize the input; config.input.image_size).')
    if self.window_size < 1:
      raise ValueError(f'window_size={self.window_size} must be >= 1')
    n = len(self.depths)
    out_indices = tuple(range(n)) if self.out_indices is None else tuple(self.out_indices)
    if not out_indices or any(not 0 <= int(i) < n for i in out_indices):
      raise ValueError(f'out_indices={self.out_indices}: give stage indices in 0..{n - 1} '
                       f'(one per returned map), or None for all {n} stages')
    mask_padding = (not self.detection) if self.mask_padding is None else self.mask_padding
    scan.check_remat(self.remat)
    if self.scan_blocks:
      scan.check_scannable('Swin', self.depths, pair=True)
    deterministic = not train
    x = PatchEmbed(p, self.embed_dim, self.norm_eps, self.dtype, name='patch_embed')(
        x.astype(self.dtype))  # [B, H/p, W/p, C]
    h, w = x.shape[1], x.shape[2]
    valid = None
    if mask is not None and mask_padding:
      # A token is real if its top-left pixel is (padding is at the bottom / right). Without
      # mask_padding the padded pixels are fed like real ones, as mmdet's batch padding.
      valid = ~jnp.asarray(mask, bool)[:, ::p, ::p][:, :h, :w]
    x = nn.Dropout(self.drop_rate)(x, deterministic=deterministic)

    dpr = np.linspace(0.0, self.drop_path_rate, int(sum(self.depths)))
    starts = np.cumsum([0] + list(self.depths))
    if self.detection:  # the official detection rule: one window size, every stage shifts
      windows = [(self.window_size, self.window_size // 2)] * n
    else:
      windows = stage_windows(self.img_size, p, self.window_size, n)
    return_features = return_features or self.detection
    features = []
    for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
      out, merged, valid_next = BasicLayer(
          depth, heads, windows[i][0], windows[i][1], self.mlp_ratio, self.qkv_bias, self.drop_rate,
          self.attn_drop_rate, tuple(dpr[starts[i]:starts[i + 1]]), i < n - 1, self.norm_eps,
          self.dtype, mask_padding, scan_blocks=self.scan_blocks, remat=self.remat,
          name=f'layers_{i}')(x, valid, deterministic)
      if return_features and i in out_indices:
        f = out
        if self.features_norm or self.detection:  # mmdet's names: norm0 .. norm3
          f = layers.apply_norm(layers.layer_norm(self.norm_eps, f'norm{i}'), f)
        features.append(f.astype(jnp.float32))
      if i < n - 1:
        x, valid = merged, valid_next
      else:
        x = out
    if return_features:
      return features
    x = layers.apply_norm(layers.layer_norm(self.norm_eps, 'norm'), x)
    if valid is None:
      x = x.mean(axis=(1, 2))
    else:
      v = valid[..., None].astype(x.dtype)
      x = (x * v).sum(axis=(1, 2)) / jnp.maximum(v.sum(axis=(1, 2)), 1.0)
    if self.num_classes > 0:
      x = layers.Dense(self.num_classes, dtype=self.dtype, kernel_init=layers.dense_init,
                       name='head')(x)
    return x.astype(jnp.float32)


def _swin(defaults, **overrides):
  kwargs = dict(defaults)
  kwargs.update(overrides)
  return SwinTransformer(**kwargs)


# microsoft/Swin-Transformer configs/swin/*.yaml (drop_path_rate: the paper's IN-1k recipe).
_SWIN_ARCHS = {
    'swin_tiny_patch4_window7_224': dict(embed_dim=96, depths=(2, 2, 6, 2),
                                         num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    'swin_small_patch4_window7_224': dict(embed_dim=96, depths=(2, 2, 18, 2),
                                          num_heads=(3, 6, 12, 24), drop_path_rate=0.3),
    'swin_base_patch4_window7_224': dict(embed_dim=128, depths=(2, 2, 18, 2),
                                         num_heads=(4, 8, 16, 32), drop_path_rate=0.5),
    'swin_base_patch4_window12_384': dict(img_size=384, window_size=12, embed_dim=128,
                                          depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                                          drop_path_rate=0.2),
    'swin_large_patch4_window7_224': dict(embed_dim=192, depths=(2, 2, 18, 2),
                                          num_heads=(6, 12, 24, 48), drop_path_rate=0.2),
    'swin_large_patch4_window12_384': dict(img_size=384, window_size=12, embed_dim=192,
                                           depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48),
                                           drop_path_rate=0.2),
}

for _name, _arch in _SWIN_ARCHS.items():
  register_model(_name, family='swin')(lambda _arch=_arch, **kw: _swin(_arch, **kw))


@register_model('swin_demo', family='swin')
def swin_demo(**overrides):
  """A 2-stage Swin for 16x16 inputs (patch 2, window 4): the demo / test model."""
  return _swin(dict(img_size=16, patch_size=2, embed_dim=48, depths=(2, 2), num_heads=(3, 6),
                    window_size=4, mlp_ratio=2.0, drop_path_rate=0.0), **overrides)
