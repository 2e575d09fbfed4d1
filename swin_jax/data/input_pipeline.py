"""Input pipelines for image classification (TFDS datasets, read by grain).

The trainer uses three functions:

  get_num_examples(input_cfg, split) -> int
  make_train_iterator(input_cfg, *, global_batch_size, seed, start_step=0,
                      process_index=0, process_count=1) -> Iterator[dict]
  make_eval_iterator(input_cfg, *, split, global_batch_size,
                     process_index=0, process_count=1) -> Iterator[dict]

Batches are dicts of numpy arrays with a local (per-process) batch size
b = global_batch_size // process_count:
  image: float32 [b, image_size, image_size, 3], normalised by mean/std.
  label: int32 [b].
  mask: bool [b] (eval only), True = real example, False = padding.

Train iterators are infinite, shuffled, deterministic and resumable: the
batch sequence is a pure function of (seed, dataset), and `start_step=s`
yields exactly the batches a fresh iterator yields from its s-th batch on,
in constant time. The split is a random-access ArrayRecord source, and
loader.TrainOrder says which record row r of step s of process p reads
(grain's global index shuffle, reseeded per epoch); process p of n holds
rows [p * b, (p + 1) * b) of each global batch of B = n * b, the rows its
devices hold in the global jax.Array (train/sharding.py). So 2 processes x 4
devices train on exactly the batches of 1 process x 8 devices, and a process
reads its own records only. All augmentation randomness is drawn from
stateless ops seeded by (seed, global index).

Eval iterators make one pass over the split in storage order, padded with
masked examples to ceil(N / B) global batches; process p keeps its rows of
each, so every process yields the same number of batches and the global eval
batches equal those of one process.

`input_cfg` fields (ml_collections.ConfigDict or any attribute object):
  dataset: TFDS name, 'sklearn_digits' (embedded, prepared on first use) or
    e.g. 'imagenet2012' (must be prepared beforehand; never downloaded).
  data_dir: TFDS data dir, None = TFDS default (env TFDS_DATA_DIR).
  train_split, eval_split: TFDS split names (slicing such as 'train[:90%]'
    is allowed).
  image_size: int, model input resolution.
  num_classes: int, checked against the dataset's ClassLabel.
  mean, std: per-channel, in 0..1 units.
  train_augment: 'digits' | 'inception_crop' | 'none' (the geometric part;
    'inception_crop' is timm's RandomResizedCrop, scale (0.08, 1), ratio
    (3/4, 4/3), + horizontal flip with probability 1/2).
  rand_augment: '' (off) or a timm RandAugment string such as
    'rand-m9-mstd0.5-inc1' (Swin / DeiT / Shunted), applied after the crop.
  color_jitter: float, 0 = off; torchvision ColorJitter(s, s, s). timm's
    create_transform drops color jitter whenever RandAugment is on, so setting
    both is refused rather than silently ignored.
  random_erasing: float probability, 0 = off; timm RandomErasing (mode
    'pixel', one box) on the normalised image.
  repeated_augmentation: int k >= 1; k > 1 repeats each example of the
    shuffled stream k times in a row, each copy augmented independently
    (DeiT's RASampler, over the global stream).
  eval_resize: 'direct' (resize to image_size, no crop: the 384 fine-tunes) |
    'center_crop' (shorter side to floor(image_size / 0.875), e.g. 256 for
    224, then the central crop).
  num_threads, prefetch, num_workers: how this host reads (loader.ReadConfig).
  cache: bool, hold the split's encoded records in memory (small datasets).

Train preprocessing order, as timm's transforms_imagenet_train: geometric
augment (crop + flip) -> RandAugment or color jitter (uint8) -> normalise ->
random erasing. Mixup / CutMix act on whole batches inside the jitted train
step (swin_jax/train/tasks.py), not here.
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import grain
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from swin_jax.data import augment as augment_lib
from swin_jax.data import digits as digits_lib
from swin_jax.data import digits_detection as detection_lib
from swin_jax.data import loader


def hide_accelerators_from_tf() -> None:
  """Keeps TF off GPUs/TPUs so it never grabs memory that JAX needs."""
  for kind in ('GPU', 'TPU'):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):  # Already initialised / no such kind.
      pass


hide_accelerators_from_tf()

TRAIN_AUGMENTS = ('digits', 'inception_crop', 'none')
EVAL_RESIZES = ('direct', 'center_crop')
# Embedded datasets (name -> prepare(data_dir)), prepared offline on first use.
EMBEDDED_DATASETS = {
    digits_lib.NAME: digits_lib.prepare_embedded,
    detection_lib.NAME: detection_lib.prepare_embedded_detection,
}
# Source pixels by which the 'digits' augmentation may translate the image.
DIGITS_MAX_SHIFT = 1  # of 8 source pixels; 2 shifts a quarter of the digit away
CENTER_CROP_FRACTION = 0.875  # timm DEFAULT_CROP_PCT; 224 / 256
# Stream ids folded into an example's seed, one per random op, so that adding
# an op never changes the draws of the others (existing runs stay identical).
_RAND_AUGMENT_STREAM = 1
_COLOR_JITTER_STREAM = 2
_RANDOM_ERASING_STREAM = 3
_REQUIRED = object()


class DatasetNotFoundError(FileNotFoundError):
  """The configured TFDS dataset is not prepared in the configured data_dir."""


class SplitNotFoundError(ValueError):
  """The configured split does not exist in the dataset."""


# --------------------------------------------------------------------------
# Config access and dataset lookup.
# --------------------------------------------------------------------------


def _cfg(input_cfg: Any, name: str, default: Any = _REQUIRED) -> Any:
  """Reads `input_cfg.<name>`; a clear error when a required one is missing."""
  try:
    value = getattr(input_cfg, name)
  except (AttributeError, KeyError):
    value = default
  if value is _REQUIRED:
    raise ValueError(f'config.input.{name} is required by the input pipeline.')
  return value


def _data_dir(input_cfg: Any) -> Optional[str]:
  data_dir = _cfg(input_cfg, 'data_dir', None)
  return os.path.expanduser(os.fspath(data_dir)) if data_dir else None


def _prepare_instructions(name: str, data_dir: Optional[str]) -> str:
  shown_dir = data_dir or os.environ.get('TFDS_DATA_DIR') or (
      '~/tensorflow_datasets')
  if name.startswith('imagenet2012'):
    return (
        f'To prepare ImageNet-1k: download ILSVRC2012_img_train.tar and '
        f'ILSVRC2012_img_val.tar (from image-net.org, login required) into '
        f'{shown_dir}/downloads/manual/ and run\n'
        f'  tfds build {name} --data_dir={shown_dir}\n'
        f'(or set config.input.dataset=sklearn_digits for the embedded '
        f'offline dataset).')
  return (
      f'Prepare it with\n  tfds build {name} --data_dir={shown_dir}\n'
      f'(datasets needing manual downloads read them from '
      f'{shown_dir}/downloads/manual/), or set '
      f'config.input.dataset=sklearn_digits for the embedded offline dataset.')


def get_builder(input_cfg: Any) -> tfds.core.DatasetBuilder:
  """Returns the prepared TFDS builder named by `input_cfg.dataset`.

  'sklearn_digits' is prepared on first use (offline, seconds). Any other
  dataset must already be prepared in `input_cfg.data_dir`; nothing is ever
  downloaded.

  Raises:
    DatasetNotFoundError: the dataset is unknown or not prepared.
  """
  name = _cfg(input_cfg, 'dataset')
  data_dir = _data_dir(input_cfg)
  base, _, builder_config = name.partition('/')  # 'digits_detection/10k'
  if base in EMBEDDED_DATASETS:
    return EMBEDDED_DATASETS[base](data_dir, config=builder_config or None)
  where = data_dir or 'the TFDS default data dir'
  try:
    with digits_lib.gcs_disabled():
      builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetNotFoundError(
        f'config.input.dataset={name!r} is neither a registered TFDS dataset '
        f'nor prepared in config.input.data_dir={data_dir!r} ({where}). '
        + _prepare_instructions(name, data_dir)) from e
  if not builder.is_prepared():
    raise DatasetNotFoundError(
        f'TFDS dataset config.input.dataset={name!r} is not prepared in '
        f'config.input.data_dir={data_dir!r} (looked in {builder.data_dir}). '
        f'The input pipeline never downloads. '
        + _prepare_instructions(name, data_dir))
  return builder


def _split_field(input_cfg: Any, split: str) -> str:
  for field in ('train_split', 'eval_split'):
    if _cfg(input_cfg, field, None) == split:
      return f'config.input.{field}'
  return 'split'


def _check_split(builder: tfds.core.DatasetBuilder, split: str,
                 field: str) -> int:
  """Returns the number of examples of `split`; raises if it does not exist."""
  available = sorted(builder.info.splits.keys())
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError, AssertionError) as e:
    raise SplitNotFoundError(
        f'{field}={split!r} is not a split of dataset '
        f'{builder.info.full_name!r}; available splits: {available}.') from e


def _check_num_classes(builder: tfds.core.DatasetBuilder,
                       input_cfg: Any) -> None:
  want = _cfg(input_cfg, 'num_classes', None)
  label = builder.info.features['label']
  have = getattr(label, 'num_classes', None)
  if want is not None and have is not None and int(want) != int(have):
    raise ValueError(
        f'config.input.num_classes={want} but dataset '
        f'{builder.info.full_name!r} has {have} classes.')


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(
        f'config.batch_size={global_batch_size} must be a positive multiple '
        f'of the number of processes ({process_count}).')
  return global_batch_size // process_count


num_owned = loader.num_owned


def get_num_examples(input_cfg: Any, split: str) -> int:
  """Number of examples in `split` of `input_cfg.dataset` (all processes)."""
  builder = get_builder(input_cfg)
  return _check_split(builder, split, _split_field(input_cfg, split))


# --------------------------------------------------------------------------
# Image ops. Images are uint8 [h, w, 3] tensors; seeds are int [2] tensors.
# --------------------------------------------------------------------------


def _check_choice(value: str, field: str, valid: Sequence[str]) -> str:
  if value not in valid:
    raise ValueError(
        f'config.input.{field}={value!r} is not valid; choose one of '
        f'{list(valid)}.')
  return value


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
  """Encoded bytes (png/jpeg/...) -> uint8 [h, w, 3]."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  return tf.ensure_shape(image, [None, None, 3])


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """Bilinear, antialiased resize to [size, size, 3] float32 (0..255 units)."""
  image = tf.image.resize(tf.cast(image, tf.float32), (size, size),
                          method='bilinear', antialias=True)
  return tf.ensure_shape(image, [size, size, 3])


