"""Input pipeline for DETR object detection (coco/2017-style TFDS), on grain.

The trainer uses two functions:

  make_detection_train_iterator(input_cfg, *, global_batch_size, seed,
                                start_step=0, process_index=0,
                                process_count=1) -> DetectionIterator
  make_detection_eval_iterator(input_cfg, *, split, global_batch_size,
                               process_index=0, process_count=1)
                               -> DetectionIterator

Datasets: any TFDS dataset with the features of `coco/2017`, prepared as
ArrayRecord (random access, swin_jax/data/loader.py):
  image: uint8 [H, W, 3]; image/id: int64;
  objects: {bbox: float32 [n, 4] normalised (ymin, xmin, ymax, xmax),
            label: int64 [n] (ClassLabel), is_crowd: bool [n], ...}.

Batches are dicts of numpy arrays, b = global_batch_size // process_count,
(Hp, Wp) = input_cfg.pad_size, T = input_cfg.max_boxes:
  image: float32 [b, Hp, Wp, 3], normalised by mean/std; each image sits at
    the top-left and is zero-padded bottom/right (DETR's NestedTensor).
  image_mask: bool [b, Hp, Wp], True = padded pixel (DETR's mask convention).
  boxes: float32 [b, T, 4], (cx, cy, w, h) divided by the resized, unpadded
    image width/height (DETR's targets after its Normalize).
  labels: int32 [b, T] (COCO91_IDS[label] with label_map='coco91').
  valid: bool [b, T], True = a real box.
Eval batches add
  image_id: int64 [b]; orig_size: int32 [b, 2], decoded (h, w);
  size: int32 [b, 2], resized unpadded (h, w); mask: bool [b], True = real
  example, False = padding row (all zeros) of the last batches.

Augmentation is facebookresearch/detr `datasets/coco.py` make_coco_transforms
on top of ConvertCocoPolysToMask (crowd boxes dropped, boxes clamped to the
image, empty boxes dropped):
  train: RandomHorizontalFlip(0.5) -> RandomSelect(
           RandomResize(train_scales, max_size),
           Compose(RandomResize(crop_scales), RandomSizeCrop(*crop_size),
                   RandomResize(train_scales, max_size)), p=0.5) -> Normalize
  eval:  RandomResize([eval_scale], max_size) -> Normalize
Resizes are bilinear (antialiased when shrinking, as PIL's) and the image is
re-quantised to uint8 after each one, as DETR's PIL images are.

Determinism, resuming and the process split are those of loader (as in
input_pipeline): row g of the global stream reads record
TrainOrder.record(g) and draws every random number statelessly from
(seed, g); `start_step` costs nothing (no stream is replayed); process p
reads and computes only its rows [p * b, (p + 1) * b) of each global batch
of B. So a batch is a pure function of the step, whatever the process count
or the read threads. Each batch is one TF call (one tf.function, a parallel
map over its records inside), their boxes passed ragged (flat values + row
splits).

Bad inputs never crash silently or obscurely:
  * a corrupt image (its decode fails): in train its row reads the next
    record index instead ((r + 1) mod N, then + 2, ...) that decodes, with
    the row's own seed; in eval its row is padding (mask False). Counted in
    stats['skipped_images'] and logged when the count first becomes
    non-zero and whenever it doubles. Any other error raises;
  * a box outside the image is clipped to it; counted, warned once;
  * an image with more than max_boxes boxes (after the crowd/empty filter)
    raises ValueError from the iterator, naming the image id;
  * an image with no boxes gives valid all False.
Counts are in `iterator.stats`.

`input_cfg` fields (ml_collections.ConfigDict or any attribute object); the
defaults are DETR's (datasets/coco.py):
  dataset, data_dir, train_split, eval_split, cache, num_threads, prefetch,
    num_workers: as in input_pipeline.
  num_classes: checked against objects/label's ClassLabel; must be 91 with
    label_map='coco91' (DETR's num_classes = max COCO id + 1).
  mean, std: per-channel, in 0..1 units.
  label_map: None | 'coco91' (see coco_ids).
  train_scales: shorter-side sizes, default (480, 512, ..., 800).
  max_size: cap on the longer side, default 1333. Required (not None): it is
    what bounds the static pad_size.
  flip: bool, RandomHorizontalFlip(0.5); default True.
  crop: bool, the RandomSelect crop branch with p=0.5; default True.
  crop_scales: shorter-side sizes before the crop, default (400, 500, 600).
  crop_size: (min, max) crop side of RandomSizeCrop, default (384, 600).
  eval_scale: eval shorter side, default 800.
  pad_size: int or (H, W), the static padded shape; None = (max_size,
    max_size), the smallest that holds every image of either orientation.
  max_boxes: T, default 100 (DETR's number of queries).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import grain
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from swin_jax.data import coco_ids
from swin_jax.data import input_pipeline as ip
from swin_jax.data import loader

log = logging.getLogger(__name__)

# facebookresearch/detr datasets/coco.py make_coco_transforms.
DETR_TRAIN_SCALES = tuple(range(480, 801, 32))  # 480, 512, ..., 800
DETR_MAX_SIZE = 1333
DETR_CROP_SCALES = (400, 500, 600)
DETR_CROP_SIZE = (384, 600)
DETR_EVAL_SCALE = 800
DETR_NUM_QUERIES = 100  # max_boxes default: DETR predicts 100 boxes.
SELECT_P = 0.5  # RandomSelect: probability of the plain-resize branch.
FLIP_P = 0.5  # RandomHorizontalFlip.
# Host-side bookkeeping keys: in every batch, stripped by the iterator.
_NUM_BOXES, _NUM_CLIPPED, _OVERSIZED, _IMAGE_ID, _SKIPPED = (
    '_num_boxes', '_num_clipped', '_oversized', '_image_id', '_skipped')


# --------------------------------------------------------------------------
# Config.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DetectionConfig:
  """The validated augmentation/shape fields of `input_cfg` (see module doc)."""
  mean: Tuple[float, float, float]
  std: Tuple[float, float, float]
  label_map: Optional[str]
  train_scales: Tuple[int, ...]
  max_size: int
  flip: bool
  crop: bool
  crop_scales: Tuple[int, ...]
  crop_size: Tuple[int, int]
  eval_scale: int
  pad_size: Tuple[int, int]  # (Hp, Wp)
  max_boxes: int


def _positive_ints(value: Any, field: str) -> Tuple[int, ...]:
  try:
    values = tuple(int(v) for v in value)
  except TypeError:
    values = (int(value),)
  if not values or min(values) <= 0:
    raise ValueError(
        f'config.input.{field}={value!r} must be one or more positive ints.')
  return values


def parse_config(input_cfg: Any) -> DetectionConfig:
  """Reads and checks the detection fields of `input_cfg`.

  Raises:
    ValueError: naming the config field and the fix, in particular when
      pad_size cannot hold the largest image the config can produce.
  """
  mean = tuple(float(m) for m in ip._cfg(input_cfg, 'mean'))
  std = tuple(float(s) for s in ip._cfg(input_cfg, 'std'))
  if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
    raise ValueError(
        f'config.input.mean={mean} / config.input.std={std} must be 3 '
        f'per-channel values (0..1 units), std > 0.')
  label_map = coco_ids.check_label_map(ip._cfg(input_cfg, 'label_map', None))
  max_size = ip._cfg(input_cfg, 'max_size', DETR_MAX_SIZE)
  if max_size is None:
    raise ValueError(
        'config.input.max_size=None leaves the longer side of resized images '
        'unbounded, so no static config.input.pad_size can hold them; set '
        f'config.input.max_size (DETR: {DETR_MAX_SIZE}).')
  (max_size,) = _positive_ints(max_size, 'max_size')
  crop_size = _positive_ints(
      ip._cfg(input_cfg, 'crop_size', DETR_CROP_SIZE), 'crop_size')
  if len(crop_size) != 2 or crop_size[0] > crop_size[1]:
    raise ValueError(
        f'config.input.crop_size={crop_size} must be (min, max), min <= max '
        f'(DETR: {DETR_CROP_SIZE}).')
  pad = ip._cfg(input_cfg, 'pad_size', None)
  pad_size = (max_size, max_size) if pad is None else _positive_ints(
      pad, 'pad_size')
  if len(pad_size) == 1:
    pad_size = pad_size * 2
  if len(pad_size) != 2:
    raise ValueError(f'config.input.pad_size={pad!r} must be an int or (H, W).')
  # Every final resize (train: both RandomSelect branches end in one; eval)
  # caps the longer side at max_size, and images come in both orientations.
  # (DETR's int(round(...)) cap can overshoot max_size by < aspect / 2
  # pixels; the rare such image is cropped to the pad, counted in
  # stats['oversized_images'].)
  if min(pad_size) < max_size:
    raise ValueError(
        f'config.input.pad_size={tuple(pad_size)} cannot hold the largest '
        f'image this config produces: resizing caps the longer side at '
        f'config.input.max_size={max_size} and images come in either '
        f'orientation, so both sides need >= {max_size}. Set '
        f'config.input.pad_size={max_size} (or lower config.input.max_size).')
  (max_boxes,) = _positive_ints(
      ip._cfg(input_cfg, 'max_boxes', DETR_NUM_QUERIES), 'max_boxes')
  return DetectionConfig(
      mean=mean, std=std, label_map=label_map,
      train_scales=_positive_ints(
          ip._cfg(input_cfg, 'train_scales', DETR_TRAIN_SCALES),
          'train_scales'),
      max_size=max_size,
      flip=bool(ip._cfg(input_cfg, 'flip', True)),
      crop=bool(ip._cfg(input_cfg, 'crop', True)),
      crop_scales=_positive_ints(
          ip._cfg(input_cfg, 'crop_scales', DETR_CROP_SCALES), 'crop_scales'),
      crop_size=(crop_size[0], crop_size[1]),
      eval_scale=_positive_ints(
          ip._cfg(input_cfg, 'eval_scale', DETR_EVAL_SCALE), 'eval_scale')[0],
      pad_size=(pad_size[0], pad_size[1]),
      max_boxes=max_boxes)


def _check_classes(builder: tfds.core.DatasetBuilder, input_cfg: Any,
                   label_map: Optional[str]) -> None:
  """num_classes vs objects/label's ClassLabel (and the coco91 map)."""
  want = ip._cfg(input_cfg, 'num_classes', None)
  name = builder.info.full_name
  try:
    have = builder.info.features['objects']['label'].num_classes
  except (KeyError, AttributeError, TypeError) as e:
    raise ValueError(
        f'config.input.dataset={name!r} has no objects/label ClassLabel; the '
        f'detection pipeline needs coco/2017-style features.') from e
  if label_map == 'coco91':
    if have != len(coco_ids.COCO91_IDS):
      raise ValueError(
          f"config.input.label_map='coco91' maps COCO's 80 tfds labels, but "
          f'{name!r} has {have} classes; set config.input.label_map=None.')
    have = int(coco_ids.COCO91_IDS.max()) + 1
  if want is not None and int(want) != int(have):
    raise ValueError(
        f'config.input.num_classes={want} but dataset {name!r} with '
        f'config.input.label_map={label_map!r} has {have} classes; set '
        f'config.input.num_classes={have}.')


