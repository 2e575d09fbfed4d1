"""COCO evaluation against pycocotools called directly (COCO / loadRes / COCOeval)."""
import copy
import io

import jax
import numpy as np
import pytest

from swin_jax.evaluation import coco as E

CATS = [{'id': 1, 'name': 'a'}, {'id': 2, 'name': 'b'}, {'id': 3, 'name': 'c'},
        {'id': 5, 'name': 'e'}]


def random_groundtruth(rng, n_images=8):
  """Ground truth with sparse category ids, crowds, an empty image, all area ranges."""
  images, anns = [], []
  for i in range(n_images):
    h, w = int(rng.integers(200, 640)), int(rng.integers(200, 640))
    img_id = 100 + 7 * i  # sparse, unordered-looking ids
    images.append({'id': img_id, 'height': h, 'width': w})
    n = 0 if i == 3 else int(rng.integers(1, 7))  # image 3: no ground truth at all
    for j in range(n):
      side = [rng.uniform(8, 30), rng.uniform(35, 90), rng.uniform(100, 190)][j % 3]
      bw, bh = side * rng.uniform(0.7, 1.3), side * rng.uniform(0.7, 1.3)
      x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
      anns.append({'id': len(anns) + 1, 'image_id': img_id,
                   'category_id': int(rng.choice([1, 2, 3, 5])),
                   'bbox': [x, y, bw, bh], 'area': bw * bh * rng.uniform(0.6, 1.0),
                   'iscrowd': int(j == 4)})
  return {'images': images, 'annotations': anns, 'categories': CATS}


def random_detections(rng, gt, q=12):
  """{image_id: (scores [Q], labels [Q], boxes_xyxy [Q, 4] float32)}, half near gt."""
  by_img = {im['id']: [] for im in gt['images']}
  for a in gt['annotations']:
    by_img[a['image_id']].append(a)
  out = {}
  for im in gt['images']:
    boxes, labels = [], []
    for k in range(q):
      g = by_img[im['id']]
      if g and k < 2 * len(g):
        a = g[k % len(g)]
        x, y, bw, bh = a['bbox']
        jit = rng.normal(0, 0.06 * max(bw, bh), 4)  # near-duplicates: IoU ~0.5-0.95
        boxes.append([x + jit[0], y + jit[1], x + bw + jit[2], y + bh + jit[3]])
        labels.append(a['category_id'] if rng.random() < 0.85 else 2)
      else:
        x0, y0 = rng.uniform(0, im['width'] - 20), rng.uniform(0, im['height'] - 20)
        boxes.append([x0, y0, x0 + rng.uniform(5, 150), y0 + rng.uniform(5, 150)])
        labels.append(int(rng.choice([1, 2, 3, 5])))
    # Rounded scores: ties, so the result order (COCOeval's tie-break) must not depend
    # on how the evaluator was fed.
    scores = np.round(rng.uniform(0.05, 1.0, q), 2).astype(np.float32)
    out[im['id']] = (scores, np.array(labels, np.int32), np.array(boxes, np.float32))
  return out


def to_results(dets):
  """COCO-result dicts in image-id then query order (float64 xywh)."""
  res = []
  for img_id in sorted(dets):
    s, l, b = dets[img_id]
    b = b.astype(np.float64)
    for k in range(len(s)):
      res.append({'image_id': img_id, 'category_id': int(l[k]), 'score': float(s[k]),
                  'bbox': [b[k, 0], b[k, 1], b[k, 2] - b[k, 0], b[k, 3] - b[k, 1]]})
  return res


def reference_stats(gt, results):
  """pycocotools run directly, as its README shows."""
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval
  coco = COCO()
  coco.dataset = copy.deepcopy(gt)
  coco.createIndex()
  ev = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), 'bbox')
  ev.evaluate()
  ev.accumulate()
  ev.summarize()
  return [float(v) for v in ev.stats]


def feed(evaluator, dets, ids, batch_size, q, rng):
  """Adds dets of `ids` in batches of `batch_size`, last one padded with junk rows."""
  for start in range(0, len(ids), batch_size):
    chunk = ids[start:start + batch_size]
    pad = batch_size - len(chunk)
    img = np.array(list(chunk) + [-1] * pad)
    junk_s = rng.uniform(size=q).astype(np.float32)
    junk_b = rng.uniform(0, 50, (q, 4)).astype(np.float32)
    s = np.stack([dets[i][0] for i in chunk] + [junk_s] * pad)
    l = np.stack([dets[i][1] for i in chunk] + [np.ones(q, np.int32)] * pad)
    b = np.stack([dets[i][2] for i in chunk] + [junk_b] * pad)
    valid = np.array([True] * len(chunk) + [False] * pad)
    evaluator.add(img, s, l, b, valid=valid)