def normalize(image: tf.Tensor, mean: Sequence[float],
              std: Sequence[float]) -> tf.Tensor:
  """float32 [..., 3] in 0..255 -> (x / 255 - mean) / std."""
  mean = tf.constant(mean, tf.float32)
  std = tf.constant(std, tf.float32)
  return (tf.cast(image, tf.float32) / 255.0 - mean) / std


def random_translate(image: tf.Tensor, seed: tf.Tensor,
                     max_shift: int = DIGITS_MAX_SHIFT) -> tf.Tensor:
  """Shifts by up to `max_shift` pixels per axis (zero pad + random crop).

  Args:
    image: uint8 [h, w, c] source image (before any resizing).
    seed: int [2] stateless seed.
    max_shift: maximum translation in source pixels.

  Returns:
    uint8 [h, w, c], zero-filled where the shift uncovered pixels.
  """
  shape = tf.shape(image)
  padded = tf.pad(image, [[max_shift, max_shift], [max_shift, max_shift],
                          [0, 0]])
  return tf.image.stateless_random_crop(padded, shape, seed=seed)


def inception_crop(image: tf.Tensor, seed: tf.Tensor, size: int,
                   area_range: Tuple[float, float] = (0.08, 1.0),
                   aspect_ratio_range: Tuple[float, float] = (3 / 4, 4 / 3),
                   flip: bool = True) -> tf.Tensor:
  """Inception-style random resized crop (+ horizontal flip).

  Args:
    image: uint8 [h, w, 3].
    seed: int [2] stateless seed.
    size: output resolution.
    area_range: range of the crop area as a fraction of the image area.
    aspect_ratio_range: range of the crop's width / height.
    flip: also flip left-right with probability 1/2.

  Returns:
    float32 [size, size, 3] in 0..255 units.
  """
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image),
      bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32,
                                 [1, 1, 4]),
      seed=crop_seed,
      min_object_covered=0.0,
      aspect_ratio_range=aspect_ratio_range,
      area_range=area_range,
      max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  image = tf.slice(image, begin, crop_size)
  image = resize(image, size)
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  return image


