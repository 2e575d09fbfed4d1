"""Tests of swin_jax.data: the sklearn_digits builder and input pipeline."""

import socket
import time

import ml_collections
import numpy as np
import pytest
from sklearn import datasets as sk_datasets
import tensorflow as tf

from swin_jax import data
from swin_jax.data import digits
from swin_jax.data import input_pipeline as ip

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _no_network(*args, **kwargs):
  raise AssertionError(f'network access attempted: {args!r}')


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A TFDS data dir with sklearn_digits prepared once, with sockets blocked."""
  path = str(tmp_path_factory.mktemp('tfds'))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(socket.socket, 'connect', _no_network)
    mp.setattr(socket.socket, 'connect_ex', _no_network)
    mp.setattr(socket, 'create_connection', _no_network)
    mp.setattr(socket, 'getaddrinfo', _no_network)
    start = time.perf_counter()
    builder = data.prepare_embedded(path)
    print(f'prepare_embedded: {time.perf_counter() - start:.2f}s')
  assert builder.is_prepared()
  return path


@pytest.fixture(scope='session')
def sk_digits():
  d = sk_datasets.load_digits()
  return d.images, d.target


def make_cfg(data_dir, **overrides):
  cfg = ml_collections.ConfigDict(dict(
      dataset='sklearn_digits', data_dir=data_dir, train_split='train',
      eval_split='test', image_size=16, num_classes=10, mean=MEAN, std=STD,
      train_augment='digits', eval_resize='direct',
      cache=True))
  cfg.update(overrides)
  return cfg


def read_split(data_dir, split):
  source = data.prepare_embedded(data_dir).as_data_source(split=split)
  return [source[i] for i in range(len(source))]


def take(it, n):
  return [next(it) for _ in range(n)]


def test_prepare_is_idempotent(data_dir):
  start = time.perf_counter()
  builder = data.prepare_embedded(data_dir)
  assert time.perf_counter() - start < 5
  assert builder.version == '1.1.0'
  assert '1.1.0' in digits.SklearnDigits.RELEASE_NOTES
  assert builder.info.file_format.value == 'array_record'
  assert [builder.info.splits[s].num_shards for s in ('train', 'test')] == [4, 4]
  assert builder.info.features['label'].num_classes == 10


def test_split_sizes_and_disjoint(data_dir, sk_digits):
  train = {int(e['id']) for e in read_split(data_dir, 'train')}
  test = {int(e['id']) for e in read_split(data_dir, 'test')}
  assert (len(train), len(test)) == (1437, 360)
  assert not train & test
  assert train | test == set(range(1797))
  cfg = make_cfg(data_dir)
  assert data.get_num_examples(cfg, 'train') == 1437
  assert data.get_num_examples(cfg, 'test') == 360
  # Stratified: every class has 20% +- 1 of its examples in test.
  labels = sk_digits[1]
  for c in range(10):
    n_c = np.sum(labels == c)
    n_test = np.sum(labels[sorted(test)] == c)
    assert abs(n_test - n_c * 360 / 1797) <= 1


def test_split_is_deterministic():
  labels = np.arange(1797) % 10
  a = digits.stratified_split(labels)
  b = digits.stratified_split(labels)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])


def test_images_equal_sklearn_source(data_dir, sk_digits):
  images, labels = sk_digits
  examples = (read_split(data_dir, 'test')[:5]
              + read_split(data_dir, 'train')[:5])
  for e in examples:
    i = int(e['id'])
    grey = np.floor(images[i] * 255.0 / 16.0 + 0.5).astype(np.uint8)
    assert e['image'].shape == (8, 8, 3) and e['image'].dtype == np.uint8
    for ch in range(3):
      np.testing.assert_array_equal(e['image'][..., ch], grey)
    assert int(e['label']) == labels[i]


def test_batch_shapes_and_dtypes(data_dir):
  cfg = make_cfg(data_dir, image_size=32)
  batch = next(data.make_train_iterator(cfg, global_batch_size=64, seed=0))
  assert set(batch) == {'image', 'label'}
  assert batch['image'].shape == (64, 32, 32, 3)
  assert batch['image'].dtype == np.float32
  assert batch['label'].shape == (64,) and batch['label'].dtype == np.int32
  batch = next(data.make_eval_iterator(cfg, split='test', global_batch_size=64))
  assert set(batch) == {'image', 'label', 'mask'}
  assert batch['image'].shape == (64, 32, 32, 3)
  assert batch['image'].dtype == np.float32
  assert batch['label'].dtype == np.int32 and batch['mask'].dtype == bool
  # Per process: global batch / process count.
  batch = next(data.make_train_iterator(cfg, global_batch_size=64, seed=0,
                                        process_index=1, process_count=4))
  assert batch['image'].shape == (16, 32, 32, 3)


def test_normalisation_of_constant_image():
  values = np.array([0.0, 100.0, 255.0], np.float32)
  image = tf.constant(np.broadcast_to(values, (8, 8, 3)).astype(np.uint8))
  for resize in ('direct', 'center_crop'):
    out = ip.preprocess_eval(image, size=24, eval_resize=resize, mean=MEAN,
                             std=STD).numpy()
    expected = (values / 255.0 - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(out, np.broadcast_to(expected, (24, 24, 3)),
                               rtol=1e-5, atol=1e-5)


def test_pipeline_pixels_equal_source(data_dir, sk_digits):
  """At image_size 8 with mean 0 / std 1, eval images are the source / 255."""
  images, labels = sk_digits
  cfg = make_cfg(data_dir, image_size=8, mean=(0.0,) * 3, std=(1.0,) * 3)
  ds = ip.make_eval_dataset(cfg, split='test', global_batch_size=50,
                            keep_keys=('id',))
  batch = next(iter(ds))
  for img, label, i in zip(batch['image'], batch['label'], batch['id']):
    grey = np.floor(images[i] * 255.0 / 16.0 + 0.5)
    np.testing.assert_allclose(img * 255.0, np.repeat(grey[..., None], 3, -1),
                               atol=1e-3)
    assert label == labels[i]


def test_train_is_deterministic_and_resumable(data_dir):
  cfg = make_cfg(data_dir)
  kw = dict(global_batch_size=64, seed=3)
  fresh = take(data.make_train_iterator(cfg, **kw), 25)
  again = take(data.make_train_iterator(cfg, **kw), 8)
  for a, b in zip(fresh, again):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  # 1437 / 64 = 22.5 batches per epoch: start_step 23 resumes in epoch 2.
  for start in (5, 23):
    resumed = take(data.make_train_iterator(cfg, start_step=start, **kw), 2)
    for a, b in zip(fresh[start:start + 2], resumed):
      np.testing.assert_array_equal(a['image'], b['image'])  # Bitwise.
      np.testing.assert_array_equal(a['label'], b['label'])
  other = next(data.make_train_iterator(cfg, global_batch_size=64, seed=4))
  assert not np.array_equal(other['image'], fresh[0]['image'])


def test_train_epochs_are_permutations_and_reshuffled(data_dir):
  cfg = make_cfg(data_dir, train_augment='none')
  ds = ip.make_train_dataset(cfg, global_batch_size=479, seed=0,
                             keep_keys=('id',))
  ids = np.concatenate([b['id'] for b in take(iter(ds), 6)])
  epoch1, epoch2 = ids[:1437], ids[1437:2874]
  assert sorted(epoch1) == sorted(epoch2)
  assert len(set(epoch1)) == 1437
  assert not np.array_equal(epoch1, epoch2)


def test_processes_read_their_rows_of_the_global_batch(data_dir):
  """Process p of 2 holds rows [p*b, (p+1)*b) of every global batch: the two halves
  side by side are exactly one process's batch (ids, augmented pixels, labels), so the
  global batch does not depend on the process count; neither reads the other's rows."""
  cfg = make_cfg(data_dir)
  all_train = sorted(int(e['id']) for e in read_split(data_dir, 'train'))
  stream = lambda **kw: iter(ip.make_train_dataset(
      cfg, global_batch_size=256, seed=0, keep_keys=('id',), **kw))
  one = take(stream(), 6)  # 1536 elements: the first epoch and a bit
  halves = [take(stream(process_index=p, process_count=2), 6) for p in range(2)]
  for k in range(6):
    for key in ('id', 'label', 'image'):
      np.testing.assert_array_equal(
          np.concatenate([halves[0][k][key], halves[1][k][key]]), one[k][key])
    if k < 5:  # within the first epoch (batch 5 holds its end and the next's start)
      assert not set(halves[0][k]['id']) & set(halves[1][k]['id'])
  ids = np.concatenate([b['id'] for b in one])
  assert sorted(ids[:1437].tolist()) == all_train  # the global stream: each example once
  # Resuming at global batch 3 gives each process its rows of batch 3 on.
  resumed = take(stream(process_index=1, process_count=2, start_step=3), 2)
  for k in range(2):
    np.testing.assert_array_equal(resumed[k]['image'], halves[1][3 + k]['image'])

  # Eval: the same ceil(360 / 64) = 6 batches in each process; side by side they are
  # one process's global eval batches (the last one: 40 real rows, 24 padding).
  whole = list(ip.make_eval_dataset(
      cfg, split='test', global_batch_size=64, keep_keys=('id',)))
  parts = [list(ip.make_eval_dataset(
      cfg, split='test', global_batch_size=64, process_index=p, process_count=2,
      keep_keys=('id',))) for p in range(2)]
  assert len(whole) == len(parts[0]) == len(parts[1]) == 6
  for k in range(6):
    assert parts[0][k]['image'].shape[0] == parts[1][k]['image'].shape[0] == 32
    for key in ('id', 'mask', 'image', 'label'):
      np.testing.assert_array_equal(
          np.concatenate([parts[0][k][key], parts[1][k][key]]), whole[k][key])
  assert [int(p[-1]['mask'].sum()) for p in parts] == [32, 8]
  seen = [i for p in parts for b in p for i in b['id'][b['mask']].tolist()]
  assert sorted(seen) == sorted(int(e['id']) for e in read_split(data_dir, 'test'))


