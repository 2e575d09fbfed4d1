"""Tests of swin_jax/data/detection_pipeline.py (DETR's input pipeline)."""

import logging
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from swin_jax.data import coco_ids
from swin_jax.data import detection_pipeline as dp
from swin_jax.data import input_pipeline as ip
from swin_jax.data import loader

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
GREY = 100  # test images are flat grey: normalised (100/255 - .5)/.25 != 0
LOGGER = 'swin_jax.data.detection_pipeline'


def small_cfg(**overrides):
  """A config for tiny images: every field set, DETR's structure kept."""
  fields = dict(
      dataset='coco/2017', data_dir=None, train_split='train',
      eval_split='validation', num_classes=None, mean=MEAN, std=STD,
      label_map=None, train_scales=(32, 40, 48), max_size=64, flip=True,
      crop=True, crop_scales=(36, 44), crop_size=(24, 40), eval_scale=48,
      pad_size=64, max_boxes=4, cache=False,
      # One read thread, one batch ahead: the tests take few batches.
      num_threads=1, prefetch=1)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def example(image_id, h, w, bbox=(), labels=(), crowd=None, corrupt=False,
            image=None):
  """One coco/2017-style example with the image PNG-encoded (or garbage)."""
  if image is None:
    image = np.full((h, w, 3), GREY, np.uint8)
  n = len(labels)
  return {
      'image': b'\x89PNG not really' if corrupt else
               tf.io.encode_png(image).numpy(),
      'image/id': np.int64(image_id),
      'objects': {
          'bbox': np.asarray(bbox, np.float32).reshape(n, 4),
          'label': np.asarray(labels, np.int64),
          'is_crowd': np.asarray(crowd if crowd is not None else [False] * n,
                                 bool),
      },
  }


def train_it(examples, cfg=None, batch_size=2, seed=0, start_step=0,
             process_index=0, process_count=1):
  """The train iterator over `examples` (a list: random access, as a tfds
  ArrayRecord source)."""
  cfg = cfg or small_cfg()
  parsed = dp.parse_config(cfg)
  ds = dp.train_dataset(examples, parsed, batch_size=batch_size, seed=seed,
                        start_step=start_step, process_index=process_index,
                        process_count=process_count,
                        read=loader.read_config(cfg))
  return dp.DetectionIterator(ds, max_boxes=parsed.max_boxes)


def eval_it(examples, cfg=None, batch_size=2, process_index=0,
            process_count=1):
  cfg = cfg or small_cfg()
  parsed = dp.parse_config(cfg)
  ds = dp.eval_dataset(examples, parsed, batch_size=batch_size,
                       process_index=process_index,
                       process_count=process_count,
                       read=loader.read_config(cfg))
  return dp.DetectionIterator(ds, max_boxes=parsed.max_boxes, name='eval')


def many_examples(n=12):
  rng = np.random.RandomState(0)
  out = []
  for i in range(n):
    k = rng.randint(0, 4)
    y0, x0 = rng.uniform(0, .5, [2, k])
    hh, ww = rng.uniform(.1, .5, [2, k])
    out.append(example(100 + i, rng.randint(24, 60), rng.randint(24, 60),
                       np.stack([y0, x0, y0 + hh, x0 + ww], 1),
                       rng.randint(0, 10, k)))
  return out


# --------------------------------------------------------------------------
# The resize rule.
# --------------------------------------------------------------------------


def detr_size(h, w, size, max_size):
  """datasets/transforms.py get_size_with_aspect_ratio, transcribed (h, w)."""
  if max_size is not None:
    mn, mx = float(min(w, h)), float(max(w, h))
    if mx / mn * size > max_size:
      size = int(round(max_size * mn / mx))
  if (w <= h and w == size) or (h <= w and h == size):
    return h, w
  if w < h:
    return int(size * h / w), size
  return size, int(size * w / h)


def tf_size(h, w, size, max_size):
  oh, ow = dp.get_size_with_aspect_ratio(h, w, size, max_size)
  return int(oh), int(ow)


