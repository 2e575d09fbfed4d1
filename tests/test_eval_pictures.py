"""Pictures a person can read (swin_jax/detection/visualize.py, evaluation/predictor.py), the
TensorBoard image of each evaluation (train/metric_writer.py), and the one scoring rule that
COCO eval, the pictures and swin_jax.predict share (evaluation/coco.py postprocess):
softmax (DETR) or, under config.loss.classification='focal', Deformable DETR's top-k of the
sigmoid scores of all query x class pairs. Pure numpy / PIL, no model compile."""
import glob
import io
import os

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from swin_jax.detection import visualize as V
from swin_jax.evaluation import coco as E
from swin_jax.evaluation import predictor as P


def _grey(h, w, v=128):
  return np.full((h, w, 3), v, np.uint8)


# ------------------------------------------------------------------ label placement
def _crowded():
  """12 predictions and 3 ground-truth boxes piled on a 64x64 canvas (a bad model)."""
  rng = np.random.default_rng(0)
  c = rng.uniform(18, 46, (12, 2))
  half = rng.uniform(4, 12, (12, 2))
  boxes = np.concatenate([c - half, c + half], 1)
  gt = np.array([[10, 10, 30, 40], [25, 20, 50, 50], [0, 0, 63, 63]], np.float64)
  return boxes, rng.integers(0, 10, 12), rng.uniform(0.3, 1, 12), gt, np.array([1, 4, 7])


@pytest.mark.parametrize('margin', [0, None])
def test_labels_are_disjoint_inside_the_canvas_and_drawn_where_placed(margin):
  boxes, labels, scores, gt, gt_labels = _crowded()
  pil, tags, s = V.render(_grey(64, 64), boxes, labels, scores, [str(i) for i in range(10)],
                          320, gt, gt_labels, margin=margin)
  assert s == 5
  w, h = pil.size
  placed = [t for t in tags if t.rect is not None]
  assert len(tags) == 15 and len(placed) >= 10, [t.rect for t in tags]  # non-vacuous
  for i, a in enumerate(placed):
    x0, y0, x1, y1 = a.rect
    assert 0 <= x0 <= x1 < w and 0 <= y0 <= y1 < h, a
    for b in placed[i + 1:]:  # pairwise disjoint (inclusive pixel rectangles)
      assert a.rect[2] < b.rect[0] or b.rect[2] < a.rect[0] or \
          a.rect[3] < b.rect[1] or b.rect[3] < a.rect[1], (a, b)
  # The tag's corner pixel carries its fill: class colour (pred) / black (gt).
  got = np.asarray(pil)
  preds = [t for t in tags if t.kind == 'pred']
  for t, lab in zip(preds, labels):
    if t.rect is not None:
      assert tuple(got[t.rect[1], t.rect[0]]) == V.class_color(lab), t
  for t in tags[:3]:
    assert t.kind == 'gt' and t.text.startswith('gt ')
    if t.rect is not None:
      assert tuple(got[t.rect[1], t.rect[0]]) == V.GT_TAG_FILL, t
  assert preds[0].text == f'{labels[0]} {scores[0]:.2f}'


def test_place_label_takes_the_first_free_candidate_and_gives_up_when_full():
  outer, size, canvas = (40, 40, 80, 80), (20, 10), (200, 200)
  assert V.place_label(outer, size, [], canvas) == (40, 30, 59, 39)  # above, left-aligned
  assert V.place_label(outer, size, [(40, 30, 59, 39)], canvas) == (40, 40, 59, 49)  # inside
  assert V.place_label((0, 0, 30, 30), size, [], canvas) == (0, 0, 19, 9)  # no room above
  assert V.place_label(outer, size, [(0, 0, 199, 199)], canvas) is None