def test_num_owned_counts_a_process_rows():
  for b, n in ((3, 2), (4, 3), (1, 1)):
    for p in range(n):
      for size in range(0, 40):
        want = sum(1 for i in range(size) if (i % (b * n)) // b == p)
        assert ip.num_owned(size, b, p, n) == want, (b, n, p, size)


def test_eval_covers_every_example_once(data_dir, sk_digits):
  cfg = make_cfg(data_dir)
  batches = list(data.make_eval_iterator(cfg, split='test',
                                         global_batch_size=64))
  assert len(batches) == 6
  assert [int(b['mask'].sum()) for b in batches] == [64] * 5 + [40]
  assert all(b['image'].shape == (64, 16, 16, 3) for b in batches)
  last = batches[-1]
  assert last['mask'][:40].all() and not last['mask'][40:].any()
  assert not last['image'][40:].any() and not last['label'][40:].any()

  ds = ip.make_eval_dataset(cfg, split='test', global_batch_size=64,
                            keep_keys=('id',))
  id_batches = list(ds)
  ids = np.concatenate([b['id'][b['mask']] for b in id_batches])
  test_ids = sorted(int(e['id']) for e in read_split(data_dir, 'test'))
  assert len(ids) == 360 and sorted(ids.tolist()) == test_ids
  labels = np.concatenate([b['label'][b['mask']] for b in batches])
  np.testing.assert_array_equal(labels, sk_digits[1][ids])
  # Deterministic order (also across the memoised, cached dataset).
  again = list(data.make_eval_iterator(cfg, split='test',
                                       global_batch_size=64))
  for a, b in zip(batches, again):
    np.testing.assert_array_equal(a['image'], b['image'])


def test_missing_dataset_error(tmp_path):
  cfg = make_cfg(str(tmp_path), dataset='imagenet2012',
                 eval_split='validation', num_classes=1000)
  with pytest.raises(FileNotFoundError) as err:
    data.get_num_examples(cfg, 'validation')
  assert isinstance(err.value, data.DatasetNotFoundError)
  msg = str(err.value)
  for needle in ('config.input.dataset', 'config.input.data_dir',
                 'tfds build imagenet2012', 'downloads/manual',
                 'ILSVRC2012_img_train.tar', str(tmp_path)):
    assert needle in msg
  with pytest.raises(FileNotFoundError, match='config.input.dataset'):
    next(data.make_train_iterator(cfg, global_batch_size=8, seed=0))
  cfg.dataset = 'no_such_dataset_xyz'
  with pytest.raises(data.DatasetNotFoundError, match='tfds build'):
    data.get_num_examples(cfg, 'train')


def test_builders_leave_no_temp_dirs(tmp_path, monkeypatch):
  """tfds's DatasetInfo.initialize_from_bucket makes tempfile.mkdtemp('tfds') for a builder
  whose data is not prepared and leaves it there, empty (hundreds piled up in /tmp):
  preparing the embedded set and looking up an unprepared dataset leave none behind."""
  import tempfile
  scratch = tmp_path / 'tmp'
  scratch.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(scratch))
  digits.prepare_embedded(str(tmp_path / 'data'))  # not prepared yet: the probe runs
  with pytest.raises(data.DatasetNotFoundError):
    data.get_num_examples(make_cfg(str(tmp_path / 'none'), dataset='imagenet2012',
                                   eval_split='validation', num_classes=1000), 'validation')
  assert [p.name for p in scratch.iterdir() if p.name.endswith('tfds')] == []