@pytest.mark.parametrize('h, w, size, max_size, want', [
    (480, 640, 800, 1333, (800, 1066)),  # 800 * 640 / 480 = 1066.7, truncated
    (640, 480, 800, 1333, (1066, 800)),
    (800, 1000, 800, 1333, (800, 1000)),  # shorter side already 800
    # cap binds: 1500/500*800 > 1333 -> size = round(444.33) = 444.
    (500, 1500, 800, 1333, (444, 1332)),
    # cap at a half: round(1335 * 100 / 200 = 667.5) = 668 (half to even),
    # so the longer side overshoots max_size (1336 > 1335) as in DETR.
    (100, 200, 800, 1335, (668, 1336)),
    (427, 640, 800, None, (800, 1199)),
])
def test_resize_rule_hand_cases(h, w, size, max_size, want):
  assert detr_size(h, w, size, max_size) == want
  assert tf_size(h, w, size, max_size) == want


def test_resize_rule_matches_detr_on_random_sizes():
  rng = np.random.RandomState(0)
  h, w = rng.randint(1, 2000, [2, 3000])
  size = rng.choice([400, 480, 512, 600, 800], 3000)
  oh, ow = dp.get_size_with_aspect_ratio(h, w, size, 1333)
  want = np.array([detr_size(*a, 1333) for a in zip(h, w, size)])
  np.testing.assert_array_equal(np.stack([oh, ow], 1), want)


# --------------------------------------------------------------------------
# Box ops.
# --------------------------------------------------------------------------


def test_hflip_mirrors_boxes():
  image = np.zeros((20, 100, 3), np.uint8)
  image[:, :10] = 255
  out, boxes = dp.hflip(tf.constant(image), tf.constant([[10., 2., 30., 8.]]))
  np.testing.assert_array_equal(out.numpy()[:, -10:], 255)
  np.testing.assert_allclose(boxes.numpy(), [[70., 2., 90., 8.]])


def test_crop_drops_outside_and_clamps_partial_boxes():
  image = tf.zeros([100, 100, 3], tf.uint8)
  boxes = tf.constant([
      [30., 30., 40., 40.],  # inside the region: shifted by (-20, -20)
      [10., 10., 30., 30.],  # partial: clamped to (0, 0, 10, 10)
      [80., 80., 90., 90.],  # outside: dropped
      [0., 40., 15., 60.],  # left of the region: zero width, dropped
      [60., 65., 95., 99.],  # partial at the far corner: clamped to 50
  ])
  labels = tf.constant([1, 2, 3, 4, 5])
  # region = (top, left, height, width): pixels y, x in [20, 70).
  out, boxes, labels = dp.crop(image, boxes, labels, (20, 20, 50, 50))
  assert out.shape == (50, 50, 3)
  np.testing.assert_allclose(
      boxes.numpy(), [[10, 10, 20, 20], [0, 0, 10, 10], [40, 45, 50, 50]])
  np.testing.assert_array_equal(labels.numpy(), [1, 2, 5])


def test_random_size_crop_bounds():
  image = tf.zeros([50, 70, 3], tf.uint8)
  boxes = tf.zeros([0, 4])
  labels = tf.zeros([0], tf.int32)
  sizes = set()
  for s in range(40):
    out, _, _ = dp.random_size_crop(image, boxes, labels,
                                    tf.constant([s, 1]), 24, 60)
    h, w = out.shape[:2]
    assert 24 <= h <= 50 and 24 <= w <= 60
    sizes.add((h, w))
  assert len(sizes) > 10


def test_coco_targets_crowd_clip_and_empty():
  objects = {
      'bbox': tf.constant([[.1, .1, .5, .5],  # kept
                           [.2, .2, .6, .6],  # crowd: dropped
                           [-.1, .5, .5, 1.2],  # outside: clipped, counted
                           [.3, .3, .3, .6]]),  # zero height: dropped
      'label': tf.constant([1, 2, 3, 4], tf.int64),
      'is_crowd': tf.constant([False, True, False, False]),
  }
  boxes, labels, num_clipped = dp.coco_targets([10, 20], objects)
  np.testing.assert_allclose(boxes.numpy(), [[2, 1, 10, 5], [10, 0, 20, 5]],
                             atol=1e-5)
  np.testing.assert_array_equal(labels.numpy(), [1, 3])
  assert int(num_clipped) == 1
  _, labels, _ = dp.coco_targets([10, 20], objects, label_map='coco91')
  np.testing.assert_array_equal(labels.numpy(), coco_ids.COCO91_IDS[[1, 3]])