# ------------------------------------------------------------------ styles
def test_ground_truth_dashed_outside_prediction_solid_inside():
  img = _grey(40, 60)  # factor ceil(320 / 40) = 8, line 2 px, dash 6 px
  box = [10, 15, 40, 35]  # upscaled: (80, 120) - (320, 280)
  pil, tags, s = V.render(img, [box], [3], [0.93], None, 320, [box], [3], margin=0)
  got = np.asarray(pil)
  assert s == 8
  col = V.class_color(3)
  # Prediction: solid, its class colour, on the box edge and inward (x 80..81, y 120..121).
  for y in range(130, 270, 7):
    assert tuple(got[y, 80]) == col and tuple(got[y, 81]) == col and tuple(got[y, 320]) == col
  for x in range(90, 310, 7):
    assert tuple(got[120, x]) == col and tuple(got[280, x]) == col
  # Ground truth: the 2 px just outside (x 78..79), dashes of white and black only.
  white, black = V.GT_DASH_COLORS
  for band in (got[125:275, 78], got[125:275, 79], got[125:275, 321], got[282, 85:315]):
    colours = {tuple(p) for p in band}
    assert colours == {white, black}, colours
  for y in (118, 119, 281, 282):  # top and bottom bands whole: no tag covers the frame
    runs = np.flatnonzero(np.any(np.diff(got[y, 78:323].astype(int), axis=0) != 0, axis=1))
    assert set(np.diff(runs)) == {6}, y  # dashes of 3 * line px
  # Untouched beyond the frame and inside the outline.
  ref = np.repeat(np.repeat(img, 8, 0), 8, 1)
  np.testing.assert_array_equal(got[290:], ref[290:])
  np.testing.assert_array_equal(got[150:250, 100:300], ref[150:250, 100:300])
  assert [t.text for t in tags] == ['gt 3', '3 0.93']


def test_selection_rule_threshold_then_best_first_then_cap():
  scores = np.array([0.5, 0.9, np.nan, 0.7, 0.95, 0.7, 0.2])
  np.testing.assert_array_equal(V.select_detections(scores, 0.7, 3), [4, 1, 3])
  np.testing.assert_array_equal(V.select_detections(scores, 0.7, None), [4, 1, 3, 5])
  np.testing.assert_array_equal(V.select_detections(scores, 0.0, 10), [4, 1, 3, 5, 0, 6])
  assert len(V.select_detections(scores, 0.99, 5)) == 0


def test_draw_settings_defaults_by_classification_and_bad_values():
  def cfg(**ev):
    c = ml_collections.ConfigDict({'loss': {'classification': ev.pop('cls', 'softmax')},
                                   'eval': ev})
    return c
  assert P.draw_settings(cfg()) == (0.7, 10)
  assert P.draw_settings(cfg(cls='focal')) == (0.3, 10)
  assert P.draw_settings(cfg(draw_score_threshold=0.5, draw_max_detections=3)) == (0.5, 3)
  with pytest.raises(ValueError, match=r'config\.eval\.draw_score_threshold=1\.5'):
    P.draw_settings(cfg(draw_score_threshold=1.5))
  with pytest.raises(ValueError, match=r'config\.eval\.draw_max_detections=0'):
    P.draw_settings(cfg(draw_max_detections=0))
  with pytest.raises(ValueError, match=r'config\.loss\.classification=.sigmoid.'):
    P.draw_settings(cfg(cls='sigmoid'))


def test_ground_truth_of_a_record_drops_crowds_and_maps_labels():
  ex = {'objects': {'bbox': [np.array([0.1, 0.2, 0.5, 0.6], np.float32),
                             np.array([0.0, 0.0, 1.0, 1.0], np.float32)],
                    'label': [3, 0], 'is_crowd': [False, True]}}
  boxes, labels = P.ground_truth(ex, (100, 200), label_map='coco91')
  np.testing.assert_allclose(boxes, [[40, 10, 120, 50]], atol=1e-4)  # (x0, y0, x1, y1) px
  np.testing.assert_array_equal(labels, [4])  # tfds label 3 (motorcycle) -> COCO id 4


# ------------------------------------------------------------------ grid
@pytest.mark.parametrize('n,rows,cols', [(1, 1, 1), (2, 1, 2), (4, 2, 2), (5, 2, 3),
                                         (10, 3, 4)])
def test_grid_layout(n, rows, cols):
  assert V.grid_layout(n) == (rows, cols)