def test_config_errors(data_dir):
  cfg = make_cfg(data_dir, eval_split='validation')
  with pytest.raises(ValueError, match=r"config.input.eval_split.*'test'"):
    data.make_eval_iterator(cfg, split='validation', global_batch_size=8)
  cfg = make_cfg(data_dir, train_split='nope')
  with pytest.raises(ValueError, match=r'config.input.train_split.*train'):
    data.make_train_iterator(cfg, global_batch_size=8, seed=0)
  cfg = make_cfg(data_dir, train_augment='flip')
  with pytest.raises(ValueError, match=r'train_augment.*inception_crop'):
    data.make_train_iterator(cfg, global_batch_size=8, seed=0)
  cfg = make_cfg(data_dir, eval_resize='crop')
  with pytest.raises(ValueError, match=r'eval_resize.*center_crop'):
    data.make_eval_iterator(cfg, split='test', global_batch_size=8)
  cfg = make_cfg(data_dir)
  with pytest.raises(ValueError, match='config.batch_size'):
    data.make_train_iterator(cfg, global_batch_size=9, seed=0,
                             process_count=2)
  with pytest.raises(ValueError, match='config.batch_size'):
    data.make_eval_iterator(cfg, split='test', global_batch_size=9,
                            process_count=2)
  cfg = make_cfg(data_dir, num_classes=1000)
  with pytest.raises(ValueError, match='config.input.num_classes'):
    data.make_train_iterator(cfg, global_batch_size=8, seed=0)


