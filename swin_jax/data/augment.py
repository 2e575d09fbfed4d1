"""Per-example ImageNet augmentations of the Swin / Shunted recipes, in TF.

Both papers train with timm's `create_transform(..., auto_augment=
'rand-m9-mstd0.5-inc1', re_prob=0.25, re_mode='pixel', re_count=1)`. This file
re-implements, as graph-mode TF ops that run inside `tf.data` maps:

  rand_augment(image, seed, ...)    timm RandAugment on uint8 [H, W, 3].
  parse_rand_augment(config_str)    'rand-m9-mstd0.5-inc1' -> its kwargs.
  random_erasing(image, seed, ...)  timm RandomErasing on a normalised image.
  color_jitter(image, seed, s)      torchvision ColorJitter(s, s, s), which
                                    timm uses only when RandAugment is off.

plus the individual RandAugment ops (`auto_contrast`, `equalize`, `rotate`,
...), each with the semantics of the PIL call timm makes, so that each can be
tested against PIL on its own.

Randomness is stateless: every op takes an int [2] `seed` (e.g. the pipeline's
`elem_seed`), so a pipeline stays a pure function of its seeds and resumable.

Units: RandAugment images are uint8 in 0..255; random erasing runs after
`input_pipeline.normalize`, on float32 in normalised units (timm erases with
N(0, 1) noise, i.e. noise in normalised units).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Dict, Optional, Sequence

import tensorflow as tf

# timm's RandAugment magnitude scale: 'm9' is level 9 / 10 of each op's range.
LEVEL_DENOM = 10.0
# timm transforms_imagenet_train: img_mean = round(255 * IMAGENET_DEFAULT_MEAN),
# the fill of the geometric ops (not timm's module default of 128 grey).
IMAGENET_FILL = (124, 116, 104)
# timm _translate_rel_level_to_arg default: up to 45% of the image side.
TRANSLATE_PCT = 0.45

# timm auto_augment._RAND_TRANSFORMS / _RAND_INCREASING_TRANSFORMS, in timm's
# order (the order fixes which op a drawn index means).
RAND_TRANSFORMS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize',
    'SolarizeAdd', 'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX',
    'ShearY', 'TranslateXRel', 'TranslateYRel')
RAND_INCREASING_TRANSFORMS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
    'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing',
    'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing',
    'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')

INTERPOLATIONS = ('nearest', 'bilinear')


# --------------------------------------------------------------------------
# Helpers. Images are uint8 [H, W, 3]; LUTs are int32 [3, 256].
# --------------------------------------------------------------------------


def _apply_luts(image: tf.Tensor, luts: tf.Tensor) -> tf.Tensor:
  """Per-channel lookup, as PIL's `Image.point` with a 768-entry table.

  Args:
    image: uint8 [H, W, 3].
    luts: int [3, 256] or [256] (same table for every channel), any values;
      clipped to 0..255 like PIL's 8-bit LUTs.

  Returns:
    uint8 [H, W, 3].
  """
  luts = tf.clip_by_value(tf.cast(luts, tf.int32), 0, 255)
  luts = tf.broadcast_to(luts, [3, 256])
  # Index channel c, value v at c * 256 + v of the flattened tables.
  index = tf.cast(image, tf.int32) + tf.constant([0, 256, 512], tf.int32)
  return tf.cast(tf.gather(tf.reshape(luts, [-1]), index), tf.uint8)


def _histograms(image: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, 3] -> int32 [3, 256] per-channel pixel counts."""
  index = tf.cast(image, tf.int32) + tf.constant([0, 256, 512], tf.int32)
  counts = tf.math.bincount(tf.reshape(index, [-1]), minlength=768,
                            maxlength=768, dtype=tf.int32)
  return tf.reshape(counts, [3, 256])


