"""Tests of swin_jax/data/digits_detection.py: the embedded detection dataset."""

import types

import numpy as np
import pytest
import tensorflow_datasets as tfds

from swin_jax.data import digits as digits_lib
from swin_jax.data import digits_detection as dd
from swin_jax.data import input_pipeline
from swin_jax.data import prepare_embedded_detection

# coco/2017's tensor spec (tfds 4.9): what `get_tensor_info()` of its features
# gives, hard-coded so the test also pins it where coco's builder cannot load.
COCO_TENSOR_INFO = {
    'image': ((None, None, 3), np.uint8),
    'image/filename': ((), np.object_),
    'image/id': ((), np.int64),
    'objects': {
        'area': ((None,), np.int64),
        'bbox': ((None, 4), np.float32),
        'id': ((None,), np.int64),
        'is_crowd': ((None,), np.bool_),
        'label': ((None,), np.int64),
    },
}
# Bilinear spreads a glyph's outermost ink at most half a source pixel
# (s/16 <= 44/16 = 2.75 px) beyond its box; pixel centres further out are
# pure background.
FRINGE_PX = dd.DIGIT_MAX / 16


@pytest.fixture(scope='module')
def builder(detection_tfds_dir):
  return prepare_embedded_detection(detection_tfds_dir)


def _read_split(builder, split):
  """The split's examples in storage order (its ArrayRecord data source),
  objects as numpy arrays of their feature's shape and dtype."""
  info = _tensor_info(builder.info.features)['objects']
  source = builder.as_data_source(split=split)
  out = []
  for i in range(len(source)):
    ex = dict(source[i])
    ex['objects'] = {k: np.asarray(v, info[k][1]).reshape((-1,) + info[k][0][1:])
                     for k, v in ex['objects'].items()}
    out.append(ex)
  return out


@pytest.fixture(scope='module')
def examples(builder):
  """split -> list of numpy examples, in the builder's (fixed) order."""
  return {split: _read_split(builder, split) for split in dd.SPLIT_SIZES}


@pytest.fixture(scope='module')
def source():
  images, labels = digits_lib.load_source()
  train_ids, test_ids = digits_lib.stratified_split(labels)
  return types.SimpleNamespace(images=images, labels=labels,
                               ids={'train': train_ids, 'test': test_ids})


def _tensor_info(features):
  """Nested {key: (shape, numpy dtype)} of a FeaturesDict's tensors."""
  def conv(info):
    if isinstance(info, dict):
      return {k: conv(v) for k, v in info.items()}
    return (tuple(info.shape), np.dtype(info.np_dtype).type)
  return conv(features.get_tensor_info())


def _pixel_boxes(ex):
  """float64 [n, 4] (x_min, y_min, x_max, y_max) in px of an example."""
  h, w = ex['image'].shape[:2]
  ymin, xmin, ymax, xmax = np.asarray(ex['objects']['bbox'], np.float64).T
  return np.stack([xmin * w, ymin * h, xmax * w, ymax * h], axis=-1)


def test_split_sizes(builder, examples):
  assert builder.info.splits['train'].num_examples == 2000
  assert builder.info.splits['test'].num_examples == 250
  assert len(examples['train']) == 2000 and len(examples['test']) == 250


def test_features_match_coco(builder, tmp_path):
  ours = _tensor_info(builder.info.features)
  source_id = ours['objects'].pop('source_id')  # Our one extra field.
  assert source_id == ((None,), np.int64)
  assert ours == COCO_TENSOR_INFO
  assert builder.info.features['objects']['label'].names == [
      str(i) for i in range(10)]
  try:
    with digits_lib.gcs_disabled():
      coco = tfds.builder('coco/2017', data_dir=str(tmp_path))
  except Exception as e:  # pylint: disable=broad-except
    pytest.skip(f'coco/2017 builder unavailable offline ({e}); '
                'compared with the hard-coded spec only')
  assert _tensor_info(coco.info.features) == COCO_TENSOR_INFO
  for key in ('area', 'bbox', 'id', 'is_crowd', 'label'):
    assert (type(builder.info.features['objects'][key])
            is type(coco.info.features['objects'][key])), key
  for key in ('image', 'image/filename', 'image/id'):
    assert type(builder.info.features[key]) is type(coco.info.features[key])