def test_digits_augment_translates_and_keeps_label(data_dir, sk_digits):
  images, labels = sk_digits
  cfg = make_cfg(data_dir, image_size=8, mean=(0.0,) * 3, std=(1.0,) * 3)
  ds = ip.make_train_dataset(cfg, global_batch_size=64, seed=0,
                             keep_keys=('id',))
  batch = next(iter(ds))
  shifted = 0
  for img, label, i in zip(batch['image'], batch['label'], batch['id']):
    assert img.shape == (8, 8, 3)
    assert label == labels[i]
    grey = np.floor(images[i] * 255.0 / 16.0 + 0.5)
    m = ip.DIGITS_MAX_SHIFT
    padded = np.pad(grey, m)
    got = img[..., 0] * 255.0
    np.testing.assert_allclose(img[..., 1:] * 255.0,
                               np.repeat(got[..., None], 2, -1), atol=1e-3)
    # The result is an 8x8 window of the m-pixel zero-padded source.
    matches = [(dy, dx) for dy in range(2 * m + 1) for dx in range(2 * m + 1)
               if np.allclose(padded[dy:dy + 8, dx:dx + 8], got, atol=1e-3)]
    assert matches, f'id {i} is not a translation of its source'
    shifted += (m, m) not in matches
  assert shifted > 0