def _grayscale(image: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, 3] -> int32 [H, W, 1], PIL's `convert('L')`.

  PIL uses ITU-R 601-2 luma in 16-bit fixed point with rounding:
  L = (299 R + 587 G + 114 B) / 1000, as (R*19595 + G*38470 + B*7471 + 2^15)
  >> 16. Matching it bit for bit keeps Color / Contrast equal to PIL's.
  """
  rgb = tf.cast(image, tf.int32)
  weighted = tf.reduce_sum(rgb * tf.constant([19595, 38470, 7471], tf.int32),
                           axis=-1, keepdims=True)
  return tf.bitwise.right_shift(weighted + 32768, 16)


def _blend(degenerate: tf.Tensor, image: tf.Tensor,
           factor: Any) -> tf.Tensor:
  """PIL `Image.blend(degenerate, image, factor)` for 8-bit images.

  PIL computes deg + factor * (img - deg) in C float and truncates to uint8
  after clipping to 0..255 (factor > 1 extrapolates). Truncation, not
  rounding: that is what PIL (and so timm) does.

  Args:
    degenerate: int or float [H, W, 3 or 1] in 0..255.
    image: uint8 [H, W, 3].
    factor: float scalar.

  Returns:
    uint8 [H, W, 3].
  """
  degenerate = tf.cast(degenerate, tf.float32)
  image = tf.cast(image, tf.float32)
  factor = tf.cast(factor, tf.float32)
  blended = degenerate + factor * (image - degenerate)
  return tf.cast(tf.floor(tf.clip_by_value(blended, 0.0, 255.0)), tf.uint8)


# --------------------------------------------------------------------------
# Point ops: PIL ImageOps as timm calls them.
# --------------------------------------------------------------------------


def auto_contrast(image: tf.Tensor) -> tf.Tensor:
  """PIL `ImageOps.autocontrast(image)` (cutoff 0), per channel.

  Each channel is stretched so its min maps to 0 and max to 255:
  v -> int(v * 255 / (hi - lo) - lo * 255 / (hi - lo)); constant channels are
  left as they are.

  Args:
    image: uint8 [H, W, 3].

  Returns:
    uint8 [H, W, 3].
  """
  pixels = tf.reshape(tf.cast(image, tf.float64), [-1, 3])
  lo = tf.reduce_min(pixels, axis=0)[:, None]  # [3, 1]
  hi = tf.reduce_max(pixels, axis=0)[:, None]
  # PIL builds the table in Python doubles; float64 keeps int() identical.
  scale = 255.0 / tf.maximum(hi - lo, 1.0)
  values = tf.range(256, dtype=tf.float64)[None, :]
  stretched = tf.cast(tf.floor(
      tf.clip_by_value(values * scale - lo * scale, 0.0, 255.0)), tf.int32)
  identity = tf.broadcast_to(tf.range(256, dtype=tf.int32), [3, 256])
  return _apply_luts(image, tf.where(hi > lo, stretched, identity))


def equalize(image: tf.Tensor) -> tf.Tensor:
  """PIL `ImageOps.equalize(image)`, per channel.

  PIL's table: step = (N - count of the brightest present value) // 255, and
  lut[v] = (step // 2 + #pixels below v) // step; identity if step == 0 (one
  value, or too few pixels).

  Args:
    image: uint8 [H, W, 3].

  Returns:
    uint8 [H, W, 3].
  """
  hist = _histograms(image)  # [3, 256]
  total = tf.reduce_sum(hist, axis=1, keepdims=True)
  brightest = tf.reduce_max(tf.reshape(tf.cast(image, tf.int32), [-1, 3]),
                            axis=0)
  last_count = tf.gather(hist, brightest, axis=1, batch_dims=1)[:, None]
  step = (total - last_count) // 255  # [3, 1]
  below = tf.cumsum(hist, axis=1, exclusive=True)
  safe_step = tf.maximum(step, 1)
  equalized = (safe_step // 2 + below) // safe_step
  identity = tf.broadcast_to(tf.range(256, dtype=tf.int32), [3, 256])
  return _apply_luts(image, tf.where(step > 0, equalized, identity))


def invert(image: tf.Tensor) -> tf.Tensor:
  """PIL `ImageOps.invert`: v -> 255 - v. uint8 [H, W, 3] -> same."""
  return tf.cast(255 - tf.cast(image, tf.int32), tf.uint8)


def posterize(image: tf.Tensor, bits: Any) -> tf.Tensor:
  """PIL `ImageOps.posterize(image, bits)`: keep the `bits` high bits.

  Args:
    image: uint8 [H, W, 3].
    bits: int scalar in 0..8; 0 gives a black image, >= 8 the image itself
      (timm's `posterize` skips PIL for bits >= 8).

  Returns:
    uint8 [H, W, 3].
  """
  shift = 8 - tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8)
  values = tf.range(256, dtype=tf.int32)
  return _apply_luts(
      image, tf.bitwise.left_shift(tf.bitwise.right_shift(values, shift),
                                   shift))


def solarize(image: tf.Tensor, threshold: Any) -> tf.Tensor:
  """PIL `ImageOps.solarize`: v -> v if v < threshold else 255 - v.

  Args:
    image: uint8 [H, W, 3].
    threshold: int scalar in 0..256 (256 leaves the image unchanged).

  Returns:
    uint8 [H, W, 3].
  """
  values = tf.range(256, dtype=tf.int32)
  threshold = tf.cast(threshold, tf.int32)
  return _apply_luts(image, tf.where(values < threshold, values, 255 - values))


def solarize_add(image: tf.Tensor, add: Any, threshold: int = 128
                 ) -> tf.Tensor:
  """timm `solarize_add`: v -> min(255, v + add) if v < threshold else v.

  Args:
    image: uint8 [H, W, 3].
    add: int scalar, 0..110 in RandAugment.
    threshold: int.

  Returns:
    uint8 [H, W, 3].
  """
  values = tf.range(256, dtype=tf.int32)
  added = tf.minimum(values + tf.cast(add, tf.int32), 255)
  return _apply_luts(image, tf.where(values < threshold, added, values))


# --------------------------------------------------------------------------
# Enhance ops: PIL ImageEnhance.<X>(image).enhance(factor) =
# blend(degenerate, image, factor); factor 1 is the identity.
# --------------------------------------------------------------------------


def color(image: tf.Tensor, factor: Any) -> tf.Tensor:
  """PIL `ImageEnhance.Color`: blend with the grayscale image.

  Args:
    image: uint8 [H, W, 3].
    factor: float scalar; 0 = grayscale, 1 = identity, > 1 more saturated.

  Returns:
    uint8 [H, W, 3].
  """
  return _blend(_grayscale(image), image, factor)


def contrast(image: tf.Tensor, factor: Any) -> tf.Tensor:
  """PIL `ImageEnhance.Contrast`: blend with the mean grey level.

  The degenerate image is uniform at int(mean(L) + 0.5), L = PIL grayscale.

  Args:
    image: uint8 [H, W, 3].
    factor: float scalar; 0 = uniform grey, 1 = identity.

  Returns:
    uint8 [H, W, 3].
  """
  mean = tf.reduce_mean(tf.cast(_grayscale(image), tf.float64))
  degenerate = tf.floor(mean + 0.5)
  return _blend(degenerate, image, factor)


def brightness(image: tf.Tensor, factor: Any) -> tf.Tensor:
  """PIL `ImageEnhance.Brightness`: blend with black, i.e. v * factor.

  Args:
    image: uint8 [H, W, 3].
    factor: float scalar; 0 = black, 1 = identity.

  Returns:
    uint8 [H, W, 3].
  """
  return _blend(tf.zeros([1, 1, 1], tf.float32), image, factor)


def sharpness(image: tf.Tensor, factor: Any) -> tf.Tensor:
  """PIL `ImageEnhance.Sharpness`: blend with PIL's SMOOTH-filtered image.

  The degenerate image is the 3x3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13
  applied to interior pixels, rounded to uint8; PIL leaves the one-pixel
  border unfiltered, so the border is unchanged by any factor.

  Args:
    image: uint8 [H, W, 3].
    factor: float scalar; 0 = smoothed, 1 = identity, > 1 sharpened.

  Returns:
    uint8 [H, W, 3].
  """
  pixels = tf.cast(image, tf.float32)
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])  # [3, 3, 3, 1]
  smooth = tf.nn.depthwise_conv2d(pixels[None], kernel, [1, 1, 1, 1],
                                  padding='VALID')[0]  # [H-2, W-2, 3]
  smooth = tf.round(tf.clip_by_value(smooth, 0.0, 255.0))
  smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  shape = tf.shape(image)
  rows = tf.range(shape[0])[:, None, None]
  cols = tf.range(shape[1])[None, :, None]
  interior = ((rows > 0) & (rows < shape[0] - 1) & (cols > 0)
              & (cols < shape[1] - 1))
  degenerate = tf.where(interior, smooth, pixels)
  return _blend(degenerate, image, factor)


# --------------------------------------------------------------------------
# Geometric ops: PIL `Image.transform(size, AFFINE, (a, b, c, d, e, f))`,
# which samples input (a x + b y + c, d x + e y + f) for output pixel centre
# (x, y) (PIL puts pixel centres at i + 0.5), filling outside with `fill`.
# --------------------------------------------------------------------------


def affine(image: tf.Tensor, matrix: Sequence[Any],
           fill: Sequence[int] = IMAGENET_FILL,
           interpolation: str = 'nearest') -> tf.Tensor:
  """PIL's AFFINE transform with a per-channel constant fill.

  Args:
    image: uint8 [H, W, 3].
    matrix: (a, b, c, d, e, f), python or scalar tensors, PIL's
      output-to-input map in pixel units.
    fill: RGB fill (0..255) for samples outside the input.
    interpolation: 'nearest' (PIL NEAREST) or 'bilinear'.

  Returns:
    uint8 [H, W, 3].
  """
  if interpolation not in INTERPOLATIONS:
    raise ValueError(f'interpolation={interpolation!r}; choose one of '
                     f'{list(INTERPOLATIONS)}.')
  a, b, c, d, e, f = [tf.cast(m, tf.float32) for m in matrix]
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  # PIL: output centre (x + .5, y + .5) samples input point (u, v); the
  # output is `fill` unless 0 <= u < W and 0 <= v < H, else NEAREST takes
  # pixel (floor(u), floor(v)) and BILINEAR interpolates around
  # (u - .5, v - .5) with neighbours clamped to the edge. The epsilon
  # resolves exact ties (e.g. rotations by 90 degrees, integer shifts) the way
  # PIL does in exact arithmetic, instead of by float32 round-off.
  eps = 1e-3 if interpolation == 'nearest' else 0.0
  xs = tf.cast(tf.range(width), tf.float32)[None, :] + 0.5
  ys = tf.cast(tf.range(height), tf.float32)[:, None] + 0.5
  u = a * xs + b * ys + c + eps
  v = d * xs + e * ys + f + eps
  inside = ((u >= 0) & (u < tf.cast(width, tf.float32)) & (v >= 0)
            & (v < tf.cast(height, tf.float32)))[..., None]  # [H, W, 1]
  # TF maps integer output indices to input indices (centres at i): the same
  # map conjugated by the half-pixel shift. TF's nearest rounds the index,
  # which is floor of PIL's centre coordinate; its 'NEAREST' fill mode is the
  # edge clamping of PIL's bilinear filter.
  tf_c = c + 0.5 * (a + b) - 0.5 + eps
  tf_f = f + 0.5 * (d + e) - 0.5 + eps
  transform = tf.stack([a, b, tf_c, d, e, tf_f, 0.0, 0.0])[None]
  warped = tf.raw_ops.ImageProjectiveTransformV3(
      images=tf.cast(image, tf.float32)[None], transforms=transform,
      output_shape=shape[:2], fill_value=0.0,
      interpolation=interpolation.upper(), fill_mode='NEAREST')[0]
  # PIL's bilinear filter truncates to uint8 (nearest values are exact).
  out = tf.where(inside, tf.floor(warped + 1e-3), tf.constant(fill, tf.float32))
  out = tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)
  return tf.reshape(out, shape)


def rotate(image: tf.Tensor, degrees: Any, **kwargs: Any) -> tf.Tensor:
  """PIL `image.rotate(degrees)`: counter-clockwise about the image centre.

  Args:
    image: uint8 [H, W, 3].
    degrees: float scalar, counter-clockwise.
    **kwargs: `fill`, `interpolation` of `affine`.

  Returns:
    uint8 [H, W, 3], same size (corners filled).
  """
  # Float64 so that multiples of 90 degrees give exact 0 / +-1 entries, like
  # PIL which rounds the matrix to 15 decimals.
  angle = -tf.cast(degrees, tf.float64) * (math.pi / 180.0)
  cos = tf.round(tf.cos(angle) * 1e15) / 1e15
  sin = tf.round(tf.sin(angle) * 1e15) / 1e15
  shape = tf.cast(tf.shape(image), tf.float64)
  cx, cy = shape[1] / 2.0, shape[0] / 2.0
  # Input = R (output - centre) + centre, R = [[cos, sin], [-sin, cos]].
  c = cx - cos * cx - sin * cy
  f = cy + sin * cx - cos * cy
  return affine(image, (cos, sin, c, -sin, cos, f), **kwargs)


def shear_x(image: tf.Tensor, factor: Any, **kwargs: Any) -> tf.Tensor:
  """timm `shear_x`: input x = x + factor * y. uint8 [H, W, 3] -> same."""
  return affine(image, (1.0, factor, 0.0, 0.0, 1.0, 0.0), **kwargs)


def shear_y(image: tf.Tensor, factor: Any, **kwargs: Any) -> tf.Tensor:
  """timm `shear_y`: input y = factor * x + y. uint8 [H, W, 3] -> same."""
  return affine(image, (1.0, 0.0, 0.0, factor, 1.0, 0.0), **kwargs)


def translate_x(image: tf.Tensor, pixels: Any, **kwargs: Any) -> tf.Tensor:
  """timm `translate_x_abs`: input x = x + pixels, i.e. content moves LEFT.

  Args:
    image: uint8 [H, W, 3].
    pixels: float scalar, in pixels (timm's Rel variant: pct * width).
    **kwargs: `fill`, `interpolation` of `affine`.

  Returns:
    uint8 [H, W, 3].
  """
  return affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0), **kwargs)


def translate_y(image: tf.Tensor, pixels: Any, **kwargs: Any) -> tf.Tensor:
  """timm `translate_y_abs`: input y = y + pixels, i.e. content moves UP."""
  return affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels), **kwargs)


# --------------------------------------------------------------------------
# RandAugment.
# --------------------------------------------------------------------------


def _ops(image: tf.Tensor, level: tf.Tensor, sign: tf.Tensor,
         fill: Sequence[int], interpolation: str
         ) -> Dict[str, Callable[[], tf.Tensor]]:
  """Every RandAugment op as a thunk, its argument from timm's level_to_arg.

  Args:
    image: uint8 [H, W, 3].
    level: float32 scalar magnitude, already clipped to [0, magnitude_max];
      ops use level / 10 of their range like timm (so ranges extend past
      their nominal end only when magnitude_max > 10).
    sign: float32 scalar +-1, timm's `_randomly_negate` for signed ops.
    fill: RGB fill of the geometric ops.
    interpolation: of the geometric ops.

  Returns:
    name -> zero-argument function returning uint8 [H, W, 3].
  """
  frac = level / LEVEL_DENOM
  geo = dict(fill=fill, interpolation=interpolation)
  size = tf.cast(tf.shape(image), tf.float32)

  def enhance(fn):  # timm _enhance_level_to_arg: [0.1, 1.9].
    return lambda: fn(image, frac * 1.8 + 0.1)

  def enhance_increasing(fn):  # 1 +- 0.9 frac, kept >= 0.1.
    return lambda: fn(image, tf.maximum(0.1, 1.0 + sign * frac * 0.9))

  # int(x) of timm is floor here: every argument is >= 0 before it.
  posterize_bits = tf.cast(tf.floor(frac * 4.0), tf.int32)
  solarize_thresh = tf.cast(tf.floor(frac * 256.0), tf.int32)
  return {
      'AutoContrast': lambda: auto_contrast(image),
      'Equalize': lambda: equalize(image),
      'Invert': lambda: invert(image),
      'Rotate': lambda: rotate(image, sign * frac * 30.0, **geo),
      'Posterize': lambda: posterize(image, posterize_bits),
      'PosterizeIncreasing': lambda: posterize(image, 4 - posterize_bits),
      'Solarize': lambda: solarize(image, solarize_thresh),
      'SolarizeIncreasing': lambda: solarize(image, 256 - solarize_thresh),
      'SolarizeAdd': lambda: solarize_add(
          image, tf.cast(tf.floor(frac * 110.0), tf.int32)),
      'Color': enhance(color),
      'ColorIncreasing': enhance_increasing(color),
      'Contrast': enhance(contrast),
      'ContrastIncreasing': enhance_increasing(contrast),
      'Brightness': enhance(brightness),
      'BrightnessIncreasing': enhance_increasing(brightness),
      'Sharpness': enhance(sharpness),
      'SharpnessIncreasing': enhance_increasing(sharpness),
      'ShearX': lambda: shear_x(image, sign * frac * 0.3, **geo),
      'ShearY': lambda: shear_y(image, sign * frac * 0.3, **geo),
      # Relative translation: pct of the width (x) / height (y), as timm.
      'TranslateXRel': lambda: translate_x(
          image, sign * frac * TRANSLATE_PCT * size[1], **geo),
      'TranslateYRel': lambda: translate_y(
          image, sign * frac * TRANSLATE_PCT * size[0], **geo),
  }


# Plain Python control flow only: nothing for autograph to convert in a map.
@tf.autograph.experimental.do_not_convert
def apply_op(image: tf.Tensor, name: str, magnitude: Any, sign: Any = 1.0, *,
             fill: Sequence[int] = IMAGENET_FILL,
             interpolation: str = 'nearest') -> tf.Tensor:
  """Applies one named RandAugment op at a fixed magnitude (no randomness).

  Args:
    image: uint8 [H, W, 3].
    name: a name of RAND_TRANSFORMS or RAND_INCREASING_TRANSFORMS.
    magnitude: level in 0..10 (timm's 'm').
    sign: +1 or -1, the sign of signed ops (timm draws it at random).
    fill, interpolation: of the geometric ops.

  Returns:
    uint8 [H, W, 3].
  """
  ops = _ops(_as_uint8(image), tf.cast(magnitude, tf.float32),
             tf.cast(sign, tf.float32), fill, interpolation)
  if name not in ops:
    raise ValueError(f'Unknown RandAugment op {name!r}; known: {sorted(ops)}.')
  return ops[name]()


def _as_uint8(image: tf.Tensor) -> tf.Tensor:
  """uint8 stays; float 0..255 (e.g. after a resize) is rounded and clipped."""
  image = tf.convert_to_tensor(image)
  if image.dtype == tf.uint8:
    return image
  return tf.cast(tf.round(tf.clip_by_value(
      tf.cast(image, tf.float32), 0.0, 255.0)), tf.uint8)


# Plain Python control flow only: nothing for autograph to convert in a map.
@tf.autograph.experimental.do_not_convert
def rand_augment(image: tf.Tensor, seed: tf.Tensor, *, num_layers: int = 2,
                 magnitude: float = 9, magnitude_std: float = 0.5,
                 prob: float = 0.5, increasing: bool = True,
                 magnitude_max: float = LEVEL_DENOM,
                 fill: Sequence[int] = IMAGENET_FILL,
                 interpolation: str = 'nearest') -> tf.Tensor:
  """timm RandAugment (defaults: 'rand-m9-mstd0.5-inc1' of Swin / Shunted).

  For each of `num_layers` layers: draw an op uniformly (with replacement)
  from the 15 ops; apply it with probability `prob`; its magnitude is
  N(magnitude, magnitude_std) clipped to [0, magnitude_max] (uniform in
  [0, magnitude] if magnitude_std is inf), and signed ops get a random sign.

  Args:
    image: uint8 [H, W, 3] (float 0..255 is rounded to uint8 first).
    seed: int [2] stateless seed.
    num_layers: ops per image ('n').
    magnitude: mean level, of 10 ('m').
    magnitude_std: std of the per-op level noise ('mstd').
    prob: probability of applying each drawn op (timm: 0.5).
    increasing: use RAND_INCREASING_TRANSFORMS ('inc1').
    magnitude_max: upper clip of the level ('mmax'; timm default 10).
    fill: RGB fill of the geometric ops (timm's img_mean).
    interpolation: of the geometric ops, 'nearest' or 'bilinear'.

  Returns:
    uint8 [H, W, 3], same shape as `image`.
  """
  names = RAND_INCREASING_TRANSFORMS if increasing else RAND_TRANSFORMS
  image = _as_uint8(image)
  static_shape = image.shape
  layer_seeds = tf.random.experimental.stateless_split(
      tf.cast(seed, tf.int64), num=num_layers)
  for i in range(num_layers):
    choice_seed, apply_seed, level_seed, sign_seed = tf.unstack(
        tf.random.experimental.stateless_split(layer_seeds[i], num=4))
    index = tf.random.stateless_uniform([], choice_seed, 0, len(names),
                                        dtype=tf.int32)
    apply = tf.random.stateless_uniform([], apply_seed) < prob
    if math.isinf(magnitude_std):
      level = tf.random.stateless_uniform([], level_seed, 0.0, magnitude)
    elif magnitude_std > 0:
      level = magnitude + magnitude_std * tf.random.stateless_normal(
          [], level_seed)
    else:
      level = tf.constant(magnitude, tf.float32)
    level = tf.clip_by_value(level, 0.0, magnitude_max)
    sign = tf.where(tf.random.stateless_uniform([], sign_seed) < 0.5,
                    1.0, -1.0)

    def augment(image=image, index=index, level=level, sign=sign):
      ops = _ops(image, level, sign, fill, interpolation)
      return tf.switch_case(index, [ops[name] for name in names])

    image = tf.cond(apply, augment, lambda image=image: image)
    image = tf.ensure_shape(image, static_shape)
  return image


def parse_rand_augment(config_str: str) -> Dict[str, Any]:
  """timm's RandAugment config string -> kwargs of `rand_augment`.

  'rand-m9-mstd0.5-inc1' -> dict(magnitude=9, magnitude_std=0.5,
  increasing=True). Sections: m (magnitude), n (num_layers), mstd (> 100
  means uniform sampling: inf), mmax (magnitude_max), inc (0/1), p (prob).
  Missing sections keep timm's defaults: m10, n2, mstd0, inc0, p0.5.

  Raises:
    ValueError: not a 'rand-...' string, or an unsupported section ('w'
      weighted op choice is not implemented).
  """
  parts = config_str.split('-')
  if parts[0] != 'rand':
    raise ValueError(f'{config_str!r} is not a RandAugment config '
                     f"(must start with 'rand').")
  # timm's defaults for sections the string leaves out.
  kwargs: Dict[str, Any] = dict(num_layers=2, magnitude=LEVEL_DENOM,
                                magnitude_std=0.0, prob=0.5,
                                increasing=False)
  for part in parts[1:]:
    split = re.split(r'(\d.*)', part)
    if len(split) < 2:
      continue
    key, value = split[:2]
    if key == 'mstd':
      std = float(value)
      kwargs['magnitude_std'] = float('inf') if std > 100 else std
    elif key == 'mmax':
      kwargs['magnitude_max'] = float(value)
    elif key == 'inc':
      kwargs['increasing'] = bool(int(value))
    elif key == 'm':
      kwargs['magnitude'] = float(int(value))
    elif key == 'n':
      kwargs['num_layers'] = int(value)
    elif key == 'p':
      kwargs['prob'] = float(value)
    else:
      raise ValueError(f'Unsupported RandAugment section {part!r} in '
                       f'{config_str!r}.')
  return kwargs


# --------------------------------------------------------------------------
# Color jitter.
# --------------------------------------------------------------------------

# torchvision ColorJitter's op indices in its random order (hue unused: timm's
# scalar color_jitter is (b, c, s) with no hue).
JITTER_OPS = ('brightness', 'contrast', 'saturation')


def jitter_colors(image: tf.Tensor, factors: Any, order: Any) -> tf.Tensor:
  """Brightness, contrast, saturation by `factors`, applied in `order`.

  The deterministic half of `color_jitter`: torchvision's ColorJitter on a PIL
  image calls ImageEnhance.Brightness / Contrast / Color, i.e. `brightness`,
  `contrast` and `color` of this file, one after the other.

  Args:
    image: uint8 [H, W, 3].
    factors: float [3], the enhance factors of JITTER_OPS (1 = identity).
    order: int [3], a permutation of 0..2: order[k] is the k-th op applied.

  Returns:
    uint8 [H, W, 3].
  """
  image = _as_uint8(image)
  factors = tf.cast(factors, tf.float32)
  order = tf.cast(order, tf.int32)
  ops = (brightness, contrast, color)
  for k in range(len(ops)):
    branches = [lambda fn=fn, i=i, image=image: fn(image, factors[i])
                for i, fn in enumerate(ops)]
    image = tf.ensure_shape(tf.switch_case(order[k], branches), image.shape)
  return image


# Plain Python control flow only: nothing for autograph to convert in a map.
@tf.autograph.experimental.do_not_convert
def color_jitter(image: tf.Tensor, seed: tf.Tensor,
                 strength: float = 0.4) -> tf.Tensor:
  """torchvision `ColorJitter(strength, strength, strength)` (timm's scalar).

  Draws brightness, contrast and saturation factors uniform in
  [max(0, 1 - strength), 1 + strength] and a uniformly random order, then
  applies `jitter_colors`. timm's `transforms_imagenet_train` adds it only when
  no auto_augment / RandAugment is configured (see input_pipeline).

  Args:
    image: uint8 [H, W, 3] (float 0..255 is rounded to uint8 first).
    seed: int [2] stateless seed.
    strength: the jitter strength, >= 0; 0 returns the image.

  Returns:
    uint8 [H, W, 3].
  """
  image = _as_uint8(image)
  if strength <= 0:
    return image
  order_seed, factor_seed = tf.unstack(tf.random.experimental.stateless_split(
      tf.cast(seed, tf.int64), num=2))
  factors = tf.random.stateless_uniform(
      [len(JITTER_OPS)], factor_seed, max(0.0, 1.0 - strength), 1.0 + strength)
  order = tf.argsort(tf.random.stateless_uniform([len(JITTER_OPS)], order_seed))
  return jitter_colors(image, factors, order)


# --------------------------------------------------------------------------
# Random erasing.
# --------------------------------------------------------------------------

ERASE_MODES = ('pixel', 'rand', 'const')


# Plain Python control flow only: nothing for autograph to convert in a map.
@tf.autograph.experimental.do_not_convert
def random_erasing(image: tf.Tensor, seed: tf.Tensor, prob: float = 0.25, *,
                   min_area: float = 0.02, max_area: float = 1 / 3,
                   min_aspect: float = 0.3,
                   max_aspect: Optional[float] = None, mode: str = 'pixel',
                   max_count: int = 1, max_attempts: int = 10) -> tf.Tensor:
  """timm RandomErasing on one normalised image.

  With probability `prob`, erases count (1, or uniform in 1..max_count)
  rectangles. Per rectangle up to `max_attempts` tries draw a target area
  uniform in [min_area, max_area] * H * W / count and an aspect h / w
  log-uniform in [min_aspect, max_aspect]; h = round(sqrt(area * aspect)),
  w = round(sqrt(area / aspect)); the first try with h < H and w < W is
  placed uniformly (top in 0..H-h, left in 0..W-w); if none fits, that
  rectangle is skipped.

  Args:
    image: float [H, W, C], normalised (after `input_pipeline.normalize`).
    seed: int [2] stateless seed.
    prob: probability of erasing at all.
    min_area, max_area: fraction of the image area of the rectangle.
    min_aspect, max_aspect: bounds of h / w (max default 1 / min_aspect).
    mode: fill; 'pixel' N(0, 1) per pixel (Swin / Shunted), 'rand' N(0, 1)
      per channel, 'const' zeros.
    max_count: maximum rectangles.
    max_attempts: tries per rectangle (timm: 10).

  Returns:
    float [H, W, C], same dtype as `image`.
  """
  if mode not in ERASE_MODES:
    raise ValueError(f'mode={mode!r}; choose one of {list(ERASE_MODES)}.')
  max_aspect = max_aspect or 1.0 / min_aspect
  log_aspect = (math.log(min_aspect), math.log(max_aspect))
  image = tf.convert_to_tensor(image)
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  area = tf.cast(height * width, tf.float32)
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64),
                                                 num=2 + max_count)
  erase = tf.random.stateless_uniform([], seeds[0]) < prob
  count = tf.random.stateless_uniform([], seeds[1], 1, max_count + 1,
                                      dtype=tf.int32)
  rows = tf.range(height)[:, None, None]
  cols = tf.range(width)[None, :, None]
  for k in range(max_count):
    area_seed, aspect_seed, top_seed, left_seed, noise_seed = tf.unstack(
        tf.random.experimental.stateless_split(seeds[2 + k], num=5))
    # All attempts at once; the first that fits wins (timm breaks there).
    target = tf.random.stateless_uniform(
        [max_attempts], area_seed, min_area, max_area) * area / tf.cast(
            count, tf.float32)
    aspect = tf.exp(tf.random.stateless_uniform(
        [max_attempts], aspect_seed, log_aspect[0], log_aspect[1]))
    # tf.round is half-to-even like Python's round().
    h = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
    w = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
    fits = (h < height) & (w < width)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    h, w = h[first], w[first]
    enabled = erase & (k < count) & tf.reduce_any(fits)
    # Bounds valid even when nothing fits (then the box is disabled anyway).
    top = tf.random.stateless_uniform(
        [], top_seed, 0, tf.maximum(height - h, 0) + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform(
        [], left_seed, 0, tf.maximum(width - w, 0) + 1, dtype=tf.int32)
    box = ((rows >= top) & (rows < top + h) & (cols >= left)
           & (cols < left + w) & enabled)  # [H, W, 1]
    if mode == 'pixel':
      noise = tf.random.stateless_normal(shape, noise_seed, dtype=image.dtype)
    elif mode == 'rand':
      noise = tf.random.stateless_normal([1, 1, shape[2]], noise_seed,
                                         dtype=image.dtype)
    else:
      noise = tf.zeros([1, 1, 1], image.dtype)
    image = tf.where(box, noise, image)
  return image