def test_sources_disjoint_and_labels(examples, source):
  used = {}
  for split, exs in examples.items():
    ids = np.concatenate([ex['objects']['source_id'] for ex in exs])
    labels = np.concatenate([ex['objects']['label'] for ex in exs])
    np.testing.assert_array_equal(labels, source.labels[ids])
    used[split] = set(ids.tolist())
    assert used[split] <= set(source.ids[split].tolist())
  assert not used['train'] & used['test']
  # Uniform draws, ~2.2 per canvas: train covers ~95%, test ~78% of its ids.
  assert len(used['train']) > 0.9 * len(source.ids['train'])
  assert len(used['test']) > 0.7 * len(source.ids['test'])


def test_ids_areas_and_canvas_sizes(examples):
  image_ids, object_ids = [], []
  for exs in examples.values():
    for ex in exs:
      h, w, c = ex['image'].shape
      assert 64 <= h <= 112 and 64 <= w <= 112 and c == 3
      image_ids.append(ex['image/id'])
      assert ex['image/filename'].decode() == f"{ex['image/id']:012d}.png"
      obj = ex['objects']
      object_ids.extend(obj['id'].tolist())
      assert not obj['is_crowd'].any()
      boxes = _pixel_boxes(ex)
      area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
      np.testing.assert_allclose(obj['area'], area, atol=0.51)
  assert sorted(image_ids) == list(range(1, 2251))
  assert len(set(object_ids)) == len(object_ids) and min(object_ids) >= 1


def test_some_canvases_are_empty(examples):
  for split, want in (('train', 40), ('test', 5)):
    counts = np.array([len(ex['objects']['label']) for ex in examples[split]])
    assert (counts == 0).sum() == want
    assert counts.max() == 4 and counts.min() == 0


def test_boxes_are_exact_ink_extents(examples, source):
  """Each box is (x0 + c0*s/8, ...) of an integer paste offset and size.

  From the source digit's ink rows/cols alone, a box's width and height must
  give the same integer side s in [14, 44] and integer offsets (x0, y0) that
  keep the s x s square inside the canvas; squares must not overlap.
  """
  for exs in examples.values():
    for ex in exs:
      h, w = ex['image'].shape[:2]
      bbox = ex['objects']['bbox']
      assert (bbox >= 0).all() and (bbox <= 1).all()
      squares = []
      for box, sid in zip(_pixel_boxes(ex), ex['objects']['source_id']):
        ink = source.images[sid] > 0
        rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
        s_x = 8 * (box[2] - box[0]) / (cols[-1] + 1 - cols[0])
        s_y = 8 * (box[3] - box[1]) / (rows[-1] + 1 - rows[0])
        s = round(s_x)
        # float32 normalised boxes carry ~1e-5 px of rounding.
        assert abs(s_x - s) < 1e-3 and abs(s_y - s) < 1e-3, (s_x, s_y)
        assert 14 <= s <= 44
        x0, y0 = box[0] - cols[0] * s / 8, box[1] - rows[0] * s / 8
        assert abs(x0 - round(x0)) < 1e-3 and abs(y0 - round(y0)) < 1e-3
        x0, y0 = round(x0), round(y0)
        assert 0 <= x0 and x0 + s <= w and 0 <= y0 and y0 + s <= h
        squares.append((x0, y0, s))
      for i, (ax, ay, a) in enumerate(squares):
        for bx, by, b in squares[:i]:
          assert (ax + a + 1 <= bx or bx + b + 1 <= ax or
                  ay + a + 1 <= by or by + b + 1 <= ay)


def test_pixels_background_outside_and_ink_at_box_edges(examples):
  """The visible glyph fills its box: background far out, ink at each edge.

  The background level b is estimated as the median of the far pixels (the
  noise is symmetric and clipped to +-18; the median of thousands of them
  may miss b by 1, hence `bound` = 18 + 1), far = pixel centre more than the
  bilinear fringe away from every box. Checks the test split and 250 train
  canvases (all 2,250 pass; the subset keeps the test fast).
  """
  bound = dd.NOISE_BOUND + 1
  for exs in (examples['test'], examples['train'][:250]):
    for ex in exs:
      img = ex['image'].astype(np.int64)
      h, w = img.shape[:2]
      yc, xc = np.mgrid[:h, :w] + 0.5  # pixel centres
      boxes = _pixel_boxes(ex)
      far = np.ones((h, w), bool)
      for x0, y0, x1, y1 in boxes:
        far &= ~((xc > x0 - FRINGE_PX) & (xc < x1 + FRINGE_PX) &
                 (yc > y0 - FRINGE_PX) & (yc < y1 + FRINGE_PX))
      grey = img[far]
      assert (grey == grey[:, :1]).all()  # Background is grey: R = G = B.
      b = np.median(grey[:, 0])
      assert 0 <= b <= dd.BACKGROUND_MAX
      assert grey.max() <= b + bound and grey.min() >= max(0, b - bound)
      bright = img.max(axis=-1)
      for x0, y0, x1, y1 in boxes:
        # Rows / cols whose pixel centres lie inside the box.
        c0, c1 = int(np.ceil(x0 - 0.5)), int(np.floor(x1 - 0.5))
        r0, r1 = int(np.ceil(y0 - 0.5)), int(np.floor(y1 - 0.5))
        inside = bright[r0:r1 + 1, c0:c1 + 1]
        edges = (inside[:, 0], inside[:, -1], inside[0], inside[-1])
        for edge in edges:
          assert edge.max() > b + bound, (ex['image/id'], b, edges)