def test_inception_crop_on_synthetic_image():
  image = tf.constant(
      np.random.RandomState(0).randint(0, 256, (40, 56, 3)), tf.uint8)
  seed = tf.constant([1, 2], tf.int64)
  out = ip.inception_crop(image, seed, 32).numpy()
  assert out.shape == (32, 32, 3) and out.dtype == np.float32
  assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 255.001
  np.testing.assert_array_equal(out, ip.inception_crop(image, seed, 32).numpy())
  other = ip.inception_crop(image, tf.constant([1, 3], tf.int64), 32).numpy()
  assert not np.array_equal(out, other)
  square = tf.constant(
      np.random.RandomState(1).randint(0, 256, (24, 24, 3)), tf.uint8)
  norm = ip.preprocess_train(square, seed, size=24, augment='inception_crop',
                             mean=MEAN, std=STD)
  assert norm.shape == (24, 24, 3)  # Shape preserved.
  crop = ip.center_crop(image, 32).numpy()
  assert crop.shape == (32, 32, 3)


def test_inception_crop_pipeline_runs(data_dir):
  cfg = make_cfg(data_dir, train_augment='inception_crop')
  batch = next(data.make_train_iterator(cfg, global_batch_size=32, seed=0))
  assert batch['image'].shape == (32, 16, 16, 3)
  assert np.isfinite(batch['image']).all()


def test_tf_does_not_see_accelerators():
  assert not tf.config.get_visible_devices('GPU')


def test_resume_at_random_steps_replays_the_same_example_ids(data_dir):
  """A run stopped and resumed at random steps (several times, across epoch ends) reads the
  same sequence of (id, augmented image) as the uninterrupted run, on a 4-file split."""
  builder = data.prepare_embedded(data_dir)
  assert builder.info.splits['train'].num_shards >= 4
  cfg = make_cfg(data_dir, cache=False)
  kw = dict(global_batch_size=100, seed=11, keep_keys=('id',))
  total = 40  # 4000 elements: nearly 3 epochs of 1437
  whole = take(iter(ip.make_train_dataset(cfg, **kw)), total)
  stops = sorted(np.random.RandomState(5).choice(np.arange(1, total), 4, replace=False))
  pieces, start = [], 0
  for stop in list(stops) + [total]:
    pieces += take(iter(ip.make_train_dataset(cfg, start_step=start, **kw)), stop - start)
    start = stop
  np.testing.assert_array_equal(np.concatenate([b['id'] for b in pieces]),
                                np.concatenate([b['id'] for b in whole]))
  for a, b in zip(pieces, whole):
    np.testing.assert_array_equal(a['image'], b['image'])
  # Every epoch is a fresh permutation of the split (global shuffle, not a buffer).
  ids = np.concatenate([b['id'] for b in whole])
  epochs = [ids[k * 1437:(k + 1) * 1437] for k in range(2)]
  assert all(sorted(e.tolist()) == sorted(set(e.tolist())) and len(e) == 1437
             for e in epochs)
  assert not np.array_equal(epochs[0], epochs[1])


