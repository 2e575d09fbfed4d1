"""Drawing detections for a person to read: predictions, ground truth, labels that do not
overlap, and a grid of several images per evaluation.

Takes what ``swin_jax.evaluation.coco.postprocess`` returns for one image (absolute
``(x0, y0, x1, y1)`` pixels of the original image), so drawn boxes line up with the
pixels the metric was computed on.

Styles (one picture says which box is which without a legend):
  prediction: solid outline in its class colour, drawn inward from the box edge; a tag
    filled with that colour reading "name 0.93".
  ground truth: dashed outline alternating white and black (no class colour is grey, and
    one of the two shows on any background), drawn just *outside* the box edge, so a
    perfect prediction and its ground truth stay visible side by side; a black tag with
    white text reading "gt name".

Which predictions are drawn (``select_detections``): score >= a threshold, best first, at
most a cap. DETR has no NMS: its set loss is what suppresses duplicates, so the picture
shows what the metric sees rather than an NMS-cleaned version; the threshold hides the
low-score near-duplicates of a trained model (DETR's demo notebook keeps > 0.7) and the cap
keeps an untrained model's picture readable.

Label placement: each tag (its text extent measured with the font's metrics) goes to the
first of several candidate positions around its box (above, inside the top, below,
inside the bottom; left- then right-aligned; then sliding along the top and bottom edges)
that lies inside the canvas and overlaps no tag placed before; ground truth first (few,
the reference), then predictions by descending score. A tag with no free position is left
out (its box is still drawn), never drawn over another.
"""
from __future__ import annotations

import colorsys
import dataclasses
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_GOLDEN = 0.618033988749895  # hue step: consecutive class ids get far-apart hues
GT_DASH_COLORS = ((255, 255, 255), (0, 0, 0))  # ground-truth dashes alternate these
GT_TAG_FILL, GT_TAG_TEXT = (0, 0, 0), (255, 255, 255)
PANEL_BACKGROUND = (96, 96, 96)  # the margin around an image (grey: no class colour)
GRID_BACKGROUND = (24, 24, 24)
GRID_TEXT = (235, 235, 235)

Rect = Tuple[int, int, int, int]  # (x0, y0, x1, y1), inclusive pixel coordinates


@dataclasses.dataclass
class Tag:
  """One label tag: its text, kind ('gt' | 'pred'), and where it went (None: no room)."""
  text: str
  kind: str
  rect: Optional[Rect]


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


def font(size: int):
  """The bundled scalable font at `size` px (Pillow >= 10.1 with FreeType), else PIL's
  fixed 11 px bitmap font."""
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, ImportError, OSError):
    return ImageFont.load_default()


def font_size(canvas_short_side: int) -> int:
  """Text height for a canvas: ~1/22 of its shorter side, 12..20 px (legible beside
  320 px panels, not shouting on large COCO images)."""
  return int(min(20, max(12, round(canvas_short_side / 22))))


def select_detections(scores, threshold: float, max_detections: Optional[int]) -> np.ndarray:
  """Indices of the detections to draw: finite score >= threshold, highest score first
  (ties keep their order), at most max_detections (None: all). int [n]."""
  scores = np.asarray(scores, np.float64).reshape(-1)
  idx = np.flatnonzero(np.isfinite(scores) & (scores >= threshold))
  idx = idx[np.argsort(-scores[idx], kind='stable')]
  if max_detections is not None:
    idx = idx[:max(int(max_detections), 0)]
  return idx


def label_name(label: int, class_names: Optional[Sequence[str]]) -> str:
  """class_names[label], or the number when there are no names or it is out of range."""
  label = int(label)
  if class_names is not None and 0 <= label < len(class_names) and class_names[label]:
    return str(class_names[label])
  return str(label)


def _text_height(fnt) -> int:
  """Height (px) of a line of text in `fnt`, ascenders to descenders."""
  l, t, r, b = ImageDraw.Draw(Image.new('RGB', (1, 1))).textbbox((0, 0), 'Ag|0.9', font=fnt)
  del l, r
  return int(b - t)


def _disjoint(a: Rect, b: Rect) -> bool:
  return a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]