def test_stored_images_equal_a_fresh_render(examples, source):
  for split, exs in examples.items():
    for ex in exs[:5]:
      index = ex['image/id'] - 1 - dd.IMAGE_ID_OFFSETS[split]
      canvas = dd.render_canvas(split, index, source.images, source.ids[split])
      np.testing.assert_array_equal(ex['image'], canvas['image'])
      np.testing.assert_array_equal(ex['objects']['source_id'],
                                    canvas['source_ids'])


def test_deterministic_across_prepares_and_builder_configs(examples, tmp_path, monkeypatch):
  """Second prepares, in another dir, write identical canvases, in both builder configs.

  Canvas i is a pure function of (split, i), so a prepare of only the first canvases per
  split (a full one costs ~10 s, 10k ~45 s) must reproduce, index for index, those of the
  session's full dataset: in '2k' and in '10k' (whose first train canvases are 2k's and
  whose test canvases are the same; only the test ids move past its train ids).
  """
  monkeypatch.setattr(dd, 'TRAIN_SIZES', {'2k': 30, '10k': 40})
  monkeypatch.setattr(dd, 'TEST_SIZE', 20)
  full = {split: {ex['image/id'] - 1 - dd.IMAGE_ID_OFFSETS[split]: ex for ex in exs}
          for split, exs in examples.items()}
  for config, n_train in (('2k', 30), ('10k', 40)):
    again = prepare_embedded_detection(str(tmp_path), config=config)
    assert again.builder_config.name == config
    assert again.info.splits['train'].num_examples == n_train
    assert again.info.splits['test'].num_examples == 20
    for split, offset in (('train', 0), ('test', n_train)):
      firsts = _read_split(again, split)
      assert sorted(b['image/id'] for b in firsts) == list(
          range(offset + 1, offset + len(firsts) + 1))
      for b in firsts:
        index = b['image/id'] - 1 - offset
        if index >= len(full[split]):
          continue
        a = full[split][index]
        np.testing.assert_array_equal(a['image'], b['image'])
        for key in a['objects']:
          if key != 'id':  # object id = image id * 10 + j
            np.testing.assert_array_equal(a['objects'][key], b['objects'][key])
        np.testing.assert_array_equal(b['objects']['id'] // dd.OBJECT_ID_STRIDE,
                                      b['image/id'])
  with pytest.raises(ValueError, match=r"digits_detection/5k.*\['2k', '10k'\]"):
    prepare_embedded_detection(str(tmp_path), config='5k')


def test_get_builder_prepares_embedded_detection(detection_tfds_dir):
  cfg = types.SimpleNamespace(dataset='digits_detection',
                              data_dir=detection_tfds_dir)
  builder = input_pipeline.get_builder(cfg)
  assert isinstance(builder, dd.DigitsDetection) and builder.is_prepared()
  assert builder.builder_config.name == dd.DEFAULT_CONFIG == '2k'
  assert builder.info.splits['train'].num_examples == 2000
  cfg.dataset = 'digits_detection/2k'  # the same builder, named with its config
  assert input_pipeline.get_builder(cfg).data_dir == builder.data_dir
  cfg.dataset = 'sklearn_digits/10k'
  with pytest.raises(ValueError, match='sklearn_digits has no builder configs'):
    input_pipeline.get_builder(cfg)
  assert set(input_pipeline.EMBEDDED_DATASETS) >= {
      'sklearn_digits', 'digits_detection'}
