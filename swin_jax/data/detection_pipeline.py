"""tf.data input pipeline for DETR object detection (coco/2017-style TFDS).

The trainer uses two functions:

  make_detection_train_iterator(input_cfg, *, global_batch_size, seed,
                                start_step=0, process_index=0,
                                process_count=1) -> DetectionIterator
  make_detection_eval_iterator(input_cfg, *, split, global_batch_size,
                               process_index=0, process_count=1)
                               -> DetectionIterator

Datasets: any TFDS dataset with the features of `coco/2017`:
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

Determinism, resuming and the process split work exactly as in
input_pipeline: elements are enumerated after the seeded shuffle (the global
stream, the same in every process), `start_step * B` of them are skipped and
process p keeps rows [p * b, (p + 1) * b) of each global batch of B, all
before decoding, and every random draw is stateless from (seed, global
element index). So the global batch does not depend on the process count.

Bad inputs never crash silently or obscurely:
  * a corrupt image is skipped (tf.data ignore_errors after decoding only);
    the iterator counts the gaps in the element index and logs the count;
  * a box outside the image is clipped to it; counted, warned once;
  * an image with more than max_boxes boxes (after the crowd/empty filter)
    raises ValueError from the iterator, naming the image id;
  * an image with no boxes gives valid all False.
Counts are in `iterator.stats`.

`input_cfg` fields (ml_collections.ConfigDict or any attribute object); the
defaults are DETR's (datasets/coco.py):
  dataset, data_dir, train_split, eval_split: as in input_pipeline.
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
  shuffle_buffer: int, default 10_000.
  cache: bool, cache the encoded records in memory (decoding still happens
    after the skip, so the skip/resume and skipped-image counts stay exact).
    Each iterator has its own cache: it helps a train stream's later
    epochs, not successive eval iterators.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from swin_jax.data import coco_ids
from swin_jax.data import input_pipeline as ip

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
# Host-side bookkeeping keys: in every tf.data batch, stripped by the iterator.
_INDEX, _NUM_BOXES, _NUM_CLIPPED, _OVERSIZED, _IMAGE_ID = (
    '_index', '_num_boxes', '_num_clipped', '_oversized', '_image_id')


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
  shuffle_buffer: int
  cache: bool


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
      max_boxes=max_boxes,
      shuffle_buffer=int(ip._cfg(input_cfg, 'shuffle_buffer', 10_000)),
      cache=bool(ip._cfg(input_cfg, 'cache', False)))


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
# Datasets from any tf.data.Dataset of coco/2017-style examples (image left
# encoded: bytes scalar).
# --------------------------------------------------------------------------


def _no_autograph(fn):
  # The map functions use no Python control flow on tensors (tf.cond/where
  # only), so autograph's conversion is pure tracing cost (about half).
  return tf.autograph.experimental.do_not_convert(fn)


def _decode(index: tf.Tensor, example: Dict[str, Any]) -> Dict[str, Any]:
  """Decodes the image; the only step whose errors are skipped."""
  objects = example['objects']
  image_id = example.get('image/id', tf.constant(-1, tf.int64))
  return {
      'image': ip.decode_image(example['image']),
      'image_id': tf.cast(image_id, tf.int64),
      'objects': {k: objects[k] for k in ('bbox', 'label', 'is_crowd')
                  if k in objects},
      _INDEX: tf.cast(index, tf.int64),
  }


def _decode_skipping_errors(ds: tf.data.Dataset) -> tf.data.Dataset:
  # ignore_errors sits right after the decode map, so it drops corrupt
  # images only; bugs in the augmentation below still raise.
  ds = ds.map(_no_autograph(_decode), num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  return ds.ignore_errors(log_warning=False)


def train_dataset(ds: tf.data.Dataset, cfg: DetectionConfig, *,
                  batch_size: int, seed: int, start_step: int = 0,
                  process_index: int = 0,
                  process_count: int = 1) -> tf.data.Dataset:
  """Infinite, shuffled, augmented, batched train dataset of `ds`.

  Args:
    ds: the whole split (coco/2017 features, image encoded), read in the
      same seeded order by every process.
    cfg: parsed config.
    batch_size: local batch size b.
    seed: shuffle and augmentation seed.
    start_step: global batches to skip (resume).
    process_index, process_count: this process keeps its rows of each
      global batch of process_count * b elements.

  Returns:
    Batches of the train keys (module docstring) plus the host-side
    bookkeeping keys '_index', '_num_boxes', '_num_clipped', '_oversized',
    '_image_id' that DetectionIterator strips.
  """
  if start_step < 0:
    raise ValueError(f'start_step={start_step} must be >= 0.')
  if cfg.cache:
    ds = ds.cache()
  if cfg.shuffle_buffer > 1:
    ds = ds.shuffle(cfg.shuffle_buffer, seed=seed,
                    reshuffle_each_iteration=True)
  ds = ds.repeat()
  ds = ds.enumerate()  # Global element index i, the same in every process.
  # Before decoding: cheap.
  ds = ds.skip(int(start_step) * batch_size * process_count)
  ds = ip.filter_process_rows(ds, batch_size, process_index, process_count)
  ds = _decode_skipping_errors(ds)
  base_seed = tf.constant([seed, 0], tf.int64)  # as one process always had

  def process(example):
    image = example['image']
    boxes, labels, num_clipped = coco_targets(
        tf.shape(image)[:2], example['objects'], cfg.label_map)
    num_boxes = tf.shape(boxes)[0]
    elem_seed = tf.random.experimental.stateless_fold_in(
        base_seed, example[_INDEX])
    image, boxes, labels = augment_train(image, boxes, labels, elem_seed, cfg)
    out = pad_and_pack(image, boxes, labels, cfg)
    del out['size']
    out.update({_INDEX: example[_INDEX], _NUM_BOXES: num_boxes,
                _NUM_CLIPPED: num_clipped, _IMAGE_ID: example['image_id']})
    return out

  ds = ds.map(_no_autograph(process), num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  return ds.with_options(ip._options())


def eval_dataset(ds: tf.data.Dataset, cfg: DetectionConfig, *,
                 batch_size: int, num_batches: int, process_index: int = 0,
                 process_count: int = 1) -> tf.data.Dataset:
  """One pass over `ds` in order, padded with masked rows to num_batches.

  With several processes, process p keeps rows [p * b, (p + 1) * b) of each
  global batch of the split's storage order (global element index).

  Corrupt images are skipped; the padding stream fills their rows too, so
  the number of batches stays `num_batches` whatever was skipped.

  Returns:
    Batches of the eval keys (module docstring) plus '_index' (-1 on
    padding rows), '_num_boxes', '_num_clipped', '_oversized'.
  """
  if cfg.cache:
    ds = ds.cache()
  ds = ip.filter_process_rows(ds.enumerate(), batch_size, process_index,
                              process_count)
  ds = _decode_skipping_errors(ds)

  def process(example):
    image = example['image']
    orig_size = tf.shape(image)[:2]
    boxes, labels, num_clipped = coco_targets(orig_size, example['objects'],
                                              cfg.label_map)
    num_boxes = tf.shape(boxes)[0]
    image, boxes = resize(image, boxes, cfg.eval_scale, cfg.max_size)
    out = pad_and_pack(image, boxes, labels, cfg)
    out.update({'image_id': example['image_id'], 'orig_size': orig_size,
                'mask': tf.constant(True), _INDEX: example[_INDEX],
                _NUM_BOXES: num_boxes, _NUM_CLIPPED: num_clipped})
    return out

  ds = ds.map(_no_autograph(process), num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  pad = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype),
                              ds.element_spec)
  pad[_INDEX] = tf.constant(-1, tf.int64)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat())
  ds = ds.take(num_batches * batch_size)
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  return ds.with_options(ip._options())


class DetectionIterator:
  """Numpy batches of a detection dataset, with host-side checks and counts.

  Strips the bookkeeping keys of train_dataset/eval_dataset and
    * raises ValueError when an image has more boxes than max_boxes;
    * counts skipped (corrupt) images as gaps in the element index, logging
      the count when it first becomes non-zero and whenever it doubles;
    * counts clipped boxes and oversized images, warning once each.

  Attributes:
    stats: {'examples': real examples yielded, 'skipped_images',
      'clipped_boxes', 'oversized_images'}.
  """

  def __init__(self, ds: tf.data.Dataset, *, max_boxes: int,
               first_index: int = 0, num_source: Optional[int] = None,
               name: str = 'train', batch_size: int = 1,
               process_index: int = 0, process_count: int = 1):
    """Wraps `ds` (a train_dataset or eval_dataset).

    Args:
      ds: the batched dataset, with its bookkeeping keys.
      max_boxes: config.input.max_boxes (T).
      first_index: global element index of the first element,
        start_step * B.
      num_source: number of source examples of a finite stream (eval), to
        count corrupt images at its end; None for an infinite stream.
      name: 'train' | 'eval', for log messages.
      batch_size, process_index, process_count: which global indices this
        process owns (input_pipeline.filter_process_rows), so that gaps are
        counted among its own indices only.
    """
    self._owned = functools.partial(ip.num_owned, batch_size=batch_size,
                                    process_index=process_index,
                                    process_count=process_count)
    self._it = iter(tfds.as_numpy(ds))
    self._max_boxes = max_boxes
    self._next_index = first_index
    self._num_source = num_source
    self._name = name
    self._warned = set()
    self._logged_skips = 0
    self.stats = {'examples': 0, 'skipped_images': 0, 'clipped_boxes': 0,
                  'oversized_images': 0}

  def __iter__(self) -> 'DetectionIterator':
    return self

  def _count_skips(self, index: np.ndarray) -> None:
    """index: int64 [k] increasing element indices that came through."""
    if index.size:
      self.stats['skipped_images'] += int(
          self._owned(int(index[-1]) + 1) - self._owned(self._next_index)
          - index.size)
      self._next_index = int(index[-1]) + 1
    skipped = self.stats['skipped_images']
    if skipped and skipped >= 2 * self._logged_skips:
      log.warning('%s input: skipped %d image(s) that failed to decode '
                  '(corrupt or unsupported).', self._name, skipped)
      self._logged_skips = skipped

  def _warn_once(self, key: str, message: str, *args) -> None:
    if key not in self._warned:
      self._warned.add(key)
      log.warning(message, *args)

  def __next__(self) -> Dict[str, np.ndarray]:
    try:
      batch = next(self._it)
    except StopIteration:
      if self._num_source is not None and self._num_source > self._next_index:
        # Corrupt images at the end of a finite stream leave no later index.
        self.stats['skipped_images'] += (self._owned(self._num_source)
                                         - self._owned(self._next_index))
        self._next_index = self._num_source
        self._count_skips(np.zeros([0], np.int64))
      raise
    index = batch.pop(_INDEX)
    num_boxes = batch.pop(_NUM_BOXES)
    num_clipped = batch.pop(_NUM_CLIPPED)
    oversized = batch.pop(_OVERSIZED)
    image_ids = batch.pop(_IMAGE_ID, batch.get('image_id'))
    real = batch['mask'] if 'mask' in batch else np.ones(index.shape, bool)
    too_many = real & (num_boxes > self._max_boxes)
    if too_many.any():
      k = int(np.argmax(too_many))
      raise ValueError(
          f'Image id {int(image_ids[k])} has {int(num_boxes[k])} boxes after '
          f'dropping crowd and empty ones, more than '
          f'config.input.max_boxes={self._max_boxes}; set '
          f'config.input.max_boxes >= {int(num_boxes[k])} (DETR needs '
          f'model.num_queries >= max_boxes too).')
    self._count_skips(index[real])
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
    (local batch size b, DetectionConfig, prepared TFDS builder).
  """
  batch_size = ip._local_batch_size(global_batch_size, process_count)
  cfg = parse_config(input_cfg)
  if not 0 <= process_index < process_count:
    raise ValueError(
        f'process_index={process_index} not in [0, {process_count}).')
  builder = ip.get_builder(input_cfg)
  _check_classes(builder, input_cfg, cfg.label_map)
  return batch_size, cfg, builder


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
      `start_step` on.
    process_index, process_count: this process and the number of processes;
      each keeps its rows of every global batch.

  Returns:
    DetectionIterator of {'image': float32 [b, Hp, Wp, 3], 'image_mask':
    bool [b, Hp, Wp], 'boxes': float32 [b, T, 4], 'labels': int32 [b, T],
    'valid': bool [b, T]}, b = global_batch_size // process_count.
  """
  batch_size, cfg, builder = _setup(input_cfg, global_batch_size,
                                    process_index, process_count)
  split = ip._cfg(input_cfg, 'train_split', 'train')
  ip._check_split(builder, split, 'config.input.train_split')
  ds = ip._read(builder, split, shuffle_seed=seed)
  ds = train_dataset(ds, cfg, batch_size=batch_size, seed=seed,
                     start_step=start_step, process_index=process_index,
                     process_count=process_count)
  return DetectionIterator(ds, max_boxes=cfg.max_boxes,
                           first_index=start_step * batch_size * process_count,
                           batch_size=batch_size, process_index=process_index,
                           process_count=process_count)


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
  batch_size, cfg, builder = _setup(input_cfg, global_batch_size,
                                    process_index, process_count)
  ip._check_split(builder, split, ip._split_field(input_cfg, split))
  size = builder.info.splits[split].num_examples
  # Every process yields the same number of batches (collectives need it).
  num_batches = max(1, math.ceil(size / (batch_size * process_count)))
  ds = ip._read(builder, split, shuffle_seed=None)
  ds = eval_dataset(ds, cfg, batch_size=batch_size, num_batches=num_batches,
                    process_index=process_index, process_count=process_count)
  return DetectionIterator(ds, max_boxes=cfg.max_boxes, num_source=size,
                           name='eval', batch_size=batch_size,
                           process_index=process_index,
                           process_count=process_count)