class _CountingSource:
  def __init__(self, source):
    self.source, self.reads = source, []

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    self.reads.append(i)
    return self.source[i]


def test_resume_cost_does_not_grow_with_the_step(data_dir, monkeypatch):
  """Resuming at step 10**6 reads the records of its batch first, and nothing of the steps
  before it (no replay of the stream), and reaches its first batch as fast as step 0
  (within 20%, best of 5, + 30 ms: a first batch here takes ~65 ms)."""
  sources = []
  real_open = ip.loader.open_source

  def counting_open(*args, **kwargs):
    sources.append(_CountingSource(real_open(*args, **kwargs)))
    return sources[-1]

  monkeypatch.setattr(ip.loader, 'open_source', counting_open)
  cfg = make_cfg(data_dir, cache=False, num_threads=1, prefetch=1)
  first = {}
  for start in (0, 10**6) * 5:
    t0 = time.perf_counter()
    batch = next(iter(ip.make_train_dataset(cfg, global_batch_size=64, seed=0,
                                            start_step=start)))
    first[start] = min(first.get(start, np.inf), time.perf_counter() - t0)
    assert batch['image'].shape == (64, 16, 16, 3)
    # Its own 64 records, and at most the next batch's (one read thread prefetching).
    assert 64 <= len(sources[-1].reads) <= 128, (start, len(sources[-1].reads))
  order = ip.loader.TrainOrder(local_batch=64, num_records=1437, seed=0)
  assert sources[-1].reads[:64] == [order.record(g)
                                    for g in range(64 * 10**6, 64 * (10**6 + 1))]
  assert first[10**6] <= 1.2 * first[0] + 0.03, first


def test_read_threads_and_workers_do_not_change_the_batches(data_dir):
  """config.input.num_threads / prefetch / num_workers split the work by whole batches: the
  stream is the same with 1 thread, 4 threads, or 2 grain worker processes."""
  kw = dict(global_batch_size=32, seed=2, start_step=40, keep_keys=('id',))
  streams = {}
  for threads, workers in ((1, 0), (4, 0), (1, 2)):
    cfg = make_cfg(data_dir, cache=False, num_threads=threads, prefetch=2,
                   num_workers=workers)
    it = iter(ip.make_train_dataset(cfg, **kw))
    streams[threads, workers] = [{k: np.array(v) for k, v in b.items()} for b in take(it, 4)]
    it.close()
  ref = streams[1, 0]
  for got in streams.values():
    for a, b in zip(ref, got):
      np.testing.assert_array_equal(a['id'], b['id'])
      np.testing.assert_array_equal(a['image'], b['image'])


def test_num_threads_default_is_four_or_the_cores_if_fewer(monkeypatch):
  """config.input.num_threads=None (configs/common.py): min(4, the process's cores)."""
  cfg = ml_collections.ConfigDict({'num_threads': ml_collections.FieldReference(
      None, field_type=int)})
  for cores, want in ((1, 1), (2, 2), (3, 3), (4, 4), (96, 4)):
    monkeypatch.setattr(ip.loader.os, 'sched_getaffinity', lambda pid, n=cores: set(range(n)))
    assert ip.loader.read_config(cfg).num_threads == want, cores
  cfg.num_threads = 8  # an explicit value is kept
  assert ip.loader.read_config(cfg).num_threads == 8


@pytest.mark.parametrize('field,value', [('num_threads', 0), ('prefetch', 1.5),
                                         ('num_workers', -1), ('num_threads', True)])
def test_read_settings_errors_name_the_field(data_dir, field, value):
  with pytest.raises(ValueError, match=rf'config\.input\.{field}={value!r} must be an integer'):
    ip.make_train_dataset(make_cfg(data_dir, **{field: value}), global_batch_size=8, seed=0)