# --------------------------------------------------------------------------
# Box/image ops (DETR datasets/transforms.py). Boxes are float32 [n, 4]
# absolute (x0, y0, x1, y1) pixels; images uint8 [h, w, 3]; seeds int [2].
# --------------------------------------------------------------------------


def get_size_with_aspect_ratio(h, w, size, max_size: Optional[int] = None):
  """DETR's resize rule: shorter side -> `size`, longer side capped.

  Exactly datasets/transforms.py get_size_with_aspect_ratio, in float64 with
  the same operation order: the cap is int(round(max_size * min / max))
  (round half to even, as Python's round and tf.round), the longer side is
  int(size * long / short) (truncated). Elementwise on int tensors.

  Args:
    h, w: int tensors (any equal shapes), source height and width.
    size: int tensor or int, requested shorter side.
    max_size: cap on the longer side, or None.

  Returns:
    (oh, ow) int32 tensors, the resized height and width.
  """
  h = tf.cast(h, tf.float64)
  w = tf.cast(w, tf.float64)
  size = tf.cast(size, tf.float64) + tf.zeros_like(h)
  if max_size is not None:
    short = tf.minimum(h, w)
    long = tf.maximum(h, w)
    capped = tf.round(float(max_size) * short / long)
    size = tf.where(long / short * size > float(max_size), capped, size)
  unchanged = ((w <= h) & tf.equal(w, size)) | ((h <= w) & tf.equal(h, size))
  w_short = w < h
  oh = tf.where(w_short, tf.floor(size * h / w), size)
  ow = tf.where(w_short, size, tf.floor(size * w / h))
  oh = tf.where(unchanged, h, oh)
  ow = tf.where(unchanged, w, ow)
  return tf.cast(oh, tf.int32), tf.cast(ow, tf.int32)


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
  # DETR's images are PIL uint8 between transforms: re-quantise likewise.
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def resize(image: tf.Tensor, boxes: tf.Tensor, size,
           max_size: Optional[int] = None) -> Tuple[tf.Tensor, tf.Tensor]:
  """DETR `resize`: uint8 [h, w, 3] -> uint8 [oh, ow, 3], boxes scaled.

  Bilinear with antialiasing, as PIL's bilinear (DETR's F.resize on a PIL
  image). Boxes are multiplied by the per-axis ratios ow / w and oh / h.
  """
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  oh, ow = get_size_with_aspect_ratio(h, w, size, max_size)
  image = tf.image.resize(tf.cast(image, tf.float32), tf.stack([oh, ow]),
                          method='bilinear', antialias=True)
  rw = tf.cast(ow, tf.float32) / tf.cast(w, tf.float32)
  rh = tf.cast(oh, tf.float32) / tf.cast(h, tf.float32)
  return _to_uint8(image), boxes * tf.stack([rw, rh, rw, rh])


