"""Detection drawing: size, where pixels change, PNG round trip, empty input."""
import numpy as np
from PIL import Image

from swin_jax.detection import visualize as V


def noise(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def upscaled(img, s):
  return np.repeat(np.repeat(img, s, axis=0), s, axis=1)


def test_draws_box_edges_and_leaves_the_rest():
  img = noise(40, 60)  # shorter side 40 -> factor ceil(320 / 40) = 8
  out = V.draw_detections(img, [[10, 15, 40, 35]], [3], [0.93],
                          class_names=['a', 'b', 'c', 'dog'])
  assert out.size == (480, 320) and out.mode == 'RGB'
  got, ref = np.asarray(out), upscaled(img, 8)
  color = V.class_color(3)
  # Box in upscaled pixels: (80, 120) - (320, 280); outline drawn inward from the edge.
  for y, x in [(200, 80), (200, 320), (120, 200), (280, 200)]:
    assert tuple(got[y, x]) == color, (y, x)
  np.testing.assert_array_equal(got[:, 340:], ref[:, 340:])  # right of the box
  np.testing.assert_array_equal(got[290:], ref[290:])  # below it
  np.testing.assert_array_equal(got[150:250, 100:300], ref[150:250, 100:300])  # inside
  assert (got[:120, 80:200] != ref[:120, 80:200]).any()  # the tag sits above the box


def test_empty_detections_give_the_upscaled_image():
  img = noise(28, 28, seed=1)
  out = V.draw_detections(img, np.zeros((0, 4)), np.zeros((0,), np.int32))
  np.testing.assert_array_equal(np.asarray(out), upscaled(img, 12))  # ceil(320 / 28)
  big = noise(400, 500, seed=2)
  np.testing.assert_array_equal(np.asarray(V.draw_detections(big, [], [])), big)


def test_png_round_trip(tmp_path):
  img = noise(64, 48, seed=3)
  path = str(tmp_path / 'det.png')
  drawn = V.save_detections(path, img, [[5, 5, 30, 40], [20, 10, 47, 63]], [0, 7],
                            scores=None, min_side=100)
  with Image.open(path) as f:
    assert f.format == 'PNG'
    np.testing.assert_array_equal(np.asarray(f.convert('RGB')), np.asarray(drawn))
  assert drawn.size == (144, 192)  # factor ceil(100 / 48) = 3


def test_colours_are_deterministic_and_distinct():
  colors = [V.class_color(i) for i in range(20)]
  assert colors == [V.class_color(i) for i in range(20)]
  assert len(set(colors)) == 20