# --------------------------------------------------------------------------
# Batches.
# --------------------------------------------------------------------------


def test_eval_box_normalised_by_unpadded_size_and_mask():
  # 41 x 60 -> eval_scale 40: (40, int(40 * 60 / 41) = 58), padded to 64.
  # Pixel box (x0, y0, x1, y1) = (30, 10.25, 60, 30.75) in the source.
  ex = example(7, 41, 60, [[.25, .5, .75, 1.]], [3])
  batch = next(eval_it([ex], small_cfg(eval_scale=40), batch_size=1))
  assert batch['size'].tolist() == [[40, 58]]
  assert batch['orig_size'].tolist() == [[41, 60]]
  # cxcywh / (58, 40, 58, 40) of the resized box, NOT / the 64 x 64 pad:
  # x: (30, 60) * 58/60 = (29, 58) -> cx 43.5/58 = .75, w 29/58 = .5.
  np.testing.assert_allclose(batch['boxes'][0, 0], [.75, .5, .5, .5],
                             atol=1e-6)
  assert batch['valid'][0].tolist() == [True, False, False, False]
  assert batch['labels'][0, 0] == 3 and batch['image_id'][0] == 7
  mask = batch['image_mask'][0]
  want = np.ones((64, 64), bool)
  want[:40, :58] = False
  np.testing.assert_array_equal(mask, want)
  image = batch['image'][0]
  np.testing.assert_array_equal(image[mask], 0.0)
  np.testing.assert_allclose(image[~mask], (GREY / 255 - .5) / .25, atol=1e-6)


def test_train_batches_shapes_mask_and_sizes():
  cfg = small_cfg()
  it = train_it(many_examples(), cfg, batch_size=4)
  for _ in range(3):
    batch = next(it)
    assert batch['image'].shape == (4, 64, 64, 3)
    assert batch['image'].dtype == np.float32
    assert batch['image_mask'].shape == (4, 64, 64)
    assert batch['boxes'].shape == (4, 4, 4)
    assert batch['labels'].dtype == np.int32 and batch['valid'].dtype == bool
    assert set(batch) == {'image', 'image_mask', 'boxes', 'labels', 'valid'}
    for image, mask in zip(batch['image'], batch['image_mask']):
      h = int((~mask[:, 0]).sum())
      w = int((~mask[0]).sum())
      want = np.ones((64, 64), bool)
      want[:h, :w] = False
      np.testing.assert_array_equal(mask, want)  # top-left rectangle
      assert min(h, w) in cfg.train_scales or max(h, w) >= 60  # DETR's rule
      np.testing.assert_array_equal(image[mask], 0.0)
    boxes = batch['boxes'][batch['valid']]
    assert np.all(boxes[:, 2:] > 0) and np.all(boxes >= 0)
    assert np.all(boxes[:, :2] - boxes[:, 2:] / 2 >= -1e-6)
    assert np.all(boxes[:, :2] + boxes[:, 2:] / 2 <= 1 + 1e-6)
    assert np.all(batch['boxes'][~batch['valid']] == 0)


def test_flip_mirrors_cx_and_keeps_labels():
  # No resize (scale = the shorter side) and no crop: only the flip acts.
  cfg = small_cfg(train_scales=(40,), crop=False)
  ex = example(1, 40, 50, [[.2, .1, .6, .3]], [7])
  it = train_it([ex], cfg, batch_size=8)
  batch = next(it)
  cx = batch['boxes'][:, 0, 0]
  flipped = np.isclose(cx, 1 - .2, atol=1e-6)
  assert np.all(flipped | np.isclose(cx, .2, atol=1e-6))
  assert 0 < flipped.sum() < 8  # both happen
  np.testing.assert_allclose(batch['boxes'][:, 0, 1:],
                             np.tile([.4, .2, .4], (8, 1)), atol=1e-6)
  assert np.all(batch['labels'][:, 0] == 7) and batch['valid'][:, 0].all()