def hflip(image: tf.Tensor, boxes: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """Mirrors left-right: x -> w - x, so (x0, x1) -> (w - x1, w - x0)."""
  w = tf.cast(tf.shape(image)[1], tf.float32)
  x0, y0, x1, y1 = tf.unstack(boxes, axis=-1)
  return tf.reverse(image, [1]), tf.stack([w - x1, y0, w - x0, y1], axis=-1)


def crop(image: tf.Tensor, boxes: tf.Tensor, labels: tf.Tensor,
         region) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """DETR `crop` to region (top, left, height, width) in pixels.

  Boxes are shifted by (left, top), clamped to [0, width] x [0, height];
  those left with zero width or height are dropped (with their labels).

  Returns:
    (uint8 [height, width, 3], float32 [m, 4], labels [m]), m <= n.
  """
  i, j, ch, cw = region
  image = image[i:i + ch, j:j + cw]
  offset = tf.cast(tf.stack([j, i, j, i]), tf.float32)
  limit = tf.cast(tf.stack([cw, ch]), tf.float32)
  corners = tf.reshape(boxes - offset, [-1, 2, 2])  # [n, (min, max), (x, y)]
  corners = tf.maximum(tf.minimum(corners, limit), 0.0)
  keep = tf.reduce_all(corners[:, 1, :] > corners[:, 0, :], axis=1)
  boxes = tf.reshape(corners, [-1, 4])
  return image, tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep)