def test_grid_shape_and_placement():
  sizes = [(30, 40), (50, 20), (10, 10), (45, 45), (20, 60)]  # (h, w)
  panels = [np.full((h, w, 3), 10 * (i + 1), np.uint8) for i, (h, w) in enumerate(sizes)]
  pad = 8
  g = V.make_grid(panels, pad=pad)
  rows, cols, ch, cw = 2, 3, 50, 60
  assert g.shape == (rows * ch + (rows + 1) * pad, cols * cw + (cols + 1) * pad, 3)
  for i, p in enumerate(panels):
    r, c = divmod(i, cols)
    y, x = pad + r * (ch + pad), pad + c * (cw + pad)
    np.testing.assert_array_equal(g[y:y + p.shape[0], x:x + p.shape[1]], p)
  titled = V.make_grid(panels, captions=[f'image {i}' for i in range(5)],
                       title=['step 3', 'a rather long phrase that will wrap'], pad=pad)
  assert titled.shape[1] == g.shape[1] and titled.shape[0] > g.shape[0]


# ------------------------------------------------------------------ TensorBoard image
def test_metric_writer_writes_the_grid_as_a_tensorboard_image(tmp_path):
  import tensorflow as tf
  from swin_jax.train.metric_writer import MetricWriter
  grid = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
  w = MetricWriter(str(tmp_path), True)
  w.write(5, 'eval', {'AP': 0.5})
  w.write_image(5, 'eval/predictions', grid)
  grid[:] = 0  # the writer keeps its own copy
  with pytest.raises(ValueError, match='uint8'):
    w.write_image(5, 'x', np.zeros((4, 4, 3), np.float32))
  w.close()
  found = []
  for f in glob.glob(os.path.join(str(tmp_path), 'tensorboard', 'events.out.tfevents.*')):
    for e in tf.compat.v1.train.summary_iterator(f):
      for v in e.summary.value:
        if v.HasField('image'):
          found.append((v.tag, e.step, v.image))
  assert [(t, s) for t, s, _ in found] == [('eval/predictions', 5)]
  im = found[0][2]
  assert (im.height, im.width, im.colorspace) == (37, 53, 3)
  with Image.open(io.BytesIO(im.encoded_image_string)) as png:
    want = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(png.convert('RGB')), want)
  MetricWriter(str(tmp_path / 'off'), False).write_image(1, 'x', grid)  # process > 0: no-op
  assert not os.path.exists(tmp_path / 'off')


# ------------------------------------------------------------------ scoring
def _np_xyxy(boxes, sizes):
  cx, cy, w, h = np.moveaxis(boxes, -1, 0)
  xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
  return xyxy * np.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], -1)[:, None]


