"""Drawing detections on an image: box outlines and "name 0.93" tags, for eyeballing.

Takes what ``swin_jax.evaluation.coco.postprocess`` returns for one image (absolute
``(x0, y0, x1, y1)`` pixels of the original image), so drawn boxes line up with the
pixels the metric was computed on.
"""
from __future__ import annotations

import colorsys
import math
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_GOLDEN = 0.618033988749895  # hue step: consecutive class ids get far-apart hues


def class_color(label: int) -> tuple:
  """Deterministic saturated RGB colour of a class index (same on every run)."""
  hue = (int(label) * _GOLDEN) % 1.0
  r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
  return int(r * 255), int(g * 255), int(b * 255)


def upscale_factor(height: int, width: int, min_side: int) -> int:
  """Integer factor (>= 1) that brings the shorter side to >= min_side.

  Integer so nearest-neighbour upscaling repeats every pixel equally (a 28x28 digit
  stays crisp, no uneven stripes).
  """
  short = min(height, width)
  if short <= 0 or short >= min_side:
    return 1
  return int(math.ceil(min_side / short))


def draw_detections(image, boxes_xyxy, labels, scores=None,
                    class_names: Optional[Sequence[str]] = None,
                    min_side: int = 320) -> Image.Image:
  """Draws boxes and label tags on a copy of `image`.

  Args:
    image: uint8 [H, W, 3] (or [H, W] / [H, W, 1] grey) pixels.
    boxes_xyxy: [N, 4] (x0, y0, x1, y1) in pixels of `image`.
    labels: [N] int class indices (index into class_names; colour key).
    scores: [N] floats in [0, 1] shown with two decimals, or None (names only).
    class_names: names by class index; None or a missing index shows the number.
    min_side: the image is upscaled (nearest, integer factor) until its shorter side is
      >= min_side pixels, boxes scaled alike, so tags stay legible on small inputs.

  Returns:
    RGB PIL.Image of size (W * s, H * s) for the integer factor s (see
    `upscale_factor`). With no boxes it is just the upscaled image.
  """
  img = np.asarray(image)
  if img.ndim == 3 and img.shape[-1] == 1:
    img = img[..., 0]
  if img.dtype != np.uint8:
    raise ValueError(f'draw_detections: image must be uint8, got {img.dtype}.')
  pil = Image.fromarray(img).convert('RGB')
  h, w = img.shape[:2]
  s = upscale_factor(h, w, min_side)
  if s > 1:
    pil = pil.resize((w * s, h * s), Image.NEAREST)

  boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4) * s
  labels = np.asarray(labels).reshape(-1)
  if len(labels) != len(boxes):
    raise ValueError(f'draw_detections: {len(boxes)} boxes but {len(labels)} labels.')
  if scores is not None:
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(scores) != len(boxes):
      raise ValueError(f'draw_detections: {len(boxes)} boxes but {len(scores)} scores.')

  draw = ImageDraw.Draw(pil)
  font = ImageFont.load_default()
  line = max(2, round(min(pil.size) / 200))  # ~2 px at 320, thicker on big images
  ww, hh = pil.size
  for k in range(len(boxes)):
    if not np.all(np.isfinite(boxes[k])):
      continue  # a diverged model's nan box: skip rather than crash the drawing
    x0, y0, x1, y1 = boxes[k]
    x0, x1 = sorted((min(max(x0, 0), ww - 1), min(max(x1, 0), ww - 1)))
    y0, y1 = sorted((min(max(y0, 0), hh - 1), min(max(y1, 0), hh - 1)))
    lab = int(labels[k])
    color = class_color(lab)
    draw.rectangle([x0, y0, x1, y1], outline=color, width=line)

    name = (class_names[lab] if class_names is not None and 0 <= lab < len(class_names)
            else str(lab))
    text = name if scores is None else f'{name} {scores[k]:.2f}'
    tl, tt, tr, tb = draw.textbbox((0, 0), text, font=font)
    tw, th = tr - tl + 4, tb - tt + 2
    # Tag above the box when there is room, else just inside its top edge.
    ty = y0 - th if y0 - th >= 0 else y0
    tx = min(x0, max(ww - tw, 0))
    draw.rectangle([tx, ty, tx + tw - 1, ty + th - 1], fill=color)
    # Black on light tags, white on dark ones (ITU-R BT.601 luma).
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    draw.text((tx + 2 - tl, ty + 1 - tt), text, font=font,
              fill=(0, 0, 0) if luma > 128 else (255, 255, 255))
  return pil


def save_detections(path: str, image, boxes_xyxy, labels, scores=None,
                    class_names: Optional[Sequence[str]] = None,
                    min_side: int = 320) -> Image.Image:
  """`draw_detections` written to `path` as PNG (lossless: colours stay exact).

  Returns the drawn PIL.Image.
  """
  pil = draw_detections(image, boxes_xyxy, labels, scores, class_names, min_side)
  pil.save(path, format='PNG')
  return pil