def _randint(seed: tf.Tensor, low, high) -> tf.Tensor:
  """Uniform int32 in [low, high] (inclusive, as random.randint)."""
  return tf.random.stateless_uniform([], seed, minval=low, maxval=high + 1,
                                     dtype=tf.int32)


def random_size_crop(image, boxes, labels, seed: tf.Tensor, min_size: int,
                     max_size: int):
  """DETR RandomSizeCrop(min_size, max_size): random size, then position.

  width ~ randint(min_size, min(w, max_size)), height likewise, then
  T.RandomCrop.get_params: top ~ randint(0, h - height), left likewise.
  Where the image is smaller than min_size (DETR would raise), the lower
  bound drops to the image side.
  """
  seeds = tf.random.experimental.stateless_split(seed, num=4)
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  cw = _randint(seeds[0], tf.minimum(min_size, w), tf.minimum(w, max_size))
  ch = _randint(seeds[1], tf.minimum(min_size, h), tf.minimum(h, max_size))
  top = _randint(seeds[2], 0, h - ch)
  left = _randint(seeds[3], 0, w - cw)
  return crop(image, boxes, labels, (top, left, ch, cw))


def _choice(values: Sequence[int], seed: tf.Tensor) -> tf.Tensor:
  """random.choice(values), stateless."""
  k = tf.random.stateless_uniform([], seed, minval=0, maxval=len(values),
                                  dtype=tf.int32)
  return tf.gather(tf.constant(values, tf.int32), k)


def coco_targets(image_hw, objects: Dict[str, tf.Tensor],
                 label_map: Optional[str] = None):
  """ConvertCocoPolysToMask on tfds objects.

  Drops crowd boxes, converts normalised (ymin, xmin, ymax, xmax) to pixel
  (x0, y0, x1, y1), clamps them to the image and drops empty ones.

  Args:
    image_hw: int [2], decoded image (h, w).
    objects: {'bbox': float32 [n, 4], 'label': int [n], 'is_crowd': bool [n]
      (optional)}.
    label_map: None | 'coco91'.

  Returns:
    boxes float32 [m, 4], labels int32 [m], num_clipped int32 (non-crowd
    boxes that reached outside [0, 1] and were clipped).
  """
  hw = tf.cast(image_hw, tf.float32)
  h, w = hw[0], hw[1]
  bbox = tf.reshape(tf.cast(objects['bbox'], tf.float32), [-1, 4])
  labels = tf.cast(tf.reshape(objects['label'], [-1]), tf.int32)
  if label_map == 'coco91':
    labels = tf.gather(tf.constant(coco_ids.COCO91_IDS, tf.int32), labels)
  keep = tf.ones_like(labels, tf.bool)
  if 'is_crowd' in objects:
    keep = tf.logical_not(tf.reshape(tf.cast(objects['is_crowd'], tf.bool),
                                     [-1]))
  outside = tf.reduce_any((bbox < 0.0) | (bbox > 1.0), axis=1) & keep
  num_clipped = tf.reduce_sum(tf.cast(outside, tf.int32))
  ymin, xmin, ymax, xmax = tf.unstack(tf.clip_by_value(bbox, 0.0, 1.0), axis=1)
  boxes = tf.stack([xmin * w, ymin * h, xmax * w, ymax * h], axis=1)
  keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  return (tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep),
          num_clipped)


def augment_train(image, boxes, labels, seed: tf.Tensor, cfg: DetectionConfig):
  """DETR's train transforms before Normalize (see module docstring).

  Args:
    image: uint8 [h, w, 3]; boxes: float32 [n, 4] pixel xyxy; labels [n].
    seed: int [2] stateless seed of this element.
    cfg: parsed config.

  Returns:
    (uint8 [oh, ow, 3], boxes [m, 4] in the output pixels, labels [m]).
  """
  seeds = tf.random.experimental.stateless_split(seed, num=6)
  if cfg.flip:
    image, boxes = tf.cond(
        tf.random.stateless_uniform([], seeds[0]) < FLIP_P,
        lambda: hflip(image, boxes), lambda: (image, boxes))

  def plain():
    out = resize(image, boxes, _choice(cfg.train_scales, seeds[2]),
                 cfg.max_size)
    return out + (labels,)

  def crop_branch():
    im, bx = resize(image, boxes, _choice(cfg.crop_scales, seeds[3]))
    im, bx, lb = random_size_crop(im, bx, labels, seeds[4], *cfg.crop_size)
    im, bx = resize(im, bx, _choice(cfg.train_scales, seeds[5]), cfg.max_size)
    return im, bx, lb

  if not cfg.crop:
    return plain()
  return tf.cond(tf.random.stateless_uniform([], seeds[1]) < SELECT_P,
                 plain, crop_branch)