def _np_focal(logits, boxes, sizes, k):
  """Deformable DETR's PostProcess in numpy: top-k of sigmoid(logits[..., :C]) over all
  Q * C (query, class) pairs; box of the query idx // C, label idx % C."""
  b, q, c1 = logits.shape
  c = c1 - 1
  p = (1 / (1 + np.exp(-logits[..., :c].astype(np.float64)))).reshape(b, q * c)
  order = np.argsort(-p, axis=1, kind='stable')[:, :k]
  xyxy = _np_xyxy(boxes, sizes)
  return (np.take_along_axis(p, order, 1), order % c,
          np.take_along_axis(xyxy, (order // c)[..., None], 1))


CASE = dict(logits=np.random.default_rng(1).normal(0, 3, (2, 7, 5)).astype(np.float32),
            boxes=np.random.default_rng(2).uniform(0.1, 0.6, (2, 7, 4)).astype(np.float32),
            sizes=np.array([[480, 640], [100, 33]], np.int32))


@pytest.mark.parametrize('num_select', [100, 9])
def test_focal_scores_are_deformable_detrs_sigmoid_top_k(num_select):
  lg, bx, sz = CASE['logits'], CASE['boxes'], CASE['sizes']
  post = jax.jit(E.postprocess, static_argnums=(3, 4))
  s, l, b = post(lg, bx, sz, 'focal', num_select)
  k = min(num_select, 7 * 4)
  ws, wl, wb = _np_focal(lg, bx, sz, k)
  assert s.shape == (2, k) and l.dtype == np.int32 and b.shape == (2, k, 4)
  np.testing.assert_allclose(s, ws, rtol=1e-6)
  np.testing.assert_array_equal(l, wl)
  np.testing.assert_allclose(b, wb, rtol=1e-5)


def test_softmax_scores_stay_detrs():
  lg, bx, sz = CASE['logits'], CASE['boxes'], CASE['sizes']
  p = np.exp(lg - lg.max(-1, keepdims=True))
  p = (p / p.sum(-1, keepdims=True))[..., :-1]
  for s, l, b in (E.postprocess(lg, bx, sz), E.postprocess(lg, bx, sz, 'softmax')):
    assert s.shape == (2, 7)
    np.testing.assert_allclose(s, p.max(-1), rtol=1e-6)
    np.testing.assert_array_equal(l, p.argmax(-1))
    np.testing.assert_allclose(b, _np_xyxy(bx, sz), rtol=1e-6)
  with pytest.raises(ValueError, match='classification'):
    E.postprocess(lg, bx, sz, 'sigmoid')


def _detection_config(classification):
  return ml_collections.ConfigDict({
      'task': 'detection', 'loss': {'classification': classification},
      'model': {'num_classes': 4, 'num_queries': 7},
      'input': {'eval_scale': 56, 'max_size': 80, 'pad_size': (80, 80)}})


@pytest.mark.parametrize('classification', ['softmax', 'focal'])
def test_eval_and_predictor_score_by_config_loss_classification(classification, monkeypatch):
  """The COCO eval step (DetectionTask.eval_outputs) and the Predictor behind the pictures
  and swin_jax.predict both follow config.loss.classification."""
  from swin_jax.train import tasks
  lg, bx, sz = CASE['logits'][:1], CASE['boxes'][:1], CASE['sizes'][:1]
  want = (_np_focal(lg, bx, sz, 28) if classification == 'focal'
          else E.postprocess(lg, bx, sz, 'softmax'))
  config = _detection_config(classification)
  out = tasks.DetectionTask(config).eval_outputs(
      {'pred_logits': lg, 'pred_boxes': bx},
      {'orig_size': sz, 'image_id': np.array([1]), 'mask': np.array([True])})
  for got, w in zip((out['scores'], out['labels'], out['boxes']), want):
    np.testing.assert_allclose(np.asarray(got), np.asarray(w), rtol=1e-5)

  class FakeDetr:  # the model's outputs fixed: only the scoring is under test
    def apply(self, variables, image, mask, train):
      del variables, mask, train
      assert image.shape == (1, 80, 80, 3)
      return {'pred_logits': lg, 'pred_boxes': bx}
  monkeypatch.setattr(P, 'model_from_config', lambda c: FakeDetr())
  monkeypatch.setattr(P.detection_pipeline, 'parse_config', lambda c: ml_collections.
                      ConfigDict({'eval_scale': 56, 'max_size': 80, 'pad_size': (80, 80)}))
  monkeypatch.setattr(P.detection_pipeline, 'pad_and_pack', _fake_pack)
  s, l, b = P.Predictor(config, {})(_grey(int(sz[0, 0]), int(sz[0, 1])))
  np.testing.assert_allclose(s, np.asarray(want[0][0]), rtol=1e-5)
  np.testing.assert_array_equal(l, np.asarray(want[1][0]))
  np.testing.assert_allclose(b, np.asarray(want[2][0]), rtol=1e-5)


def _fake_pack(img, boxes, labels, cfg):
  import tensorflow as tf
  del img, boxes, labels, cfg
  return {'image': tf.zeros([80, 80, 3]), 'image_mask': tf.zeros([80, 80], tf.bool)}


def test_classification_of_config():
  assert E.classification_of(ml_collections.ConfigDict({'loss': {}})) == 'softmax'
  assert E.classification_of(ml_collections.ConfigDict({})) == 'softmax'
  c = ml_collections.ConfigDict({'loss': {'classification': 'focal'}})
  assert E.classification_of(c) == 'focal'
  c.loss.classification = 'bce'
  with pytest.raises(ValueError, match=r"config\.loss\.classification='bce'"):
    E.classification_of(c)
