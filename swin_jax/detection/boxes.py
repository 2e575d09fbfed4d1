"""Box conversions, IoU and generalized IoU (GIoU).

The formulas follow facebookresearch/detr ``util/box_ops.py`` operation for
operation (``box_cxcywh_to_xyxy``, ``box_xyxy_to_cxcywh``, ``box_iou``,
``generalized_box_iou``), written for jax.numpy, plus elementwise versions for
matched pairs (what DETR's criterion takes the diagonal of).

Boxes are ``[..., 4]`` arrays, either ``(cx, cy, w, h)`` or ``(x0, y0, x1, y1)``
with ``x0 <= x1`` and ``y0 <= y1``.

Degenerate boxes: DETR asserts that boxes are valid and divides by the union
and by the enclosing area unguarded, so zero-area boxes give ``nan`` (``0/0``).
Here both denominators are clamped from below by ``eps`` (default ``1e-7``),
``x / max(denominator, eps)``: for any pair whose union and enclosing area
exceed ``eps`` the result is bit-for-bit DETR's formula; zero-area boxes
(zero width or height, identical points) give finite values (IoU 0, GIoU in
[-1, 1]) and finite gradients, and nothing is asserted (the functions stay
jittable). Boxes with ``x1 < x0`` are not meaningful but still give finite
values.
"""
import jax.numpy as jnp

EPS = 1e-7


def box_cxcywh_to_xyxy(x):
  """(cx, cy, w, h) -> (x0, y0, x1, y1). x: [..., 4] -> [..., 4]."""
  x_c, y_c, w, h = jnp.moveaxis(x, -1, 0)
  b = [(x_c - 0.5 * w), (y_c - 0.5 * h), (x_c + 0.5 * w), (y_c + 0.5 * h)]
  return jnp.stack(b, axis=-1)


def box_xyxy_to_cxcywh(x):
  """(x0, y0, x1, y1) -> (cx, cy, w, h). x: [..., 4] -> [..., 4]."""
  x0, y0, x1, y1 = jnp.moveaxis(x, -1, 0)
  b = [(x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0), (y1 - y0)]
  return jnp.stack(b, axis=-1)


def box_area(boxes):
  """Area of xyxy boxes (torchvision's formula, not clamped). [..., 4] -> [...]."""
  return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def elementwise_box_iou(boxes1, boxes2, eps=EPS):
  """IoU of matched pairs of xyxy boxes.

  Args:
    boxes1: [..., 4] xyxy boxes.
    boxes2: [..., 4] xyxy boxes (broadcastable against boxes1).
    eps: lower clamp of the union in the denominator.

  Returns:
    (iou, union), both [...] (the broadcast batch shape).
  """
  lt = jnp.maximum(boxes1[..., :2], boxes2[..., :2])  # [..., 2]
  rb = jnp.minimum(boxes1[..., 2:], boxes2[..., 2:])  # [..., 2]
  wh = jnp.clip(rb - lt, 0)  # [..., 2]
  inter = wh[..., 0] * wh[..., 1]  # [...]
  union = box_area(boxes1) + box_area(boxes2) - inter
  iou = inter / jnp.maximum(union, eps)
  return iou, union


def elementwise_generalized_box_iou(boxes1, boxes2, eps=EPS):
  """GIoU of matched pairs of xyxy boxes, in [-1, 1], never nan.

  Args:
    boxes1: [..., 4] xyxy boxes.
    boxes2: [..., 4] xyxy boxes (broadcastable against boxes1).
    eps: lower clamp of the union and of the enclosing area in the denominators.

  Returns:
    [...] GIoU per pair.
  """
  iou, union = elementwise_box_iou(boxes1, boxes2, eps)
  lt = jnp.minimum(boxes1[..., :2], boxes2[..., :2])
  rb = jnp.maximum(boxes1[..., 2:], boxes2[..., 2:])
  wh = jnp.clip(rb - lt, 0)  # [..., 2]
  area = wh[..., 0] * wh[..., 1]
  return iou - (area - union) / jnp.maximum(area, eps)


def box_iou(boxes1, boxes2, eps=EPS):
  """Pairwise IoU (DETR's ``box_iou``: also returns the union).

  Args:
    boxes1: [..., N, 4] xyxy boxes.
    boxes2: [..., M, 4] xyxy boxes (same leading dims as boxes1).
    eps: lower clamp of the union in the denominator.

  Returns:
    (iou, union), both [..., N, M].
  """
  return elementwise_box_iou(boxes1[..., :, None, :], boxes2[..., None, :, :], eps)


def generalized_box_iou(boxes1, boxes2, eps=EPS):
  """Pairwise generalized IoU (https://giou.stanford.edu/), never nan.

  Args:
    boxes1: [..., N, 4] xyxy boxes.
    boxes2: [..., M, 4] xyxy boxes (same leading dims as boxes1).
    eps: lower clamp of the union and enclosing area in the denominators (DETR
      has none and asserts valid boxes instead).

  Returns:
    [..., N, M] GIoU matrix.
  """
  return elementwise_generalized_box_iou(
      boxes1[..., :, None, :], boxes2[..., None, :, :], eps)