def pad_and_pack(image, boxes, labels, cfg: DetectionConfig) -> Dict[str, Any]:
  """Normalise, pad to the static shapes, boxes -> normalised cxcywh.

  Args:
    image: uint8 [h, w, 3]; boxes: float32 [n, 4] pixel xyxy; labels [n].
    cfg: parsed config.

  Returns:
    {'image': float32 [Hp, Wp, 3], 'image_mask': bool [Hp, Wp],
     'boxes': float32 [T, 4], 'labels': int32 [T], 'valid': bool [T],
     'size': int32 [2], '_oversized': bool} where `size` is the unpadded
    (h, w) the boxes are normalised by.
  """
  ph, pw = cfg.pad_size
  t = cfg.max_boxes
  shape = tf.shape(image)
  oversized = (shape[0] > ph) | (shape[1] > pw)
  # Only DETR's rounding overshoot of max_size gets here (parse_config made
  # the pad >= max_size): crop it to the pad rather than fail mid-training.
  image, boxes, labels = crop(
      image, boxes, labels,
      (0, 0, tf.minimum(shape[0], ph), tf.minimum(shape[1], pw)))
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  image = ip.normalize(image, cfg.mean, cfg.std)
  # Zeros after normalisation, as DETR's nested_tensor_from_tensor_list.
  image = tf.pad(image, [[0, ph - h], [0, pw - w], [0, 0]])
  image_mask = tf.logical_not(
      (tf.range(ph)[:, None] < h) & (tf.range(pw)[None, :] < w))
  hw = tf.cast(tf.stack([w, h, w, h]), tf.float32)
  x0, y0, x1, y1 = tf.unstack(boxes, axis=-1)
  cxcywh = tf.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1) / hw
  n = tf.minimum(tf.shape(cxcywh)[0], t)  # > t only when the host raises.
  return {
      'image': tf.ensure_shape(image, [ph, pw, 3]),
      'image_mask': tf.ensure_shape(image_mask, [ph, pw]),
      'boxes': tf.ensure_shape(tf.pad(cxcywh[:t], [[0, t - n], [0, 0]]),
                               [t, 4]),
      'labels': tf.ensure_shape(tf.pad(labels[:t], [[0, t - n]]), [t]),
      'valid': tf.range(t) < n,
      'size': tf.stack([h, w]),
      _OVERSIZED: oversized,
  }


# --------------------------------------------------------------------------
# Batches from any random-access source of coco/2017-style records (image
# encoded bytes; objects as numpy arrays or lists of numpy values).
# --------------------------------------------------------------------------

# The ragged boxes of a batch of k records with m boxes in all: their flat
# values and row splits (record i owns boxes [splits[i], splits[i + 1])).
_BATCH_SIGNATURE = (
    tf.TensorSpec([None], tf.string),  # encoded images [k]
    tf.TensorSpec([None], tf.int64),  # row splits [k + 1]
    tf.TensorSpec([None, 4], tf.float32),  # bbox [m, 4]
    tf.TensorSpec([None], tf.int64),  # label [m]
    tf.TensorSpec([None], tf.bool),  # is_crowd [m]
)


def _flatten_records(records: Sequence[Dict[str, Any]]) -> Tuple[Any, ...]:
  """The records' encoded images and ragged objects as the batch arrays."""
  encoded = np.empty(len(records), dtype=object)
  encoded[:] = [r['image'] for r in records]
  bbox, label, crowd = [], [], []
  for r in records:
    objects = r['objects']
    bbox.append(np.asarray(objects['bbox'], np.float32).reshape(-1, 4))
    label.append(np.asarray(objects['label'], np.int64).reshape(-1))
    crowd.append(np.asarray(objects['is_crowd'], bool).reshape(-1)
                 if 'is_crowd' in objects else np.zeros(len(label[-1]), bool))
  splits = np.zeros(len(records) + 1, np.int64)
  np.cumsum([len(b) for b in bbox], out=splits[1:])
  return (encoded, splits, np.concatenate(bbox), np.concatenate(label),
          np.concatenate(crowd))


def _image_ids(records: Sequence[Dict[str, Any]]) -> np.ndarray:
  return np.array([r.get('image/id', -1) for r in records], np.int64)


def _decodes(encoded: bytes) -> bool:
  """Whether the image decodes (the batch's own decode op, on its own)."""
  try:
    ip.decode_image(tf.constant(encoded, tf.string))
  except tf.errors.InvalidArgumentError:
    return False
  return True


def _eval_specs(cfg: DetectionConfig):
  """The shapes and dtypes of an eval row (for the padding rows)."""
  ph, pw = cfg.pad_size
  t = cfg.max_boxes
  spec = {
      'image': tf.TensorSpec([ph, pw, 3], tf.float32),
      'image_mask': tf.TensorSpec([ph, pw], tf.bool),
      'boxes': tf.TensorSpec([t, 4], tf.float32),
      'labels': tf.TensorSpec([t], tf.int32),
      'valid': tf.TensorSpec([t], tf.bool),
      _OVERSIZED: tf.TensorSpec([], tf.bool),
      _NUM_BOXES: tf.TensorSpec([], tf.int32),
      _NUM_CLIPPED: tf.TensorSpec([], tf.int32),
      'size': tf.TensorSpec([2], tf.int32),
      'orig_size': tf.TensorSpec([2], tf.int32),
  }
  return spec


