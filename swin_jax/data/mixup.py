"""Mixup / CutMix of a batch, in JAX, inside the jitted train step.

timm's `Mixup(mode='batch')` as Swin and Shunted configure it (mixup_alpha
0.8, cutmix_alpha 1.0, switch_prob 0.5, prob 1.0, label_smoothing 0.1):
one lam for the whole batch, example i mixed with example B - 1 - i (the batch
flipped), CutMix's box square-ish with side sqrt(1 - lam) of the image's and
lam corrected to the area the clipped box really covers.

Everything is static-shape and jittable: the choices are drawn from a
`jax.random` key and applied with `jnp.where`, the box as an iota mask.

  mixup_cutmix(rng, images, labels, *, num_classes, ...) -> (images, targets)
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp


def smooth_targets(labels: jax.Array, num_classes: int,
                   smoothing: float = 0.0) -> jax.Array:
  """timm's smoothed one-hot targets.

  Args:
    labels: int [B] class ids, or float [B, K] soft targets (rows sum to 1).
    num_classes: K.
    smoothing: timm label_smoothing; off = smoothing / K,
      on = 1 - smoothing + off (so rows still sum to 1).

  Returns:
    float32 [B, K].
  """
  off = smoothing / num_classes
  if jnp.issubdtype(labels.dtype, jnp.integer):
    on = 1.0 - smoothing + off
    return jnp.where(jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_),
                     on, off).astype(jnp.float32)
  if labels.ndim != 2 or labels.shape[-1] != num_classes:
    raise ValueError(f'Soft labels must be [B, {num_classes}], got '
                     f'{labels.shape}.')
  # The same affine map as the hard case: one-hot rows map to on / off.
  return labels.astype(jnp.float32) * (1.0 - smoothing) + off


def mixup_target(labels: jax.Array, num_classes: int, lam: jax.Array,
                 smoothing: float = 0.0) -> jax.Array:
  """timm `mixup_target`: lam * smooth(y) + (1 - lam) * smooth(y.flip(0)).

  Args:
    labels: int [B] or float [B, K].
    num_classes: K.
    lam: float scalar, weight of the un-flipped batch.
    smoothing: label smoothing.

  Returns:
    float32 [B, K], rows summing to 1.
  """
  y = smooth_targets(labels, num_classes, smoothing)
  return lam * y + (1.0 - lam) * jnp.flip(y, axis=0)


def rand_bbox(rng: jax.Array, height: int, width: int,
              lam: jax.Array) -> Tuple[jax.Array, ...]:
  """timm `rand_bbox` (margin 0): a box of about (1 - lam) of the area.

  The box has nominal sides int(H * sqrt(1 - lam)), int(W * sqrt(1 - lam)),
  centred on a uniform pixel (cy, cx) and clipped to the image: rows
  cy - cut_h // 2 .. cy + (cut_h + 1) // 2 (timm >= 1.0.30), so an odd side
  keeps its nominal length (timm <= 1.0.29 floored both halves: one pixel
  less).

  Args:
    rng: PRNG key.
    height, width: static image size H, W in pixels.
    lam: float scalar in [0, 1].

  Returns:
    (y_lo, y_hi, x_lo, x_hi): int32 scalars, rows y_lo..y_hi - 1 and
    columns x_lo..x_hi - 1 are inside.
  """
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  ky, kx = jax.random.split(rng)
  cy = jax.random.randint(ky, (), 0, height)
  cx = jax.random.randint(kx, (), 0, width)
  y_lo = jnp.clip(cy - cut_h // 2, 0, height)
  y_hi = jnp.clip(cy + (cut_h + 1) // 2, 0, height)
  x_lo = jnp.clip(cx - cut_w // 2, 0, width)
  x_hi = jnp.clip(cx + (cut_w + 1) // 2, 0, width)
  return y_lo, y_hi, x_lo, x_hi


def box_mask(box: Tuple[jax.Array, ...], height: int,
             width: int) -> jax.Array:
  """(y_lo, y_hi, x_lo, x_hi) -> bool [H, W], True inside the box."""
  y_lo, y_hi, x_lo, x_hi = box
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  return (rows >= y_lo) & (rows < y_hi) & (cols >= x_lo) & (cols < x_hi)


def mix_params(rng: jax.Array, *, mixup_alpha: float = 0.8,
               cutmix_alpha: float = 1.0, switch_prob: float = 0.5,
               prob: float = 1.0) -> Tuple[jax.Array, jax.Array]:
  """timm `Mixup._params_per_batch`: whether to mix, how, and lam.

  Args:
    rng: PRNG key.
    mixup_alpha, cutmix_alpha: Beta(alpha, alpha) parameters; <= 0 disables.
    switch_prob: probability of CutMix when both are enabled.
    prob: probability of mixing the batch at all.

  Returns:
    lam: float32 scalar, 1 when not mixing.
    use_cutmix: bool scalar.
  """
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    raise ValueError('One of mixup_alpha, cutmix_alpha must be > 0.')
  k_apply, k_switch, k_lam = jax.random.split(rng, 3)
  apply = jax.random.uniform(k_apply) < prob
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(k_switch) < switch_prob
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  # One Beta(alpha, alpha) draw with the chosen alpha (the same law as timm's
  # two samplers, at half the compile time): Beta = G1 / (G1 + G2), computed
  # from log-gammas as sigmoid(log G1 - log G2) so tiny gammas cannot give 0/0.
  alpha = jnp.where(use_cutmix, cutmix_alpha, mixup_alpha).astype(jnp.float32)
  log_gammas = jax.random.loggamma(k_lam, jnp.stack([alpha, alpha]))
  lam = jax.nn.sigmoid(log_gammas[0] - log_gammas[1])
  lam = jnp.where(apply, lam, 1.0).astype(jnp.float32)
  return lam, use_cutmix & apply


def mixup_cutmix(rng: jax.Array, images: jax.Array, labels: jax.Array, *,
                 num_classes: int, mixup_alpha: float = 0.8,
                 cutmix_alpha: float = 1.0, switch_prob: float = 0.5,
                 prob: float = 1.0, label_smoothing: float = 0.1,
                 correct_lam: bool = True) -> Tuple[jax.Array, jax.Array]:
  """timm `Mixup(mode='batch')` of a batch with its flip.

  Mixup: images = lam * x + (1 - lam) * x.flip(0).
  CutMix: images = x outside a `rand_bbox` box, x.flip(0) inside; lam is
  then 1 - box area / image area (if correct_lam; timm's default).
  Targets: lam * smooth(y) + (1 - lam) * smooth(y.flip(0)).

  Args:
    rng: PRNG key (fold in the step so every batch mixes differently).
    images: float [B, H, W, C] (integer images are mixed in float32 and
      rounded back, like timm's uint8 collate). B must be even, as timm asserts.
    labels: int [B] class ids, or float [B, K] soft targets.
    num_classes: K.
    mixup_alpha, cutmix_alpha, switch_prob, prob: see `mix_params`.
    label_smoothing: timm smoothing of the targets (also when not mixing).
    correct_lam: lam from the clipped CutMix box's real area.

  Returns:
    images: [B, H, W, C], dtype of `images`.
    targets: float32 [B, K], rows summing to 1.
  """
  batch, height, width = images.shape[:3]
  if batch % 2:
    raise ValueError(f'Mixup needs an even batch size, got {batch}.')
  k_params, k_box = jax.random.split(rng)
  lam, use_cutmix = mix_params(
      k_params, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
      switch_prob=switch_prob, prob=prob)
  x = images.astype(jnp.float32) if jnp.issubdtype(
      images.dtype, jnp.integer) else images
  flipped = jnp.flip(x, axis=0)

  box = rand_bbox(k_box, height, width, lam)
  y_lo, y_hi, x_lo, x_hi = box
  box_area = (y_hi - y_lo) * (x_hi - x_lo)
  lam_cut = (1.0 - box_area / (height * width)).astype(jnp.float32) if (
      correct_lam) else lam
  cut = jnp.where(box_mask(box, height, width)[None, :, :, None], flipped, x)

  lam_mix = lam.astype(x.dtype)
  mixed = lam_mix * x + (1 - lam_mix) * flipped
  # lam == 1 (not mixing) returns the batch untouched, as timm does.
  mixed = jnp.where(lam == 1.0, x, jnp.where(use_cutmix, cut, mixed))
  lam = jnp.where(use_cutmix, lam_cut, lam)
  if jnp.issubdtype(images.dtype, jnp.integer):
    info = jnp.iinfo(images.dtype)
    mixed = jnp.clip(jnp.round(mixed), info.min, info.max)
  targets = mixup_target(labels, num_classes, lam, label_smoothing)
  return mixed.astype(images.dtype), targets