def test_crop_branch_keeps_boxes_inside_crop():
  # Only the crop branch changes the visible extent; boxes must stay valid
  # and sometimes get cut or dropped.
  cfg = small_cfg(flip=False)
  ex = example(1, 60, 60, [[0, 0, 1, 1], [.05, .05, .15, .15]], [1, 2])
  batch = next(train_it([ex], cfg, batch_size=16))
  counts = batch['valid'].sum(1)
  # The full-image box survives every crop, still covering the whole image.
  np.testing.assert_allclose(batch['boxes'][:, 0], np.tile([.5, .5, 1, 1],
                                                           (16, 1)), atol=1e-6)
  assert counts.min() == 1 and counts.max() == 2  # the corner box: cropped out
  small = batch['boxes'][counts == 2, 1]
  assert np.all(small[:, :2] - small[:, 2:] / 2 >= -1e-6)


def test_determinism_and_resume():
  # A resumed iterator equal to a fresh one's tail also shows that two
  # iterators with one seed agree (the shuffle spans epochs: 12 examples),
  # whatever the read threads and prefetch.
  exs = many_examples()
  fresh = train_it(exs, seed=3)
  first = [next(fresh) for _ in range(9)]
  resumed = train_it(exs, small_cfg(num_threads=4, prefetch=4), seed=3,
                     start_step=7)
  for want in first[7:]:
    got = next(resumed)
    assert set(got) == set(want)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  other = next(train_it(exs, seed=4))
  assert not np.array_equal(other['image'], first[0]['image'])


def test_train_rows_are_the_per_example_ops_seeded_by_the_global_index():
  """A batch (one TF call for all rows) equals the ops run eagerly on each
  row's record, seeded by fold_in([seed, 0], g), g the global element index:
  bit for bit, as the tf.data pipeline's per-element map gave."""
  exs = many_examples()
  cfg = dp.parse_config(small_cfg())
  seed, step, b = 5, 3, 4
  order = loader.TrainOrder(local_batch=b, num_records=len(exs), seed=seed)
  batch = next(train_it(exs, batch_size=b, seed=seed, start_step=step))
  for row, g in enumerate(order.global_indices(step)):
    ex = exs[order.record(g)]
    image = ip.decode_image(ex['image'])
    boxes, labels, _ = dp.coco_targets(tf.shape(image)[:2], ex['objects'])
    elem_seed = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, 0], tf.int64), g)
    want = dp.pad_and_pack(*dp.augment_train(image, boxes, labels, elem_seed,
                                             cfg), cfg)
    for key in ('image', 'image_mask', 'boxes', 'labels', 'valid'):
      np.testing.assert_array_equal(batch[key][row], want[key].numpy())


def test_processes_compute_their_rows_of_the_global_batch():
  exs = many_examples()
  for start in (0, 5):  # 5: past the first epoch (12 examples, B = 4)
    one = next(train_it(exs, batch_size=4, seed=1, start_step=start))
    halves = [next(train_it(exs, batch_size=2, seed=1, start_step=start,
                            process_index=p, process_count=2))
              for p in range(2)]
    for key in one:
      np.testing.assert_array_equal(
          np.concatenate([h[key] for h in halves]), one[key])


def test_image_without_boxes():
  exs = [example(1, 40, 40), example(2, 40, 40, [[.1, .1, .5, .5]], [1])]
  batch = next(train_it(exs, batch_size=2))  # one epoch: both, shuffled
  assert sorted(batch['valid'].sum(1).tolist()) == [0, 1]
  batch = next(eval_it(exs))
  assert batch['valid'][0].sum() == 0 and batch['mask'].all()


# --------------------------------------------------------------------------
# Bad inputs and config errors.
# --------------------------------------------------------------------------


def test_pad_size_too_small_is_a_config_error():
  with pytest.raises(ValueError, match=r'config\.input\.pad_size.*64'):
    dp.parse_config(small_cfg(pad_size=(64, 48)))
  with pytest.raises(ValueError, match=r'config\.input\.max_size'):
    dp.parse_config(small_cfg(max_size=None))
  assert dp.parse_config(small_cfg(pad_size=None)).pad_size == (64, 64)
  with pytest.raises(ValueError, match=r'config\.input\.label_map'):
    dp.parse_config(small_cfg(label_map='coco80'))