def _batch_function(one, *extra_specs):
  """One tf.function for a whole batch: one(image, objects, *extra[i]) on
  each record i, the image decoded first (rows through loader.map_rows, so
  each is bit for bit what the old tf.data pipeline gave for its record and
  global index)."""
  def batch(encoded, splits, bbox, label, crowd, *extra):
    def example(encoded, lo, hi, *extra):
      objects = {'bbox': bbox[lo:hi], 'label': label[lo:hi],
                 'is_crowd': crowd[lo:hi]}
      return one(ip.decode_image(encoded), objects, *extra)

    return loader.map_rows(example, encoded, splits[:-1], splits[1:], *extra)

  return tf.function(batch, input_signature=_BATCH_SIGNATURE + extra_specs,
                     autograph=False)


class _Batches:
  """Step -> this process's batch (grain map function), shared by train and
  eval. Holds no TF state, so it pickles to grain workers; the batch
  function is built (and traced) on first use in each process."""

  def __init__(self, source, order, cfg: DetectionConfig):
    self.source = source
    self.order = order
    self.cfg = cfg

  def _key(self) -> Tuple[Any, ...]:
    raise NotImplementedError

  def _build(self):
    raise NotImplementedError

  def _function(self):
    return loader.traced(('detection',) + self._key(), self._build)

  def _compute(self, records, *extra) -> Dict[str, np.ndarray]:
    out = self._function()(*_flatten_records(records), *extra)
    return {k: v.numpy() for k, v in out.items()}


class _TrainBatch(_Batches):
  """Row r of step s: record order.record(g), augmented with the seed of its
  global index g. A record that fails to decode is replaced by the next
  record index, (r + 1) mod N, (r + 2) mod N, ..., that decodes, with the
  row's own g (seed), so a step's batch stays a pure function of the step;
  '_skipped' counts the corrupt records each row passed over."""

  def __init__(self, source, order: loader.TrainOrder, cfg: DetectionConfig,
               seed: int):
    super().__init__(source, order, cfg)
    self.seed = int(seed)

  def _build(self):
    cfg = self.cfg
    # (seed, 0): the seeds of the single-process stream, as before.
    base_seed = tf.constant([self.seed, 0], tf.int64)

    def one(image, objects, index):
      boxes, labels, num_clipped = coco_targets(
          tf.shape(image)[:2], objects, cfg.label_map)
      num_boxes = tf.shape(boxes)[0]
      elem_seed = tf.random.experimental.stateless_fold_in(base_seed, index)
      image, boxes, labels = augment_train(image, boxes, labels, elem_seed,
                                           cfg)
      out = pad_and_pack(image, boxes, labels, cfg)
      del out['size']
      out.update({_NUM_BOXES: num_boxes, _NUM_CLIPPED: num_clipped})
      return out

    return _batch_function(one, tf.TensorSpec([None], tf.int64))

  def _key(self):
    return ('train', self.cfg, self.seed)

  def _replace_corrupt(self, rows: Sequence[int], records: list,
                       skipped: np.ndarray) -> None:
    n = len(self.source)
    for k, r in enumerate(rows):
      while not _decodes(records[k]['image']):
        skipped[k] += 1
        if skipped[k] >= n:
          raise ValueError(f'No image of the train split ({n} records) '
                           f'decodes.')
        records[k] = self.source[(r + int(skipped[k])) % n]

  def __call__(self, step: int) -> Dict[str, np.ndarray]:
    index = self.order.global_indices(step)
    rows = [self.order.record(g) for g in index]
    records = [self.source[r] for r in rows]
    skipped = np.zeros(len(rows), np.int32)
    try:
      out = self._compute(records, index)
    except tf.errors.InvalidArgumentError:
      self._replace_corrupt(rows, records, skipped)
      if not skipped.any():
        raise  # Every image decodes: a bug, not a corrupt image.
      out = self._compute(records, index)
    out.update({_IMAGE_ID: _image_ids(records), _SKIPPED: skipped})
    return out