@pytest.fixture(scope='module')
def data():
  rng = np.random.default_rng(0)
  gt = random_groundtruth(rng)
  dets = random_detections(rng, gt)
  return gt, dets, reference_stats(gt, to_results(dets))


def test_stats_are_nontrivial(data):
  gt, _, ref = data
  assert any(a['iscrowd'] for a in gt['annotations'])
  assert 0.1 < ref[0] < 0.9 and all(v > 0 for v in ref[3:6])  # AP and APs/m/l


@pytest.mark.parametrize('batch_size', [1, 3, 8])
def test_matches_pycocotools_whatever_the_batching(data, batch_size):
  gt, dets, ref = data
  rng = np.random.default_rng(batch_size)
  ids = list(dets)
  for order in (ids, list(rng.permutation(ids))):
    ev = E.CocoEvaluator(gt)
    feed(ev, dets, [int(i) for i in order], batch_size, 12, rng)
    stats = ev.summarize()
    assert list(stats) == list(E.STAT_NAMES)
    assert list(stats.values()) == ref  # exact: the same pycocotools computation
  assert gt == data[0]  # the caller's dict is not mutated


def test_evaluate_detections_matches(data):
  gt, dets, ref = data
  assert list(E.evaluate_detections(gt, to_results(dets)).values()) == ref


def test_postprocess_matches_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(0, 3, (3, 7, 6)).astype(np.float32)
  boxes = rng.uniform(0.1, 0.6, (3, 7, 4)).astype(np.float32)
  sizes = np.array([[480, 640], [100, 33], [800, 1333]], np.int32)
  s, l, b = jax.jit(E.postprocess)(logits, boxes, sizes)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p = (p / p.sum(-1, keepdims=True))[..., :-1]
  cx, cy, w, h = np.moveaxis(boxes, -1, 0)
  xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
  scale = np.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], -1)[:, None]
  assert s.shape == (3, 7) and l.dtype == np.int32 and b.shape == (3, 7, 4)
  np.testing.assert_allclose(s, p.max(-1), rtol=1e-6)
  np.testing.assert_array_equal(l, p.argmax(-1))
  np.testing.assert_allclose(b, xyxy * scale, rtol=1e-6)


def test_padding_independence():
  """An image's normalised predictions give the same stats whatever canvas it sits on."""
  small = {'id': 1, 'height': 100, 'width': 150}
  big = {'id': 2, 'height': 300, 'width': 400}
  gt = {'images': [small, big], 'categories': CATS, 'annotations': [
      {'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [30, 20, 60, 40], 'area': 2400,
       'iscrowd': 0},
      {'id': 2, 'image_id': 2, 'category_id': 2, 'bbox': [100, 50, 200, 150],
       'area': 30000, 'iscrowd': 0}]}
  logits = np.full((2, 3, 6), -5.0, np.float32)
  # Labels are category ids: query 0 -> class 1, query 1 -> class 2 (lower score on
  # image 1, where it is a false positive), query 2 -> "no object".
  logits[:, 0, 1], logits[:, 1, 2], logits[:, 2, -1] = 4.0, 3.0, 6.0
  logits[0, 1, 2] = 1.0
  # (cx, cy, w, h) as fractions of each *unpadded* image; query 0 hits image 1's box.
  norm = np.array([[[60 / 150, 40 / 100, 62 / 150, 38 / 100], [.5, .5, .2, .3], [.1, .1, .1, .1]],
                   [[.3, .3, .2, .2], [200 / 400, 125 / 300, 196 / 400, 150 / 300],
                    [.1, .1, .1, .1]]], np.float32)
  sizes = np.array([[100, 150], [300, 400]])

  def stats(batches):
    ev = E.CocoEvaluator(gt)
    for rows, valid in batches:
      s, l, b = jax.jit(E.postprocess)(logits[rows], norm[rows], sizes[rows])
      ev.add(np.array([1, 2])[rows], s, l, b, valid=valid)
    return ev.summarize()

  alone = stats([([0], None), ([1], None)])  # each image on its own canvas
  # Batched together: image 1 is padded to image 2's 300x400 canvas, and a padding row.
  together = stats([([0, 1, 1], np.array([True, True, False]))])
  # approx: COCOeval's precision tp / (tp + fp + eps) is 1 - 1e-16 for a single hit.
  assert alone == together and alone['AP50'] == pytest.approx(1.0)
  # The bookkeeping matters: scaling image 1 by the padded canvas would break it.
  ev = E.CocoEvaluator(gt)
  s, l, b = jax.jit(E.postprocess)(logits, norm, np.array([[300, 400], [300, 400]]))
  ev.add([1, 2], s, l, b)
  assert ev.summarize()['AP'] < alone['AP']