def test_too_many_boxes_names_max_boxes_and_image_id():
  boxes = [[.1 * i, .1, .1 * i + .05, .2] for i in range(6)]
  exs = [example(1, 40, 40), example(4242, 40, 40, boxes, range(6))]
  with pytest.raises(ValueError,
                     match=r'4242 has 6 boxes.*config\.input\.max_boxes=4'):
    list(eval_it(exs))
  with pytest.raises(ValueError, match=r'config\.input\.max_boxes=4'):
    it = train_it(exs, small_cfg(crop=False))
    for _ in range(4):
      next(it)
  # Crowd and empty boxes do not count.
  ok = example(5, 40, 40, boxes, range(6), crowd=[True] * 2 + [False] * 4)
  assert next(eval_it([ok]))['valid'].sum() == 4


def test_box_outside_image_is_clipped_and_warned_once(caplog):
  exs = [example(i, 40, 40, [[-.2, .5, .5, 1.3]], [1]) for i in range(4)]
  with caplog.at_level(logging.WARNING, logger=LOGGER):
    it = eval_it(exs)
    batches = list(it)
  assert it.stats['clipped_boxes'] == 4
  warnings = [r for r in caplog.records if 'clipped' in r.getMessage()]
  assert len(warnings) == 1
  # (y .. .5, x .5 .. 1) of the image: cxcywh = (.75, .25, .5, .5).
  np.testing.assert_allclose(batches[0]['boxes'][:, 0],
                             [[.75, .25, .5, .5]] * 2, atol=1e-6)


def test_corrupt_images_are_skipped_and_counted(caplog):
  exs = many_examples(8)
  exs[2] = example(102, 40, 40, corrupt=True)
  exs[7] = example(107, 40, 40, corrupt=True)  # the last record
  with caplog.at_level(logging.WARNING, logger=LOGGER):
    it = eval_it(exs, batch_size=3)
    batches = list(it)
  assert len(batches) == 3  # ceil(8 / 3), whatever was skipped
  ids = np.concatenate([b['image_id'][b['mask']] for b in batches])
  assert ids.tolist() == [100, 101, 103, 104, 105, 106]
  # Their rows are padding rows: all zeros, mask False.
  assert batches[0]['mask'].tolist() == [True, True, False]
  assert batches[2]['mask'].tolist() == [True, False, False]  # 7: corrupt, 8: past N
  for row in (batches[0], 2), (batches[2], 1):
    assert not any(v[row[1]].any() for v in row[0].values())
  assert it.stats['skipped_images'] == 2 and it.stats['examples'] == 6
  logged = [r.getMessage() for r in caplog.records]
  assert any('skipped 1 image' in m for m in logged)
  assert any('skipped 2 image' in m for m in logged)  # logged again: doubled
  # Train: a corrupt record's row reads the next record index that decodes,
  # with its own global index (seed): record 2 -> 3, 6 -> 7 (corrupt) -> 0,
  # 7 -> 0. So the batches are those of a split holding those records there,
  # full, and each corrupt record read is counted.
  exs[6] = example(106, 40, 40, corrupt=True)
  fixed = list(exs)
  fixed[2], fixed[6], fixed[7] = exs[3], exs[0], exs[0]
  it, want_it = train_it(exs, batch_size=3), train_it(fixed, batch_size=3)
  for _ in range(6):  # 18 elements = 2+ epochs of 8
    got, want = next(it), next(want_it)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  order = loader.TrainOrder(local_batch=3, num_records=8, seed=0)
  reads = {2: 1, 6: 2, 7: 1}  # corrupt records read per row
  skips = sum(reads.get(order.record(g), 0) for g in range(18))
  assert skips >= 8  # every epoch reads each record once
  assert it.stats['skipped_images'] == skips and it.stats['examples'] == 18
  assert want_it.stats['skipped_images'] == 0


def test_errors_other_than_a_corrupt_image_raise(monkeypatch):
  """Only a failed decode is skipped: an op failing on good images (a bug)
  raises from the iterator."""
  def broken(image, boxes, *args, **kwargs):  # slices past the image's end
    image, boxes = resize(image, boxes, *args, **kwargs)
    return tf.slice(image, [0, 0, 0], tf.shape(image) + [1, 0, 0]), boxes

  resize = dp.resize
  monkeypatch.setattr(dp, 'resize', broken)
  monkeypatch.setattr(dp.loader, '_TRACED', {})  # traced here, broken; dropped after
  cfg = small_cfg(flip=False, crop=False)  # small graphs: cheap to trace
  exs = many_examples(4)
  with pytest.raises(tf.errors.InvalidArgumentError):
    next(train_it(exs, cfg))
  with pytest.raises(tf.errors.InvalidArgumentError):
    next(eval_it(exs, cfg))