class _EvalBatch(_Batches):
  """Row r of step s: record order.record(g), or a padding row (all zeros,
  mask False) past the split's end or where the record fails to decode
  ('_skipped' 1)."""

  def _build(self):
    cfg = self.cfg

    def one(image, objects):
      orig_size = tf.shape(image)[:2]
      boxes, labels, num_clipped = coco_targets(orig_size, objects,
                                                cfg.label_map)
      num_boxes = tf.shape(boxes)[0]
      image, boxes = resize(image, boxes, cfg.eval_scale, cfg.max_size)
      out = pad_and_pack(image, boxes, labels, cfg)
      out.update({'orig_size': orig_size, _NUM_BOXES: num_boxes,
                  _NUM_CLIPPED: num_clipped})
      return out

    return _batch_function(one)

  def _key(self):
    return ('eval', self.cfg)

  def __call__(self, step: int) -> Dict[str, np.ndarray]:
    rows = [self.order.record(g) for g in self.order.global_indices(step)]
    real = [k for k, r in enumerate(rows) if r is not None]
    records = [self.source[rows[k]] for k in real]
    skipped = np.zeros(len(rows), np.int32)
    out = None
    if records:
      try:
        out = self._compute(records)
      except tf.errors.InvalidArgumentError:
        ok = [_decodes(r['image']) for r in records]
        if all(ok):
          raise  # Every image decodes: a bug, not a corrupt image.
        skipped[[k for k, good in zip(real, ok) if not good]] = 1
        real = [k for k, good in zip(real, ok) if good]
        records = [r for r, good in zip(records, ok) if good]
        out = self._compute(records) if records else None
    ids = _image_ids(records)
    if out is not None and len(real) == len(rows):
      batch = out
    else:  # Padding rows: zeros, as every key of the padded shapes.
      spec = _eval_specs(self.cfg)
      batch = {k: np.zeros((len(rows),) + tuple(s.shape),
                           s.dtype.as_numpy_dtype)
               for k, s in spec.items()}
      if out is not None:
        for k, v in out.items():
          batch[k][real] = v
    batch['image_id'] = np.zeros(len(rows), np.int64)
    batch['image_id'][real] = ids
    batch['mask'] = np.zeros(len(rows), bool)
    batch['mask'][real] = True
    batch[_SKIPPED] = skipped
    return batch


def train_dataset(source: Sequence[Dict[str, Any]], cfg: DetectionConfig, *,
                  batch_size: int, seed: int, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1,
                  read: loader.ReadConfig = loader.ReadConfig()
                  ) -> grain.IterDataset:
  """Infinite, shuffled, augmented train batches of `source` (grain).

  Args:
    source: the whole split, random access (len, [i]) to records with the
      coco/2017 features, image encoded.
    cfg: parsed config.
    batch_size: local batch size b.
    seed: shuffle and augmentation seed.
    start_step: first global batch (resume; costs nothing).
    process_index, process_count: this process computes its rows of each
      global batch of process_count * b elements, and reads only their
      records.
    read: threads / prefetch / workers.

  Returns:
    Batches of the train keys (module docstring) plus the host-side
    bookkeeping keys '_num_boxes', '_num_clipped', '_oversized',
    '_image_id', '_skipped' that DetectionIterator strips.
  """
  order = loader.TrainOrder(local_batch=batch_size,
                            process_index=process_index,
                            process_count=process_count,
                            num_records=len(source), seed=seed)
  return loader.make_dataset(_TrainBatch(source, order, cfg, seed),
                             start_step=start_step, num_steps=None, read=read)


def eval_dataset(source: Sequence[Dict[str, Any]], cfg: DetectionConfig, *,
                 batch_size: int, process_index: int = 0,
                 process_count: int = 1,
                 read: loader.ReadConfig = loader.ReadConfig()
                 ) -> grain.IterDataset:
  """One pass over `source` in storage order, ceil(N / B) batches.

  Process p computes rows [p * b, (p + 1) * b) of each global batch of
  B = process_count * b; rows past the split's end and rows whose image
  fails to decode are padding (all zeros, mask False).

  Returns:
    Batches of the eval keys (module docstring) plus '_num_boxes',
    '_num_clipped', '_oversized', '_skipped'.
  """
  order = loader.EvalOrder(local_batch=batch_size, process_index=process_index,
                           process_count=process_count,
                           num_records=len(source))
  return loader.make_dataset(_EvalBatch(source, order, cfg), start_step=0,
                             num_steps=order.num_batches, read=read)


class DetectionIterator:
  """Numpy batches of a detection dataset, with host-side checks and counts.

  Strips the bookkeeping keys of train_dataset/eval_dataset and
    * raises ValueError when an image has more boxes than max_boxes;
    * counts images that failed to decode (corrupt), logging the count when
      it first becomes non-zero and whenever it doubles;
    * counts clipped boxes and oversized images, warning once each.

  Attributes:
    stats: {'examples': real examples yielded, 'skipped_images',
      'clipped_boxes', 'oversized_images'}.
  """

  def __init__(self, batches: Iterable[Dict[str, np.ndarray]], *,
               max_boxes: int, name: str = 'train'):
    """Wraps `batches` (a train_dataset or eval_dataset).

    Args:
      batches: the batches, with their bookkeeping keys.
      max_boxes: config.input.max_boxes (T).
      name: 'train' | 'eval', for log messages.
    """
    self._it = iter(batches)
    self._max_boxes = max_boxes
    self._name = name
    self._warned = set()
    self._logged_skips = 0
    self.stats = {'examples': 0, 'skipped_images': 0, 'clipped_boxes': 0,
                  'oversized_images': 0}

  def __iter__(self) -> 'DetectionIterator':
    return self

  def _count_skips(self, skipped: int) -> None:
    self.stats['skipped_images'] += skipped
    total = self.stats['skipped_images']
    if total and total >= 2 * self._logged_skips:
      log.warning('%s input: skipped %d image(s) that failed to decode '
                  '(corrupt or unsupported).', self._name, total)
      self._logged_skips = total

  def _warn_once(self, key: str, message: str, *args) -> None:
    if key not in self._warned:
      self._warned.add(key)
      log.warning(message, *args)

  def __next__(self) -> Dict[str, np.ndarray]:
    batch = dict(next(self._it))
    num_boxes = batch.pop(_NUM_BOXES)
    num_clipped = batch.pop(_NUM_CLIPPED)
    oversized = batch.pop(_OVERSIZED)
    skipped = batch.pop(_SKIPPED)
    image_ids = batch.pop(_IMAGE_ID, batch.get('image_id'))
    real = batch['mask'] if 'mask' in batch else np.ones(num_boxes.shape, bool)
    too_many = real & (num_boxes > self._max_boxes)
    if too_many.any():
      k = int(np.argmax(too_many))
      raise ValueError(
          f'Image id {int(image_ids[k])} has {int(num_boxes[k])} boxes after '
          f'dropping crowd and empty ones, more than '
          f'config.input.max_boxes={self._max_boxes}; set '
          f'config.input.max_boxes >= {int(num_boxes[k])} (DETR needs '
          f'model.num_queries >= max_boxes too).')
    if skipped.any():
      self._count_skips(int(skipped.sum()))
    self.stats['examples'] += int(real.sum())
    clipped = int(num_clipped[real].sum())
    self.stats['clipped_boxes'] += clipped
    if clipped:
      self._warn_once('clip', '%s input: clipped box(es) reaching outside '
                      'their image (first in image id %d); further ones are '
                      'counted in stats["clipped_boxes"] without warning.',
                      self._name,
                      int(image_ids[np.argmax(real & (num_clipped > 0))]))
    big = int((real & oversized).sum())
    self.stats['oversized_images'] += big
    if big:
      self._warn_once('big', '%s input: resized image(s) larger than '
                      'config.input.pad_size (DETR rounding of max_size) were '
                      'cropped to it; counted in stats["oversized_images"].',
                      self._name)
    return batch