def center_crop(image: tf.Tensor, size: int,
                fraction: float = CENTER_CROP_FRACTION) -> tf.Tensor:
  """Resizes the shorter side to size / fraction, then central size x size crop.

  The shorter side becomes floor(size / fraction), as timm's
  transforms_imagenet_eval and the official Swin / DeiT eval transforms
  (int(256 / 224 * size)): 256 for 224, 438 for 384.

  Args:
    image: uint8 [h, w, 3].
    size: output resolution.
    fraction: crop size / resized shorter side (0.875 as in ImageNet eval).

  Returns:
    float32 [size, size, 3] in 0..255 units.
  """
  shape = tf.shape(image)
  h = tf.cast(shape[0], tf.float32)
  w = tf.cast(shape[1], tf.float32)
  short = float(math.floor(size / fraction + 1e-9))  # 224 / 0.875 = 256 exactly
  scale = short / tf.minimum(h, w)
  new_h = tf.maximum(tf.cast(tf.round(h * scale), tf.int32), size)
  new_w = tf.maximum(tf.cast(tf.round(w * scale), tf.int32), size)
  image = tf.image.resize(tf.cast(image, tf.float32), (new_h, new_w),
                          method='bilinear', antialias=True)
  top = (new_h - size) // 2
  left = (new_w - size) // 2
  image = image[top:top + size, left:left + size]
  return tf.ensure_shape(image, [size, size, 3])