def test_perfect_detections(data):
  gt = data[0]
  by_img = {im['id']: [a for a in gt['annotations'] if a['image_id'] == im['id']
                       and not a['iscrowd']] for im in gt['images']}
  ev = E.CocoEvaluator(gt)
  for img_id, anns in by_img.items():
    q = max(len(anns), 1)
    b = np.zeros((1, q, 4))
    l = np.ones((1, q), np.int32)
    s = np.zeros((1, q))  # image without ground truth gets one (false positive) box
    for k, a in enumerate(anns):
      x, y, w, h = a['bbox']
      b[0, k], l[0, k], s[0, k] = [x, y, x + w, y + h], a['category_id'], 1.0
    if not anns:
      b[0, 0], s[0, 0] = [0, 0, 5, 5], 0.01
    ev.add([img_id], s, l, b)
  st = ev.summarize()
  for k in ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR100', 'ARs', 'ARm', 'ARl'):
    assert st[k] == 1.0, (k, st)


def test_zero_detections():
  gt = {'images': [{'id': 1, 'height': 200, 'width': 200}, {'id': 2, 'height': 50,
                                                           'width': 60}],
        'categories': CATS, 'annotations': [
            {'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [10, 10, 100, 120],
             'area': 12000, 'iscrowd': 0},
            {'id': 2, 'image_id': 1, 'category_id': 3, 'bbox': [10, 10, 50, 50],
             'area': 2500, 'iscrowd': 0}]}
  # Reference: loadRes cannot take [], but a detection of a category absent from the
  # ground truth is dropped by COCOeval, which leaves exactly "no detections".
  ref = reference_stats(gt, [{'image_id': 1, 'category_id': 99, 'bbox': [0, 0, 9, 9],
                              'score': 0.5}])
  ev = E.CocoEvaluator(gt)
  assert list(ev.summarize().values()) == ref  # nothing added: all images, no dets
  ev.add([1, 2], np.zeros((2, 0)), np.zeros((2, 0), np.int32), np.zeros((2, 0, 4)))
  st = ev.summarize()
  assert list(st.values()) == ref
  assert st['AP'] == 0.0 and st['APm'] == 0.0 and st['APl'] == 0.0 and st['AR100'] == 0.0
  assert st['APs'] == -1.0 and st['ARs'] == -1.0  # no small ground truth


def test_crowd_regions_ignore_detections():
  gt = {'images': [{'id': 1, 'height': 300, 'width': 300}], 'categories': CATS,
        'annotations': [
            {'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [10, 10, 50, 50],
             'area': 2500, 'iscrowd': 0},
            {'id': 2, 'image_id': 1, 'category_id': 1, 'bbox': [100, 100, 190, 190],
             'area': 20000, 'iscrowd': 1}]}
  hit = [10, 10, 60, 60]
  on_crowd = [[120, 120, 160, 160], [200, 150, 280, 250]]  # inside the crowd region

  def ap(boxes, scores):
    ev = E.CocoEvaluator(gt)
    ev.add([1], np.array([scores]), np.ones((1, len(boxes)), np.int32), np.array([boxes]))
    return ev.summarize()['AP']

  # approx: one hit gives precision 1 / (1 + eps) in COCOeval.
  assert ap([hit], [0.5]) == pytest.approx(1.0)
  assert ap([hit] + on_crowd, [0.5, 0.9, 0.8]) == pytest.approx(1.0)  # not false +
  assert ap([hit, [250, 10, 290, 50]], [0.5, 0.9]) < 0.9  # a real false positive


def test_errors(data):
  gt, dets, _ = data
  ev = E.CocoEvaluator(gt)
  i = next(iter(dets))
  s, l, b = (x[None] for x in dets[i])
  ev.add([i], s, l, b)
  with pytest.raises(ValueError, match='added twice'):
    ev.add([i], s, l, b)
  with pytest.raises(ValueError, match='not in the ground truth'):
    ev.add([12345], s, l, b)
  ev.add([12345], s, l, b, valid=[False])  # padding rows are not checked
  bad = copy.deepcopy(gt)
  bad['annotations'][0]['id'] = 0
  with pytest.raises(ValueError, match='>= 1'):
    E.CocoEvaluator(bad)


