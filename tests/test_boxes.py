"""Box conversions, IoU and GIoU against hand-computed values and a NumPy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swin_jax.detection import boxes as B


def np_giou_reference(b1, b2):
  """Independent NumPy GIoU: per pair, with explicit interval overlaps.

  b1: [N, 4], b2: [M, 4] valid xyxy boxes with positive area -> ([N, M] iou,
  [N, M] giou), float64.
  """
  n, m = len(b1), len(b2)
  iou = np.zeros((n, m))
  giou = np.zeros((n, m))
  for a in range(n):
    for c in range(m):
      ax0, ay0, ax1, ay1 = map(float, b1[a])
      cx0, cy0, cx1, cy1 = map(float, b2[c])
      ow = max(0.0, min(ax1, cx1) - max(ax0, cx0))
      oh = max(0.0, min(ay1, cy1) - max(ay0, cy0))
      inter = ow * oh
      area_a = (ax1 - ax0) * (ay1 - ay0)
      area_c = (cx1 - cx0) * (cy1 - cy0)
      union = area_a + area_c - inter
      hull = (max(ax1, cx1) - min(ax0, cx0)) * (max(ay1, cy1) - min(ay0, cy0))
      iou[a, c] = inter / union
      giou[a, c] = inter / union - (hull - union) / hull
  return iou, giou


def giou1(a, b):
  return float(B.generalized_box_iou(jnp.array([a], jnp.float32),
                                     jnp.array([b], jnp.float32))[0, 0])


def iou1(a, b):
  iou, union = B.box_iou(jnp.array([a], jnp.float32), jnp.array([b], jnp.float32))
  return float(iou[0, 0]), float(union[0, 0])


def test_identical_boxes():
  assert giou1([0, 0, 2, 3], [0, 0, 2, 3]) == pytest.approx(1.0)
  assert iou1([0, 0, 2, 3], [0, 0, 2, 3]) == pytest.approx((1.0, 6.0))


def test_disjoint_boxes_hand_value():
  # [0,0,1,1] and [2,0,3,1]: inter 0, union 2, hull [0,0,3,1] area 3.
  # GIoU = 0 - (3 - 2) / 3 = -1/3.
  assert giou1([0, 0, 1, 1], [2, 0, 3, 1]) == pytest.approx(-1 / 3)
  # [0,0,1,1] and [2,2,3,3]: union 2, hull 3x3 = 9 -> -(9 - 2) / 9 = -7/9.
  assert giou1([0, 0, 1, 1], [2, 2, 3, 3]) == pytest.approx(-7 / 9)
  assert iou1([0, 0, 1, 1], [2, 2, 3, 3]) == pytest.approx((0.0, 2.0))


def test_nested_boxes():
  # [1,1,2,2] inside [0,0,4,4]: inter 1, union 16, hull = union -> GIoU = IoU = 1/16.
  assert giou1([1, 1, 2, 2], [0, 0, 4, 4]) == pytest.approx(1 / 16)
  assert giou1([0, 0, 4, 4], [1, 1, 2, 2]) == pytest.approx(1 / 16)


def test_partial_overlap_hand_value():
  # [0,0,2,2] and [1,1,3,3]: inter 1, union 7, hull 9: GIoU = 1/7 - 2/9.
  assert giou1([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7 - 2 / 9)


def test_touching_boxes():
  # Share an edge: inter 0, union 2, hull 2 -> GIoU 0.
  assert giou1([0, 0, 1, 1], [1, 0, 2, 1]) == pytest.approx(0.0)
  # Share a corner: union 2, hull 4 -> -1/2.
  assert giou1([0, 0, 1, 1], [1, 1, 2, 2]) == pytest.approx(-0.5)


@pytest.mark.parametrize('a,b', [
    ([0, 0, 0, 0], [0, 0, 0, 0]),  # identical points
    ([1, 1, 1, 1], [3, 3, 3, 3]),  # two distinct points
    ([0, 0, 0, 2], [0, 0, 0, 2]),  # identical zero-width boxes
    ([0, 0, 2, 0], [1, 0, 3, 0]),  # overlapping zero-height boxes
    ([0, 0, 0, 0], [0, 0, 1, 1]),  # a point on a box corner
    ([0.5, 0.5, 0.5, 0.5], [0, 0, 1, 1]),  # a point inside a box
])
def test_degenerate_boxes_are_finite(a, b):
  g = giou1(a, b)
  iou, _ = iou1(a, b)
  assert np.isfinite(g) and -1.0 <= g <= 1.0
  assert np.isfinite(iou) and 0.0 <= iou <= 1.0
  e = B.elementwise_generalized_box_iou(jnp.array(a, jnp.float32), jnp.array(b, jnp.float32))
  assert float(e) == pytest.approx(g)
  # Gradients are finite too (the loss back-propagates through GIoU).
  grad = jax.grad(lambda x: B.elementwise_generalized_box_iou(x, jnp.array(b, jnp.float32)))(
      jnp.array(a, jnp.float32))
  assert np.all(np.isfinite(np.asarray(grad)))


def test_point_inside_box_value():
  # inter 0, union 1, hull 1 -> GIoU 0; a point far away: hull 9, union 1 -> -8/9.
  assert giou1([0.5, 0.5, 0.5, 0.5], [0, 0, 1, 1]) == pytest.approx(0.0)
  assert giou1([3, 3, 3, 3], [0, 0, 1, 1]) == pytest.approx(-8 / 9)


def test_box_area():
  np.testing.assert_allclose(B.box_area(jnp.array([[0, 0, 2, 3], [1, 1, 1, 5.]])), [6, 0])


def test_conversions_hand_values_and_round_trip():
  cxcywh = jnp.array([[0.5, 0.5, 1.0, 0.4], [2.0, 3.0, 0.0, 2.0]])
  xyxy = B.box_cxcywh_to_xyxy(cxcywh)
  np.testing.assert_allclose(xyxy, [[0.0, 0.3, 1.0, 0.7], [2.0, 2.0, 2.0, 4.0]], atol=1e-7)
  np.testing.assert_allclose(B.box_xyxy_to_cxcywh(xyxy), cxcywh, atol=1e-6)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(0, 1, (3, 5, 4)), jnp.float32)  # any leading dims
  np.testing.assert_allclose(B.box_xyxy_to_cxcywh(B.box_cxcywh_to_xyxy(x)), x, atol=1e-6)
  np.testing.assert_allclose(B.box_cxcywh_to_xyxy(B.box_xyxy_to_cxcywh(x)), x, atol=1e-6)


def random_boxes(rng, n):
  xy = rng.uniform(0, 1, (n, 2))
  wh = rng.uniform(0.01, 0.5, (n, 2))
  return np.concatenate([xy, xy + wh], -1)


def test_random_against_numpy_reference():
  rng = np.random.default_rng(1)
  b1, b2 = random_boxes(rng, 13), random_boxes(rng, 7)
  ref_iou, ref_giou = np_giou_reference(b1, b2)
  iou, union = B.box_iou(jnp.asarray(b1, jnp.float32), jnp.asarray(b2, jnp.float32))
  giou = B.generalized_box_iou(jnp.asarray(b1, jnp.float32), jnp.asarray(b2, jnp.float32))
  assert giou.shape == (13, 7) and iou.shape == union.shape == (13, 7)
  np.testing.assert_allclose(iou, ref_iou, atol=1e-6)
  np.testing.assert_allclose(giou, ref_giou, atol=1e-6)
  assert (np.asarray(giou) <= np.asarray(iou) + 1e-7).all()
  # Elementwise versions equal the diagonal of the pairwise ones.
  e_iou, e_union = B.elementwise_box_iou(jnp.asarray(b1[:7], jnp.float32),
                                         jnp.asarray(b2, jnp.float32))
  np.testing.assert_allclose(e_iou, np.diag(ref_iou[:7]), atol=1e-6)
  np.testing.assert_allclose(e_union, np.diagonal(np.asarray(union)[:7]), rtol=1e-6)
  e_giou = B.elementwise_generalized_box_iou(jnp.asarray(b1[:7], jnp.float32),
                                             jnp.asarray(b2, jnp.float32))
  np.testing.assert_allclose(e_giou, np.diag(ref_giou[:7]), atol=1e-6)


def test_batched_leading_dims_and_jit():
  rng = np.random.default_rng(2)
  b1 = np.stack([random_boxes(rng, 4) for _ in range(3)])  # [3, 4, 4]
  b2 = np.stack([random_boxes(rng, 5) for _ in range(3)])  # [3, 5, 4]
  giou = jax.jit(B.generalized_box_iou)(jnp.asarray(b1), jnp.asarray(b2))
  assert giou.shape == (3, 4, 5)
  for e in range(3):
    np.testing.assert_allclose(giou[e], np_giou_reference(b1[e], b2[e])[1], atol=1e-6)