def fill_color(mean: Sequence[float]) -> Tuple[int, ...]:
  """RandAugment's geometric fill: round(255 * mean), as timm's img_mean."""
  return tuple(min(255, round(255 * m)) for m in mean)


def preprocess_train(image: tf.Tensor, seed: tf.Tensor, *, size: int,
                     augment: str, mean: Sequence[float],
                     std: Sequence[float],
                     rand_augment: Optional[Dict[str, Any]] = None,
                     color_jitter: float = 0.0,
                     random_erasing: float = 0.0) -> tf.Tensor:
  """uint8 [h, w, 3] -> augmented, normalised float32 [size, size, 3].

  Args:
    image: uint8 [h, w, 3].
    seed: int [2] stateless seed of this example.
    size: output resolution.
    augment: the geometric augment, one of TRAIN_AUGMENTS.
    mean, std: per-channel normalisation, 0..1 units.
    rand_augment: kwargs of `augment.rand_augment` (parse_rand_augment of
      config.input.rand_augment), or None for none.
    color_jitter: torchvision ColorJitter strength, 0 = off.
    random_erasing: probability of timm's RandomErasing ('pixel'), 0 = off.

  Returns:
    float32 [size, size, 3], normalised.
  """
  if augment == 'digits':
    image = resize(random_translate(image, seed), size)
  elif augment == 'inception_crop':
    image = inception_crop(image, seed, size)
  elif augment == 'none':
    image = resize(image, size)
  else:
    _check_choice(augment, 'train_augment', TRAIN_AUGMENTS)
  fold = tf.random.experimental.stateless_fold_in
  seed = tf.cast(seed, tf.int64)
  if rand_augment is not None:
    # timm runs its ops on the PIL crop: uint8; bilinear stands in for the
    # bicubic resampling of the official runs (train_interpolation 'bicubic').
    image = augment_lib.rand_augment(
        image, fold(seed, _RAND_AUGMENT_STREAM), fill=fill_color(mean),
        interpolation='bilinear', **rand_augment)
  if color_jitter:
    image = augment_lib.color_jitter(image, fold(seed, _COLOR_JITTER_STREAM),
                                     color_jitter)
  image = normalize(image, mean, std)
  if random_erasing:
    image = augment_lib.random_erasing(
        image, fold(seed, _RANDOM_ERASING_STREAM), prob=random_erasing,
        mode='pixel')
  return image