def test_oversized_image_cropped_to_pad():
  # 10 x 20 at scale 8, max_size 7: size = round(3.5) = 4 -> 4 x 8 > 7.
  cfg = small_cfg(eval_scale=8, max_size=7, pad_size=7, train_scales=(8,),
                  crop_scales=(8,), crop_size=(4, 8))
  ex = example(1, 10, 20, [[0, 0, 1, 1]], [1])
  it = eval_it([ex], cfg, batch_size=1)
  batch = next(it)
  assert batch['size'].tolist() == [[4, 7]]
  np.testing.assert_allclose(batch['boxes'][0, 0], [.5, .5, 1, 1])
  assert it.stats['oversized_images'] == 1


# --------------------------------------------------------------------------
# TFDS: coco/2017 (mocked) through the trainer's entry points.
# --------------------------------------------------------------------------

MOCK_SIZES = {'train': 10, 'validation': 5}


def _mock_example(split, i):
  """coco/2017's record i as its tfds ArrayRecord source gives it: the image
  encoded, objects as lists of numpy values."""
  rng = np.random.RandomState([len(split), i])
  h, w = rng.randint(20, 70, 2)
  k = rng.randint(0, 4)
  y0, x0 = rng.uniform(0, .5, [2, k])
  bbox = np.stack([y0, x0, y0 + .3, x0 + .4], 1).astype(np.float32)
  return {
      'image': tf.io.encode_jpeg(
          rng.randint(0, 255, (h, w, 3)).astype(np.uint8)).numpy(),
      'image/id': (1000 if split == 'validation' else 0) + i,
      'image/filename': f'{i:012d}.jpg'.encode(),
      'objects': {'bbox': list(bbox.reshape(k, 4)),
                  'label': list(rng.randint(0, 80, k).astype(np.int64)),
                  'is_crowd': list(np.arange(k) == 2),
                  'area': list(np.ones(k, np.int64)),
                  'id': list(np.arange(k, dtype=np.int64))},
  }


class _MockSource:
  """Random access to a split's mock records; logs (split, index) reads."""

  def __init__(self, name, skip, take, reads):
    self.name, self.skip, self.take, self.reads = name, skip, take, reads

  def __len__(self):
    return self.take

  def __getitem__(self, i):
    self.reads.append((self.name, self.skip + i))
    return _mock_example(self.name, self.skip + i)


@pytest.fixture(scope='module')
def coco_metadata_dir(tmp_path_factory):
  """A data dir holding coco/2017's dataset_info (ArrayRecord) with small
  splits."""
  data_dir = str(tmp_path_factory.mktemp('coco_tfds'))
  builder = tfds.builder('coco/2017', data_dir=data_dir, try_gcs=False,
                         file_format='array_record')
  splits = [tfds.core.SplitInfo(
      name=name, shard_lengths=[n], num_bytes=0,
      filename_template=tfds.core.ShardedFileTemplate(
          data_dir=builder.data_dir, dataset_name='coco', split=name,
          template='{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}',
          filetype_suffix='array_record')) for name, n in MOCK_SIZES.items()]
  builder.info.set_splits(tfds.core.SplitDict(splits))
  os.makedirs(builder.data_dir)
  builder.info.write_to_directory(builder.data_dir)
  return data_dir


@pytest.fixture
def mock_coco(coco_metadata_dir):
  """coco/2017 with mocked records (the real metadata files of the data
  dir make get_builder's is_prepared check pass unpatched)."""
  data_dir = coco_metadata_dir
  reads = []

  def as_data_source_fn(self, split, decoders=None, **kwargs):
    del kwargs
    assert isinstance(decoders['image'], tfds.decode.SkipDecoding)
    (fi,) = self.info.splits[split].file_instructions
    name = os.path.basename(fi.filename).split('-')[1].split('.')[0]
    return _MockSource(name, fi.skip, fi.take, reads)

  with tfds.testing.mock_data(as_data_source_fn=as_data_source_fn,
                              data_dir=data_dir,
                              policy=tfds.testing.MockPolicy.USE_FILES):
    yield data_dir, reads


