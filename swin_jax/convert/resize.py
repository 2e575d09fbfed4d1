"""NumPy image resizing that reproduces ``torch.nn.functional.interpolate`` exactly.

Used when a checkpoint's table is resampled to the model's size: ViT absolute position
embeddings (and, later, Swin relative-position-bias tables). Written in NumPy so that loading
a checkpoint needs no torch.

Both resizes are separable: ``out = Wh @ x @ Ww.T`` with per-axis [out, in] weight matrices
built by :func:`interpolation_matrix`, whose rules are those of PyTorch's CPU kernels
(``align_corners=False``, output size given, no ``scale_factor``):

* ``antialias=False`` (the default of ``F.interpolate``): bicubic is Keys' cubic convolution
  with ``a = -0.75`` at source coordinate ``(i + 0.5) * in / out - 0.5``, out-of-range taps
  clamped to the border; bilinear clamps the source coordinate at 0.
* ``antialias=True`` (PIL-style, the default of timm's ``resample_abs_pos_embed``): a filter
  of support ``2`` (bicubic, ``a = -0.5``) or ``1`` (bilinear) widened by ``in / out`` when
  downsampling, taps restricted to the input and renormalised to sum to 1.

Note: the two differ when *up*-sampling too (``a = -0.75`` vs ``-0.5`` and the border
handling), not only when downsampling; pick the variant of the reference you compare with.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np

_MODES = ('bicubic', 'bilinear')


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
  """Keys' cubic convolution kernel W(x) with parameter ``a`` (support [-2, 2])."""
  x = np.abs(x)
  near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
  far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
  return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _triangle(x: np.ndarray) -> np.ndarray:
  x = np.abs(x)
  return np.where(x < 1.0, 1.0 - x, 0.0)


def interpolation_matrix(in_size: int, out_size: int, mode: str = 'bicubic',
                         antialias: bool = False) -> np.ndarray:
  """The [out_size, in_size] float64 matrix of a 1D ``F.interpolate`` along one axis.

  Args:
    in_size: input length (>= 1).
    out_size: output length (>= 1).
    mode: 'bicubic' or 'bilinear'.
    antialias: as ``F.interpolate(..., antialias=...)``.

  Returns:
    M with ``out[i] = sum_j M[i, j] * in[j]``; each row sums to 1.
  """
  if mode not in _MODES:
    raise ValueError(f'mode={mode!r}: use one of {_MODES}')
  if in_size < 1 or out_size < 1:
    raise ValueError(f'sizes must be >= 1, got in_size={in_size}, out_size={out_size}')
  scale = in_size / out_size
  m = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  if antialias:
    # torch: _compute_indices_min_size_weights_aa (UpSampleKernel.cpp).
    support = (2.0 if mode == 'bicubic' else 1.0) * max(scale, 1.0)
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    for i in range(out_size):
      center = scale * (i + 0.5)
      lo = max(int(center - support + 0.5), 0)  # int() truncates toward zero, as the C++ cast
      hi = min(int(center + support + 0.5), in_size)
      j = np.arange(lo, hi)
      t = (j - center + 0.5) * invscale
      w = _cubic(t, -0.5) if mode == 'bicubic' else _triangle(t)
      total = w.sum()
      m[i, lo:hi] = w / total if total != 0.0 else w
    return m
  src = (rows + 0.5) * scale - 0.5
  if mode == 'bicubic':
    base = np.floor(src).astype(np.int64)
    t = src - base
    for k, off in enumerate((-1, 0, 1, 2)):
      w = _cubic(t - off, -0.75)  # tap at base + off sits at distance t - off
      idx = np.clip(base + off, 0, in_size - 1)
      np.add.at(m, (rows, idx), w)
    return m
  src = np.maximum(src, 0.0)
  x0 = src.astype(np.int64)
  lam = src - x0
  x1 = np.minimum(x0 + 1, in_size - 1)
  np.add.at(m, (rows, x0), 1.0 - lam)
  np.add.at(m, (rows, x1), lam)
  return m


def torch_resize(x: np.ndarray, out_hw: Sequence[int], mode: str = 'bicubic',
                 antialias: bool = False) -> np.ndarray:
  """``F.interpolate(x, size=out_hw, mode=mode, align_corners=False, antialias=antialias)``.

  Args:
    x: array [..., H, W] (any leading dims, e.g. NCHW); resized over the last two axes.
    out_hw: (H_out, W_out).
    mode: 'bicubic' or 'bilinear'.
    antialias: PIL-style antialiasing, as torch's flag.

  Returns:
    [..., H_out, W_out] in the dtype of ``x`` (computed in float64).
  """
  x = np.asarray(x)
  if x.ndim < 2:
    raise ValueError(f'expected an array [..., H, W], got shape {x.shape}')
  out_h, out_w = (int(s) for s in out_hw)
  h, w = x.shape[-2:]
  if (h, w) == (out_h, out_w) and not antialias:
    return x.copy()
  mh = interpolation_matrix(h, out_h, mode, antialias)
  mw = interpolation_matrix(w, out_w, mode, antialias)
  y = np.einsum('ih,...hw,jw->...ij', mh, x.astype(np.float64), mw, optimize=True)
  return y.astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32)


def torch_bicubic_resize(x: np.ndarray, out_hw: Sequence[int],
                         antialias: bool = False) -> np.ndarray:
  """Bicubic resize of [..., H, W] -> [..., H_out, W_out], equal to ``F.interpolate``.

  Same as ``F.interpolate(x, size=out_hw, mode='bicubic', align_corners=False,
  antialias=antialias)``. The default ``antialias=False`` is torch's default; timm's
  position-embedding resampling (``resample_abs_pos_embed``) defaults to ``antialias=True``,
  which gives different values, most visibly when downsampling.
  """
  return torch_resize(x, out_hw, 'bicubic', antialias)


def infer_square_grid(num_tokens: int) -> Tuple[int, int]:
  """(s, s) with s * s == num_tokens, else ValueError."""
  s = int(round(math.sqrt(num_tokens)))
  if s * s != num_tokens:
    raise ValueError(f'cannot infer a square grid from {num_tokens} position tokens')
  return s, s