def preprocess_eval(image: tf.Tensor, *, size: int, eval_resize: str,
                    mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
  """uint8 [h, w, 3] -> normalised float32 [size, size, 3]."""
  if eval_resize == 'direct':
    image = resize(image, size)
  elif eval_resize == 'center_crop':
    image = center_crop(image, size)
  else:
    _check_choice(eval_resize, 'eval_resize', EVAL_RESIZES)
  return normalize(image, mean, std)


# --------------------------------------------------------------------------
# Datasets.
# --------------------------------------------------------------------------


def _augment_options(input_cfg: Any) -> Dict[str, Any]:
  """The checked per-example options of the train augmentation.

  Returns:
    kwargs of `preprocess_train`: rand_augment, color_jitter, random_erasing.
  """
  ra_string = _cfg(input_cfg, 'rand_augment', '') or ''
  rand_augment = None
  if ra_string:
    try:
      rand_augment = augment_lib.parse_rand_augment(str(ra_string))
    except ValueError as e:
      raise ValueError(
          f'config.input.rand_augment={ra_string!r}: {e} Use a timm '
          f"RandAugment string such as 'rand-m9-mstd0.5-inc1', or '' for "
          f'none.') from None
  jitter = float(_cfg(input_cfg, 'color_jitter', 0.0) or 0.0)
  if jitter < 0:
    raise ValueError(f'config.input.color_jitter={jitter} must be >= 0 '
                     f'(0 = off; 0.4 is timm\'s default strength).')
  if jitter and rand_augment is not None:
    raise ValueError(
        f'config.input.color_jitter={jitter} with config.input.rand_augment='
        f'{ra_string!r}: timm\'s create_transform disables color jitter '
        f'whenever RandAugment is on (the official Swin / DeiT / Shunted runs '
        f'pass 0.4 / 0.3 / 0.4 and never apply it). Set '
        f'config.input.color_jitter=0 to train as they do, or '
        f"config.input.rand_augment='' to jitter colours instead.")
  erase = float(_cfg(input_cfg, 'random_erasing', 0.0) or 0.0)
  if not 0.0 <= erase <= 1.0:
    raise ValueError(f'config.input.random_erasing={erase} is a probability: '
                     f'use a value in [0, 1] (0 = off; 0.25 in Swin / DeiT).')
  return dict(rand_augment=rand_augment, color_jitter=jitter,
              random_erasing=erase)


def _repeats(input_cfg: Any) -> int:
  """config.input.repeated_augmentation checked: an int k >= 1."""
  value = _cfg(input_cfg, 'repeated_augmentation', 1)
  if value is None:
    return 1
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and (
      value >= 1):
    return int(value)
  raise ValueError(
      f'config.input.repeated_augmentation={value!r} must be an integer >= 1 '
      f'(1 = off; DeiT and Shunted use 3).')


def _common(input_cfg: Any) -> Dict[str, Any]:
  size = int(_cfg(input_cfg, 'image_size'))
  if size <= 0:
    raise ValueError(f'config.input.image_size={size} must be positive.')
  mean = tuple(float(m) for m in _cfg(input_cfg, 'mean'))
  std = tuple(float(s) for s in _cfg(input_cfg, 'std'))
  if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
    raise ValueError(
        f'config.input.mean={mean} / config.input.std={std} must be 3 '
        f'per-channel values (0..1 units), std > 0.')
  return dict(size=size, mean=mean, std=std)


_SOURCES: Dict[Tuple[Any, ...], Sequence[Any]] = {}
_MAX_SOURCES = 8


def open_split(input_cfg: Any, builder: tfds.core.DatasetBuilder, split: str,
               field: str) -> Sequence[Dict[str, Any]]:
  """`split` of the prepared dataset as a random-access source (loader).

  With config.input.cache the records are read once into memory and the list
  is memoised (by data dir and split), so successive evaluations and a
  resumed run in the same process read them from memory.
  """
  _check_split(builder, split, field)
  if not bool(_cfg(input_cfg, 'cache', False)):
    return loader.open_source(builder, split, field)
  key = (str(builder.data_dir), split)
  if key not in _SOURCES:
    if len(_SOURCES) >= _MAX_SOURCES:
      _SOURCES.pop(next(iter(_SOURCES)))
    _SOURCES[key] = loader.InMemorySource(
        loader.open_source(builder, split, field))
  return _SOURCES[key]


def _stack(records: Sequence[Dict[str, Any]], key: str) -> np.ndarray:
  if key == 'image':  # Encoded bytes of any length: an object array.
    out = np.empty(len(records), dtype=object)
    out[:] = [r[key] for r in records]
    return out
  return np.stack([np.asarray(r[key]) for r in records])


class _LazyGraph:
  """A batch function whose TF graph comes from loader.traced(_key, _build)."""

  def _key(self) -> str:
    raise NotImplementedError

  def _build(self):
    raise NotImplementedError

  def _function(self):
    return loader.traced(self._key(), self._build)


class _TrainBatch(_LazyGraph):
  """Step -> this process's augmented train batch (grain map function): decode +
  preprocess_train of its rows in one TF graph call."""

  def __init__(self, source, order: loader.TrainOrder, *, seed: int,
               keep: Sequence[str], preprocess: Dict[str, Any]):
    self.source = source
    self.order = order
    self.seed = int(seed)
    self.keep = tuple(keep)
    self.preprocess = preprocess

  def _key(self) -> str:
    return repr(('train', self.seed, sorted(self.preprocess.items())))

  def _build(self):
    # (seed, 0): the seeds of the single-process streams before the global
    # stream existed.
    base_seed = tf.constant([self.seed, 0], tf.int64)
    preprocess = self.preprocess

    def one(encoded, index):
      seed = tf.random.experimental.stateless_fold_in(base_seed, index)
      return preprocess_train(decode_image(encoded), seed, **preprocess)

    return tf.function(
        lambda encoded, index: loader.map_rows(one, encoded, index),
        input_signature=[tf.TensorSpec([None], tf.string),
                         tf.TensorSpec([None], tf.int64)])

  def __call__(self, step: int) -> Dict[str, np.ndarray]:
    index = self.order.global_indices(step)
    records = [self.source[self.order.record(g)] for g in index]
    out = {'image': self._function()(_stack(records, 'image'), index).numpy(),
           'label': _stack(records, 'label').astype(np.int32)}
    out.update({k: _stack(records, k) for k in self.keep})
    return out


class _EvalBatch(_LazyGraph):
  """Step -> this process's eval batch; rows past the split are zero padding
  with mask False."""

  def __init__(self, source, order: loader.EvalOrder, *,
               keep: Sequence[str], preprocess: Dict[str, Any]):
    self.source = source
    self.order = order
    self.keep = tuple(keep)
    self.preprocess = preprocess

  def _key(self) -> str:
    return repr(('eval', sorted(self.preprocess.items())))

  def _build(self):
    preprocess = self.preprocess
    one = lambda encoded: preprocess_eval(decode_image(encoded), **preprocess)
    return tf.function(
        lambda encoded: loader.map_rows(one, encoded),
        input_signature=[tf.TensorSpec([None], tf.string)])

  def __call__(self, step: int) -> Dict[str, np.ndarray]:
    records = [self.order.record(g) for g in self.order.global_indices(step)]
    real = [r for r in records if r is not None]  # The real rows come first.
    examples = [self.source[r] for r in real or [0]]
    size = self.preprocess['size']
    batch = {'image': self._function()(_stack(examples, 'image')).numpy(),
             'label': _stack(examples, 'label').astype(np.int32)}
    batch.update({k: _stack(examples, k) for k in self.keep})
    num_pad = len(records) - len(real)
    out = {}
    for k, v in batch.items():
      v = v[:len(real)]
      out[k] = np.concatenate([v, np.zeros((num_pad,) + v.shape[1:], v.dtype)])
    assert out['image'].shape[1:] == (size, size, 3)
    out['mask'] = np.arange(len(records)) < len(real)
    return out


def make_train_dataset(input_cfg: Any, *, global_batch_size: int, seed: int,
                       start_step: int = 0, process_index: int = 0,
                       process_count: int = 1,
                       keep_keys: Sequence[str] = ()) -> grain.IterDataset:
  """The train grain dataset behind `make_train_iterator`.

  Args:
    input_cfg: see module docstring.
    global_batch_size: batch size summed over processes.
    seed: shuffle and augmentation seed.
    start_step: first (global) batch, for resuming; costs nothing.
    process_index: this process's index.
    process_count: number of processes.
    keep_keys: extra dataset features to pass through (e.g. ('id',)).

  Returns:
    Infinite IterDataset of {'image': float32 [b, S, S, 3], 'label': int32
    [b], **keep_keys}, b = global_batch_size // process_count.
  """
  batch_size = _local_batch_size(global_batch_size, process_count)
  augment = _check_choice(_cfg(input_cfg, 'train_augment', 'none'),
                          'train_augment', TRAIN_AUGMENTS)
  preprocess = dict(augment=augment, **_common(input_cfg),
                    **_augment_options(input_cfg))
  repeats = _repeats(input_cfg)
  read = loader.read_config(input_cfg)
  if start_step < 0:
    raise ValueError(f'start_step={start_step} must be >= 0.')
  if not 0 <= process_index < process_count:
    raise ValueError(
        f'process_index={process_index} not in [0, {process_count}).')
  builder = get_builder(input_cfg)
  _check_num_classes(builder, input_cfg)
  split = _cfg(input_cfg, 'train_split', 'train')
  source = open_split(input_cfg, builder, split, 'config.input.train_split')
  order = loader.TrainOrder(
      local_batch=batch_size, process_index=process_index,
      process_count=process_count, num_records=len(source), seed=seed,
      repeats=repeats)
  batches = _TrainBatch(source, order, seed=seed, keep=keep_keys,
                        preprocess=preprocess)
  return loader.make_dataset(batches, start_step=start_step, num_steps=None,
                             read=read)


def make_train_iterator(input_cfg: Any, *, global_batch_size: int, seed: int,
                        start_step: int = 0, process_index: int = 0,
                        process_count: int = 1
                        ) -> Iterator[Dict[str, np.ndarray]]:
  """Infinite, shuffled, deterministic, resumable train batches.

  Args:
    input_cfg: see module docstring.
    global_batch_size: batch size summed over processes (config.batch_size).
    seed: shuffle and augmentation seed.
    start_step: yield the batches a fresh iterator yields from batch
      `start_step` on (in constant time: positions are computed, not
      replayed).
    process_index: this process's index (jax.process_index()).
    process_count: number of processes (jax.process_count()).

  Returns:
    Iterator of {'image': float32 [b, S, S, 3], 'label': int32 [b]} with
    b = global_batch_size // process_count, S = input_cfg.image_size.
  """
  return iter(make_train_dataset(
      input_cfg, global_batch_size=global_batch_size, seed=seed,
      start_step=start_step, process_index=process_index,
      process_count=process_count))


def make_eval_dataset(input_cfg: Any, *, split: str, global_batch_size: int,
                      process_index: int = 0, process_count: int = 1,
                      keep_keys: Sequence[str] = ()) -> grain.IterDataset:
  """The eval grain dataset behind `make_eval_iterator` (reads nothing yet).

  Returns:
    Finite IterDataset of {'image': float32 [b, S, S, 3], 'label': int32 [b],
    'mask': bool [b], **keep_keys}; padding rows are all zeros, mask False.
  """
  batch_size = _local_batch_size(global_batch_size, process_count)
  eval_resize = _check_choice(_cfg(input_cfg, 'eval_resize', 'direct'),
                              'eval_resize', EVAL_RESIZES)
  preprocess = dict(eval_resize=eval_resize, **_common(input_cfg))
  read = loader.read_config(input_cfg)
  if not 0 <= process_index < process_count:
    raise ValueError(
        f'process_index={process_index} not in [0, {process_count}).')
  builder = get_builder(input_cfg)
  _check_num_classes(builder, input_cfg)
  source = open_split(input_cfg, builder, split, _split_field(input_cfg, split))
  order = loader.EvalOrder(local_batch=batch_size, process_index=process_index,
                           process_count=process_count,
                           num_records=len(source))
  batches = _EvalBatch(source, order, keep=keep_keys, preprocess=preprocess)
  return loader.make_dataset(batches, start_step=0,
                             num_steps=order.num_batches, read=read)


def make_eval_iterator(input_cfg: Any, *, split: str, global_batch_size: int,
                       process_index: int = 0, process_count: int = 1
                       ) -> Iterator[Dict[str, np.ndarray]]:
  """One deterministic pass over `split`, last batch padded and masked.

  Every example of the split appears exactly once with mask=True in one
  process's rows; all processes yield ceil(N / B) batches (B the global
  batch, N the split's size).

  Args:
    input_cfg: see module docstring.
    split: TFDS split to evaluate (usually input_cfg.eval_split).
    global_batch_size: batch size summed over processes.
    process_index: this process's index.
    process_count: number of processes.

  Returns:
    Iterator of {'image': float32 [b, S, S, 3], 'label': int32 [b],
    'mask': bool [b]}, b = global_batch_size // process_count.
  """
  return iter(make_eval_dataset(
      input_cfg, split=split, global_batch_size=global_batch_size,
      process_index=process_index, process_count=process_count))