def place_label(outer: Rect, size: Tuple[int, int], taken: Sequence[Rect],
                canvas: Tuple[int, int]) -> Optional[Rect]:
  """Where a tag of `size` (w, h) goes beside the drawn box `outer`: the first candidate
  that lies inside `canvas` (w, h) and overlaps none of `taken`; None when none does."""
  x0, y0, x1, y1 = outer
  tw, th = size
  cw, ch = canvas
  left, right = x0, x1 - tw + 1
  above, below = y0 - th, y1 + 1
  top_in, bottom_in = y0, y1 - th + 1
  cands = [(left, above), (left, top_in), (left, below), (left, bottom_in),
           (right, above), (right, top_in), (right, below), (right, bottom_in),
           (x0 - tw, y0), (x1 + 1, y0)]
  step = max(4, tw // 4)  # slide along the top and bottom edges, outside then inside
  for y in (above, below, top_in, bottom_in):
    cands += [(x, y) for x in range(x0 - tw + 1, x1 + 1, step)]
  for x, y in cands:
    r = (int(x), int(y), int(x) + tw - 1, int(y) + th - 1)
    if r[0] < 0 or r[1] < 0 or r[2] > cw - 1 or r[3] > ch - 1:
      continue
    if all(_disjoint(r, t) for t in taken):
      return r
  return None


def _dashed_frame(draw: ImageDraw.ImageDraw, box: Rect, width: int, dash: int):
  """A frame `width` px thick just outside `box`, dashes of `dash` px alternating
  GT_DASH_COLORS, each band's phase starting at its first pixel."""
  x0, y0, x1, y1 = box
  ox0, oy0, ox1, oy1 = x0 - width, y0 - width, x1 + width, y1 + width
  # Four bands: top and bottom run along x (and own the corners), left and right along y.
  bands = [('x', ox0, ox1, oy0, y0 - 1), ('x', ox0, ox1, y1 + 1, oy1),
           ('y', y0, y1, ox0, x0 - 1), ('y', y0, y1, x1 + 1, ox1)]
  for axis, a0, a1, b0, b1 in bands:
    for start in range(a0, a1 + 1, dash):
      end = min(start + dash - 1, a1)
      color = GT_DASH_COLORS[((start - a0) // dash) % 2]
      if axis == 'x':
        draw.rectangle([start, b0, end, b1], fill=color)
      else:
        draw.rectangle([b0, start, b1, end], fill=color)


def _clamp_box(box, lo: Tuple[int, int], hi: Tuple[int, int]) -> Optional[Rect]:
  """Rounds and clamps a float (x0, y0, x1, y1) to [lo, hi] pixel corners; None if nan."""
  if not np.all(np.isfinite(box)):
    return None  # a diverged model's nan box: skip rather than crash the drawing
  x0, x1 = sorted(min(max(v, lo[0]), hi[0]) for v in (box[0], box[2]))
  y0, y1 = sorted(min(max(v, lo[1]), hi[1]) for v in (box[1], box[3]))
  return int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1))


def _as_rgb(image) -> np.ndarray:
  img = np.asarray(image)
  if img.ndim == 3 and img.shape[-1] == 1:
    img = img[..., 0]
  if img.dtype != np.uint8:
    raise ValueError(f'draw_detections: image must be uint8, got {img.dtype}.')
  if img.ndim == 2:
    img = np.repeat(img[..., None], 3, -1)
  if img.ndim != 3 or img.shape[-1] != 3:
    raise ValueError(f'draw_detections: image must be [H, W, 3] or [H, W], got {img.shape}.')
  return img


def render(image, boxes_xyxy, labels, scores=None,
           class_names: Optional[Sequence[str]] = None, min_side: int = 320,
           gt_boxes=None, gt_labels=None, margin: Optional[int] = 0
           ) -> Tuple[Image.Image, List[Tag], int]:
  """`draw_detections` that also returns its tags and the upscale factor.

  Returns:
    (RGB PIL.Image, tags: ground truth first then predictions in the order given, scale s).
  """
  img = _as_rgb(image)
  h, w = img.shape[:2]
  s = upscale_factor(h, w, min_side)
  boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
  labels = np.asarray(labels).reshape(-1)
  if len(labels) != len(boxes):
    raise ValueError(f'draw_detections: {len(boxes)} boxes but {len(labels)} labels.')
  if scores is not None:
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(scores) != len(boxes):
      raise ValueError(f'draw_detections: {len(boxes)} boxes but {len(scores)} scores.')
  gt = np.zeros((0, 4)) if gt_boxes is None else np.asarray(gt_boxes, np.float64).reshape(-1, 4)
  gt_lab = np.zeros((0,), int) if gt_labels is None else np.asarray(gt_labels).reshape(-1)
  if len(gt_lab) != len(gt):
    raise ValueError(f'draw_detections: {len(gt)} gt_boxes but {len(gt_lab)} gt_labels.')

  fnt = font(font_size(min(h, w) * s))
  line = max(2, round(min(h, w) * s / 160))  # 2 px at 320, thicker on big images
  if margin is None:  # room for a tag and the ground-truth frame on each side
    margin = _text_height(fnt) + 4 + line
  m = int(margin)
  pil = Image.fromarray(img).convert('RGB')
  if s > 1:
    pil = pil.resize((w * s, h * s), Image.NEAREST)
  if m > 0:
    canvas = Image.new('RGB', (w * s + 2 * m, h * s + 2 * m), PANEL_BACKGROUND)
    canvas.paste(pil, (m, m))
    pil = canvas
  draw = ImageDraw.Draw(pil)
  lo, hi = (m, m), (m + w * s - 1, m + h * s - 1)  # the image's pixels on the canvas

  def tag_size(text):
    l, t, r, b = draw.textbbox((0, 0), text, font=fnt)
    return (r - l + 6, b - t + 4), (l, t)

  items = []  # (kind, outer rect of the drawn outline, text, tag fill, text colour)
  for k in range(len(gt)):
    r = _clamp_box(gt[k] * s + m, lo, hi)
    if r is None:
      continue
    _dashed_frame(draw, r, line, dash=3 * line)
    outer = (r[0] - line, r[1] - line, r[2] + line, r[3] + line)
    items.append(('gt', outer, f'gt {label_name(gt_lab[k], class_names)}', GT_TAG_FILL,
                  GT_TAG_TEXT))
  for k in range(len(boxes)):
    r = _clamp_box(boxes[k] * s + m, lo, hi)
    if r is None:
      continue
    color = class_color(int(labels[k]))
    draw.rectangle(list(r), outline=color, width=line)
    name = label_name(labels[k], class_names)
    text = name if scores is None else f'{name} {scores[k]:.2f}'
    # Black on light tags, white on dark ones (ITU-R BT.601 luma).
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    items.append(('pred', r, text, color, (0, 0, 0) if luma > 128 else (255, 255, 255)))

  tags, taken = [], []
  for kind, outer, text, fill, ink in items:
    (tw, th), (l, t) = tag_size(text)
    rect = place_label(outer, (tw, th), taken, pil.size)
    tags.append(Tag(text, kind, rect))
    if rect is None:
      continue
    taken.append(rect)
    draw.rectangle(list(rect), fill=fill)
    draw.text((rect[0] + 3 - l, rect[1] + 2 - t), text, font=fnt, fill=ink)
  return pil, tags, s


def draw_detections(image, boxes_xyxy, labels, scores=None,
                    class_names: Optional[Sequence[str]] = None,
                    min_side: int = 320, gt_boxes=None, gt_labels=None,
                    margin: Optional[int] = 0) -> Image.Image:
  """Draws predicted (and ground-truth) boxes with non-overlapping tags on a copy of `image`.

  Args:
    image: uint8 [H, W, 3] (or [H, W] / [H, W, 1] grey) pixels.
    boxes_xyxy: [N, 4] predicted (x0, y0, x1, y1) in pixels of `image`.
    labels: [N] int class indices (index into class_names; colour key).
    scores: [N] floats in [0, 1] shown with two decimals, or None (names only).
    class_names: names by class index; None or a missing index shows the number.
    min_side: the image is upscaled (nearest, integer factor) until its shorter side is
      >= min_side pixels, boxes scaled alike, so tags stay legible on small inputs.
    gt_boxes, gt_labels: [M, 4] / [M] ground truth in the same pixels, or None.
    margin: grey border (px) around the upscaled image where tags of boxes at the image
      edge can go; None: one tag height.

  Returns:
    RGB PIL.Image of size (W * s + 2 * margin, H * s + 2 * margin) for the integer factor
    s (see `upscale_factor`). With no boxes and margin 0 it is just the upscaled image.
  """
  return render(image, boxes_xyxy, labels, scores, class_names, min_side, gt_boxes,
                gt_labels, margin)[0]


def save_detections(path, image, boxes_xyxy, labels, scores=None,
                    class_names: Optional[Sequence[str]] = None,
                    min_side: int = 320, **kwargs) -> Image.Image:
  """`draw_detections` written to `path` (a file name or a binary file object) as PNG
  (lossless: colours stay exact). Returns the drawn PIL.Image."""
  pil = draw_detections(image, boxes_xyxy, labels, scores, class_names, min_side, **kwargs)
  pil.save(path, format='PNG')
  return pil


def _wrap(draw: ImageDraw.ImageDraw, parts: Sequence[str], fnt, width: int) -> List[str]:
  """Joins `parts` with ' | ' into lines no wider than `width` px (a part wider than that
  gets a line of its own)."""
  lines: List[str] = []
  for part in parts:
    trial = f'{lines[-1]} | {part}' if lines else part
    if lines and draw.textlength(trial, font=fnt) <= width:
      lines[-1] = trial
    else:
      lines.append(part)
  return lines


def grid_layout(n: int, cols: Optional[int] = None) -> Tuple[int, int]:
  """(rows, cols) of a grid of n panels: cols = ceil(sqrt(n)) unless given."""
  if n < 1:
    raise ValueError('make_grid: no panels.')
  cols = int(cols) if cols else int(math.ceil(math.sqrt(n)))
  cols = min(max(cols, 1), n)
  return int(math.ceil(n / cols)), cols


def make_grid(panels: Sequence, captions: Optional[Sequence[str]] = None,
              title: Optional[Sequence[str]] = None, cols: Optional[int] = None,
              pad: int = 8) -> np.ndarray:
  """Panels (PIL images or uint8 [h, w, 3]) in a grid, top-left aligned in equal cells.

  Args:
    panels: n images, any sizes; each cell is max height x max width.
    captions: n one-line captions drawn above their panel (None: no caption row).
    title: phrases of a header above the grid, joined with ' | ' and wrapped to its width.
    cols: columns (default ceil(sqrt(n))); rows = ceil(n / cols).
    pad: px between cells and around the grid.

  Returns:
    uint8 [H, W, 3] with W = cols * cell_w + (cols + 1) * pad and
    H = header + rows * (caption + cell_h) + (rows + 1) * pad (header and caption 0 when
    not given).
  """
  arrs = [np.asarray(p.convert('RGB') if isinstance(p, Image.Image) else p, np.uint8)
          for p in panels]
  rows, cols = grid_layout(len(arrs), cols)
  cell_h = max(a.shape[0] for a in arrs)
  cell_w = max(a.shape[1] for a in arrs)
  width = cols * cell_w + (cols + 1) * pad
  fnt = font(font_size(min(cell_h, cell_w)))
  scratch = ImageDraw.Draw(Image.new('RGB', (1, 1)))
  line_h = _text_height(fnt) + 6
  lines = _wrap(scratch, list(title), fnt, width - 2 * pad) if title else []
  header = len(lines) * line_h + (pad if lines else 0)
  cap_h = line_h if captions is not None else 0
  height = header + rows * (cap_h + cell_h) + (rows + 1) * pad
  out = Image.new('RGB', (width, height), GRID_BACKGROUND)
  draw = ImageDraw.Draw(out)
  for i, text in enumerate(lines):
    draw.text((pad, pad + i * line_h), text, font=fnt, fill=GRID_TEXT)
  for i, a in enumerate(arrs):
    r, c = divmod(i, cols)
    x = pad + c * (cell_w + pad)
    y = header + pad + r * (cap_h + cell_h + pad)
    if captions is not None:
      draw.text((x, y), str(captions[i]), font=fnt, fill=GRID_TEXT)
    out.paste(Image.fromarray(a), (x, y + cap_h))
  return np.asarray(out)