# --------------------------------------------------------------------------
# The trainer's entry points.
# --------------------------------------------------------------------------


def _setup(input_cfg: Any, global_batch_size: int, process_index: int,
           process_count: int):
  """Checks shared by both entry points; all config errors before reading.

  Returns:
    (local batch size b, DetectionConfig, prepared TFDS builder,
    loader.ReadConfig).
  """
  batch_size = ip._local_batch_size(global_batch_size, process_count)
  cfg = parse_config(input_cfg)
  read = loader.read_config(input_cfg)
  if not 0 <= process_index < process_count:
    raise ValueError(
        f'process_index={process_index} not in [0, {process_count}).')
  builder = ip.get_builder(input_cfg)
  _check_classes(builder, input_cfg, cfg.label_map)
  return batch_size, cfg, builder, read


def make_detection_train_iterator(input_cfg: Any, *, global_batch_size: int,
                                  seed: int, start_step: int = 0,
                                  process_index: int = 0,
                                  process_count: int = 1
                                  ) -> DetectionIterator:
  """Infinite, shuffled, deterministic, resumable DETR train batches.

  Args:
    input_cfg: see module docstring.
    global_batch_size: batch size summed over processes.
    seed: shuffle and augmentation seed.
    start_step: yield the batches a fresh iterator yields from batch
      `start_step` on (in constant time: nothing before it is read).
    process_index, process_count: this process and the number of processes;
      each computes (and reads) its rows of every global batch.

  Returns:
    DetectionIterator of {'image': float32 [b, Hp, Wp, 3], 'image_mask':
    bool [b, Hp, Wp], 'boxes': float32 [b, T, 4], 'labels': int32 [b, T],
    'valid': bool [b, T]}, b = global_batch_size // process_count.
  """
  if start_step < 0:
    raise ValueError(f'start_step={start_step} must be >= 0.')
  batch_size, cfg, builder, read = _setup(input_cfg, global_batch_size,
                                          process_index, process_count)
  split = ip._cfg(input_cfg, 'train_split', 'train')
  source = ip.open_split(input_cfg, builder, split, 'config.input.train_split')
  ds = train_dataset(source, cfg, batch_size=batch_size, seed=seed,
                     start_step=start_step, process_index=process_index,
                     process_count=process_count, read=read)
  return DetectionIterator(ds, max_boxes=cfg.max_boxes)


def make_detection_eval_iterator(input_cfg: Any, *, split: str,
                                 global_batch_size: int,
                                 process_index: int = 0,
                                 process_count: int = 1
                                 ) -> DetectionIterator:
  """One deterministic pass over `split`, last batches padded and masked.

  Every decodable example of the split appears once with mask=True, in its
  process's rows of its global batch; all processes yield ceil(N / B)
  batches.

  Returns:
    DetectionIterator of the train keys plus {'image_id': int64 [b],
    'orig_size': int32 [b, 2], 'size': int32 [b, 2], 'mask': bool [b]}.
  """
  batch_size, cfg, builder, read = _setup(input_cfg, global_batch_size,
                                          process_index, process_count)
  source = ip.open_split(input_cfg, builder, split,
                         ip._split_field(input_cfg, split))
  ds = eval_dataset(source, cfg, batch_size=batch_size,
                    process_index=process_index, process_count=process_count,
                    read=read)
  return DetectionIterator(ds, max_boxes=cfg.max_boxes, name='eval')