def test_mock_coco_train_and_eval(mock_coco):
  data_dir, _ = mock_coco
  cfg = small_cfg(data_dir=data_dir, label_map='coco91', num_classes=91)
  it = dp.make_detection_train_iterator(cfg, global_batch_size=4, seed=0)
  batch = next(it)
  assert batch['image'].shape == (4, 64, 64, 3)
  labels = batch['labels'][batch['valid']]
  assert np.isin(labels, coco_ids.COCO91_IDS).all()
  it = dp.make_detection_eval_iterator(cfg, split='validation',
                                       global_batch_size=4)
  batches = list(it)
  assert len(batches) == 2
  ids = np.concatenate([b['image_id'][b['mask']] for b in batches])
  assert sorted(ids.tolist()) == [1000, 1001, 1002, 1003, 1004]
  assert it.stats == {'examples': 5, 'skipped_images': 0, 'clipped_boxes': 0,
                      'oversized_images': 0}
  with pytest.raises(ValueError, match=r'config\.input\.num_classes=80.*91'):
    dp.make_detection_train_iterator(small_cfg(
        data_dir=data_dir, label_map='coco91', num_classes=80),
        global_batch_size=4, seed=0)


def test_mock_coco_processes_read_their_rows_of_the_global_batch(mock_coco):
  data_dir, requested = mock_coco
  cfg = small_cfg(data_dir=data_dir, num_classes=80)
  whole = list(dp.make_detection_eval_iterator(cfg, split='train', global_batch_size=4))
  parts, its = [], []
  for p in range(2):
    del requested[:]
    it = dp.make_detection_eval_iterator(cfg, split='train', global_batch_size=4,
                                         process_index=p, process_count=2)
    parts.append(list(it))
    its.append(it)
    # It read its own rows' records only, once each: (g mod 4) // 2 == p.
    assert sorted(requested) == [('train', g) for g in range(10) if g % 4 // 2 == p]
  assert len(whole) == len(parts[0]) == len(parts[1]) == 3  # ceil(10 / 4)
  for k in range(3):  # side by side: one process's global eval batches
    for key in ('image_id', 'mask', 'image', 'boxes', 'valid'):
      np.testing.assert_array_equal(
          np.concatenate([parts[0][k][key], parts[1][k][key]]), whole[k][key])
  ids = [{int(i) for b in part for i in b['image_id'][b['mask']]} for part in parts]
  assert not ids[0] & ids[1] and ids[0] | ids[1] == set(range(10))
  assert [it.stats['examples'] for it in its] == [6, 4]  # rows 0-1 of 4, 4, 2 real
  assert all(it.stats['skipped_images'] == 0 for it in its)
  del requested[:]
  one = next(dp.make_detection_train_iterator(cfg, global_batch_size=4, seed=0))
  halves = [next(dp.make_detection_train_iterator(
      cfg, global_batch_size=4, seed=0, process_index=p, process_count=2)) for p in range(2)]
  for key in ('image', 'image_mask', 'boxes', 'labels', 'valid'):
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), one[key])
  assert {split for split, _ in requested} == {'train'}


def test_digits_detection_train_and_eval(detection_tfds_dir):
  cfg = small_cfg(
      dataset='digits_detection', data_dir=detection_tfds_dir,
      eval_split='test', num_classes=10, train_scales=(64, 80, 96),
      max_size=128, crop_scales=(64, 80), crop_size=(48, 64), eval_scale=96,
      pad_size=128, max_boxes=4)
  batch = next(dp.make_detection_train_iterator(cfg, global_batch_size=8,
                                                seed=0))
  assert batch['image'].shape == (8, 128, 128, 3)
  assert batch['valid'].any() and batch['labels'].max() < 10
  it = dp.make_detection_eval_iterator(cfg, split='test', global_batch_size=64)
  batches = list(it)
  assert len(batches) == 4  # ceil(250 / 64)
  ids = np.concatenate([b['image_id'][b['mask']] for b in batches])
  assert sorted(ids.tolist()) == list(range(2001, 2251))
  assert it.stats['examples'] == 250 and it.stats['skipped_images'] == 0
  assert it.stats['clipped_boxes'] == 0
  sizes = np.concatenate([b['size'][b['mask']] for b in batches])
  assert (sizes.min(1) == 96).any() and sizes.max() <= 128  # DETR's rule