# ---- ground truth from tfds records ------------------------------------------------


def _png(h, w):
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buf, format='PNG')
  return buf.getvalue()


def _dataset():
  import tensorflow as tf
  # (image/id, h, w, bbox (ymin, xmin, ymax, xmax) fractions, labels, crowd, area)
  recs = [
      (7, 40, 60, [[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.5, 0.25]], [0, 79], [False, True],
       [123, 0]),
      (9, 30, 20, np.zeros((0, 4)), [], [], []),
      (4, 16, 32, [[0.5, 0.25, 1.0, 0.75]], [11], [False], [50]),
  ]

  def gen():
    for img_id, h, w, bbox, lab, crowd, area in recs:
      yield {'image': _png(h, w), 'image/id': np.int64(img_id),
             'objects': {'bbox': np.asarray(bbox, np.float32).reshape(-1, 4),
                         'label': np.asarray(lab, np.int64),
                         'is_crowd': np.asarray(crowd, bool),
                         'area': np.asarray(area, np.int64)}}

  sig = {'image': tf.TensorSpec([], tf.string), 'image/id': tf.TensorSpec([], tf.int64),
         'objects': {'bbox': tf.TensorSpec([None, 4], tf.float32),
                     'label': tf.TensorSpec([None], tf.int64),
                     'is_crowd': tf.TensorSpec([None], tf.bool),
                     'area': tf.TensorSpec([None], tf.int64)}}
  return tf.data.Dataset.from_generator(gen, output_signature=sig)


def test_groundtruth_from_tfds():
  gt = E.groundtruth_from_tfds(_dataset())
  assert gt['images'] == [{'id': 7, 'height': 40, 'width': 60},
                          {'id': 9, 'height': 30, 'width': 20},
                          {'id': 4, 'height': 16, 'width': 32}]
  assert gt['annotations'] == [
      {'id': 1, 'image_id': 7, 'category_id': 0, 'bbox': [30.0, 10.0, 30.0, 20.0],
       'area': 123.0, 'iscrowd': 0},
      {'id': 2, 'image_id': 7, 'category_id': 79, 'bbox': [0.0, 0.0, 15.0, 20.0],
       'area': 300.0, 'iscrowd': 1},  # area 0 in the record -> w * h
      {'id': 3, 'image_id': 4, 'category_id': 11, 'bbox': [8.0, 8.0, 16.0, 8.0],
       'area': 50.0, 'iscrowd': 0}]
  assert [c['id'] for c in gt['categories']] == list(range(80))

  gt91 = E.groundtruth_from_tfds(_dataset(), label_map='coco91')
  assert [a['category_id'] for a in gt91['annotations']] == [1, 90, 13]
  assert len(gt91['categories']) == 80 and gt91['categories'][-1] == {
      'id': 90, 'name': 'toothbrush'}
  # Usable as evaluator ground truth as is.
  ev = E.CocoEvaluator(gt91)
  ev.add([7, 9, 4], np.ones((3, 1)), np.array([[1], [1], [13]]),
         np.array([[[30, 10, 60, 30]], [[0, 0, 1, 1]], [[8, 8, 24, 16]]], np.float64))
  assert ev.summarize()['AP50'] == pytest.approx(1.0)


def test_groundtruth_from_tfds_builder():
  """A builder is read with images left encoded and its label names become categories."""
  import tensorflow_datasets as tfds
  calls = {}

  class Label:
    names = [f'n{i}' for i in range(80)]

  class FakeBuilder:
    info = type('Info', (), {'features': {'image': None, 'objects': {'label': Label()}},
                             'file_format': tfds.core.file_adapters.FileFormat.ARRAY_RECORD})()

    def as_data_source(self, split, decoders, file_format):
      calls.update(split=split, decoders=decoders, file_format=file_format)
      return list(tfds.as_numpy(_dataset()))  # random access, images encoded

  gt = E.groundtruth_from_tfds(FakeBuilder(), 'validation')
  assert calls['split'] == 'validation' and calls['file_format'] == 'array_record'
  assert isinstance(calls['decoders']['image'], tfds.decode.SkipDecoding)
  assert gt['categories'][3] == {'id': 3, 'name': 'n3'} and len(gt['images']) == 3
