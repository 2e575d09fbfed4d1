"""The embedded detection dataset: sklearn digits pasted onto canvases, as TFDS.

`digits_detection` is a small, real-image object-detection dataset prepared
offline (~10 s on one CPU core, no network) from the 1,797 real 8x8 scans of
`sklearn.datasets.load_digits()` (see `digits.py`). Each example is a canvas
with 0..4 digits at varied scales, exact boxes and classes, and its features
are shaped exactly like tfds `coco/2017`'s, so one detection input pipeline
serves both (plus one extra object field, `source_id`):

  image: uint8 [H, W, 3] PNG; H and W drawn independently, integers in
    [64, 112].
  image/filename: '{image/id:012d}.png' (COCO style).
  image/id: int64, 1..N for `train` (N its canvases), N+1..N+250 for `test`
    (unique over both splits).
  objects: a Sequence of n in 0..4 digits, each with
    area: int64, box area in pixels, rounded half up.
    bbox: BBoxFeature, float32 (ymin, xmin, ymax, xmax), normalised by the
      canvas height / width, so in [0, 1].
    id: int64, unique object id = image/id * 10 + j (j = 0..3, the paste
      order), so >= 10.
    is_crowd: bool, always False.
    label: ClassLabel '0'..'9', the source digit's class.
    source_id: int64, index of the source image into `load_digits()`.

Builder configs: `digits_detection` is `digits_detection/2k` (train 2,000
canvases, what the tests use; prepared in ~10 s); `digits_detection/10k` has
10,000 train canvases (~45 s), of which the first 2,000 are 2k's: the DETR
demo trains on it (fewer repeats of each canvas, so less overfitting). Both
have the same 250 test canvases (only their ids differ).

Splits (disjoint source images): `train` canvases are built only from
the 1,437 source digits of `digits.stratified_split`'s train ids, `test` 250
canvases only from its 360 test ids.

Rendering of canvas i of a split is a pure function of (split, i): it draws
from `np.random.RandomState([SPLIT_SEEDS[split], i])` (NumPy keeps that
stream stable), so any canvas can be regenerated alone.
  * Background: a grey level b, an integer in [0, 50], plus grey Gaussian
    noise (sigma 6, rounded, clipped to +-18 = 3 sigma so that background
    pixels are provably <= b + 18), clipped to 0..255; R = G = B.
  * Every 50th canvas (i % 50 == 25: 40 train, 5 test) has no digit, so
    images without boxes exist in both splits; the others draw 1..4 digits.
  * Digit: a uniformly drawn source id of the split; size s, an integer in
    [14, 44]; the 8x8 source (0..16) is resized to s x s by bilinear
    interpolation (pixel centres aligned, edges clamped, as
    tf.image.resize 'bilinear'), mapped to ink intensity 255 * (v / 16)^(1/4),
    then tinted by a per-digit RGB colour with channels uniform in
    [0.6, 1.0]; composited as max(background, ink). Why the 1/4 power: the
    scans' outermost strokes are often v = 1..3 of 16, and bilinear halves
    them at the box edge; linearly (or even as sqrt) they would stay below a
    background of up to 50 + 18, so the visible glyph would fall short of
    its box. With 1/4, v = 1 at half weight is 107 (>= 64 tinted) and, over
    all 4,926 digits of both splits, the pixels just inside every box edge
    hold ink at least 15 levels above their canvas's background bound.
  * Placement: offsets (x0, y0) uniform such that the s x s square lies in
    the canvas, rejection-sampled (at most 100 tries) so that no two pasted
    squares overlap or touch (>= 1 px gap); a digit that does not fit is
    dropped.

Box of a digit: its INK extent, exact in continuous pixel coordinates (pixel
(r, c) covers [c, c+1] x [r, r+1]). With [r0, r1] / [c0, c1] the source rows
/ cols that hold a value > 0,
  (x_min, y_min, x_max, y_max) = (x0 + c0*s/8, y0 + r0*s/8,
                                  x0 + (c1+1)*s/8, y0 + (r1+1)*s/8).
Bilinear interpolation blends the outermost ink with its zero neighbours, so
a faint fringe reaches at most half a source pixel (s/16 px) beyond the box;
every pixel further out is background.
"""

from __future__ import annotations

import functools
import io
import os
from typing import Dict, Iterator, Optional, Sequence, Tuple

from etils import epath
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from swin_jax.data import digits as digits_lib

NAME = 'digits_detection'
NUM_CLASSES = digits_lib.NUM_CLASSES
# Builder configs (`digits_detection/<name>`): train canvases of each; the test split is
# the same 250 canvases in both (canvas i of a split does not depend on the config).
TRAIN_SIZES = {'2k': 2000, '10k': 10000}
DEFAULT_CONFIG = '2k'
TEST_SIZE = 250
SPLIT_SEEDS = {'train': 1, 'test': 2}


def split_sizes(config: str = DEFAULT_CONFIG) -> Dict[str, int]:
  """{split: canvases} of a builder config ('2k': train 2,000, test 250)."""
  return {'train': TRAIN_SIZES[config], 'test': TEST_SIZE}


def image_id_offsets(config: str = DEFAULT_CONFIG) -> Dict[str, int]:
  """image/id = offset + index + 1: '2k' has ids 1..2000 (train), 2001..2250 (test)."""
  return {'train': 0, 'test': TRAIN_SIZES[config]}


SPLIT_SIZES = split_sizes()  # of the default config
IMAGE_ID_OFFSETS = image_id_offsets()
OBJECT_ID_STRIDE = 10  # object id = image/id * 10 + paste index (< 10).
CANVAS_MIN, CANVAS_MAX = 64, 112  # px, inclusive, height and width.
BACKGROUND_MAX = 50  # grey level, inclusive.
NOISE_SIGMA = 6.0
NOISE_BOUND = 18  # = 3 sigma; the noise is clipped to +- this.
MAX_DIGITS = 4
EMPTY_EVERY, EMPTY_PHASE = 50, 25  # canvas i is empty iff i % 50 == 25.
DIGIT_MIN, DIGIT_MAX = 14, 44  # pasted square side s, px, inclusive.
INK_POWER = 0.25  # lifts faint strokes above the background (module doc).
TINT_MIN = 0.6  # per-channel tint in [0.6, 1.0] of the ink intensity.
GAP = 1  # px between pasted squares.
MAX_TRIES = 100  # placement attempts per digit before it is dropped.
SOURCE_SIDE = 8


@functools.lru_cache(maxsize=None)  # 31 sizes; read-only, so safe to share.
def bilinear_matrix(src: int, dst: int) -> np.ndarray:
  """Linear-interpolation weights resizing `src` samples to `dst`.

  Pixel centres are aligned (output j samples source coordinate
  (j + 0.5) * src / dst - 0.5), and coordinates are clamped to the edge
  samples, as tf.image.resize(..., 'bilinear') does.

  Returns:
    float64 [dst, src], rows summing to 1.
  """
  u = (np.arange(dst) + 0.5) * src / dst - 0.5
  u = np.clip(u, 0.0, src - 1)
  i0 = np.floor(u).astype(np.int64)
  i1 = np.minimum(i0 + 1, src - 1)
  w1 = u - i0
  m = np.zeros((dst, src))
  np.add.at(m, (np.arange(dst), i0), 1.0 - w1)
  np.add.at(m, (np.arange(dst), i1), w1)
  m.setflags(write=False)
  return m


def render_glyph(source: np.ndarray, s: int) -> np.ndarray:
  """Ink intensity of one digit resized to s x s.

  Args:
    source: float [8, 8], values 0..16.
    s: output side in px.

  Returns:
    float64 [s, s] in 0..255 (before tinting): 255 * (bilinear / 16)^(1/4).
  """
  m = bilinear_matrix(SOURCE_SIDE, s)
  v = m @ np.asarray(source, np.float64) @ m.T  # [s, s], 0..16
  return 255.0 * np.clip(v / digits_lib.SOURCE_MAX, 0.0, 1.0) ** INK_POWER


def ink_box(source: np.ndarray, s: int, x0: int, y0: int) -> np.ndarray:
  """Exact ink extent of a source digit pasted as s x s at (x0, y0).

  Returns:
    float64 [4], (x_min, y_min, x_max, y_max) in continuous canvas px.
  """
  rows = np.flatnonzero(np.asarray(source).max(axis=1) > 0)
  cols = np.flatnonzero(np.asarray(source).max(axis=0) > 0)
  scale = s / SOURCE_SIDE
  return np.array([x0 + cols[0] * scale, y0 + rows[0] * scale,
                   x0 + (cols[-1] + 1) * scale, y0 + (rows[-1] + 1) * scale])


def _first_fit(xs: np.ndarray, ys: np.ndarray, s: int,
               placed: Sequence[Tuple[int, int, int]]) -> Optional[int]:
  """Index of the first candidate square that keeps >= GAP px from all placed.

  Args:
    xs, ys: int [tries], candidate top-left corners (px) of an s x s square.
    s: side of the candidate square, px.
    placed: (x0, y0, side) of the squares already pasted.

  Returns:
    The first index whose square fits, or None when none does.
  """
  ok = np.ones(xs.shape, bool)
  for px, py, ps in placed:
    ok &= ((xs + s + GAP <= px) | (px + ps + GAP <= xs) |
           (ys + s + GAP <= py) | (py + ps + GAP <= ys))
  hits = np.flatnonzero(ok)
  return int(hits[0]) if hits.size else None


def render_canvas(split: str, index: int, images: np.ndarray,
                  split_ids: np.ndarray) -> Dict[str, np.ndarray]:
  """Renders canvas `index` of `split`; a pure function of its arguments.

  Args:
    split: 'train' or 'test' (selects the seed).
    index: canvas index within the split, 0..split_sizes(config)[split]-1.
    images: float [1797, 8, 8], `load_source()` pixels 0..16.
    split_ids: int [m], the source ids this split may draw from.

  Returns:
    dict with image uint8 [H, W, 3]; boxes float64 [n, 4] (x_min, y_min,
    x_max, y_max) in px; source_ids int64 [n]; sizes int64 [n] (s, px);
    background int (grey level b, before noise).
  """
  rng = np.random.RandomState([SPLIT_SEEDS[split], index])
  h, w = rng.randint(CANVAS_MIN, CANVAS_MAX + 1, size=2)
  background = int(rng.randint(0, BACKGROUND_MAX + 1))
  noise = np.clip(np.round(NOISE_SIGMA * rng.standard_normal(size=(h, w))),
                  -NOISE_BOUND, NOISE_BOUND)
  grey = np.clip(background + noise, 0, 255).astype(np.uint8)
  # The background is integer, so rounding the ink before max() gives the
  # same pixels as rounding max(background, ink), in uint8 all along.
  canvas = np.repeat(grey[..., None], 3, axis=-1)  # [h, w, 3] uint8
  num = 0 if index % EMPTY_EVERY == EMPTY_PHASE else rng.randint(
      1, MAX_DIGITS + 1)
  placed, boxes, sources = [], [], []
  for _ in range(num):
    source_id = int(split_ids[rng.randint(len(split_ids))])
    s = int(rng.randint(DIGIT_MIN, DIGIT_MAX + 1))
    tint = rng.uniform(TINT_MIN, 1.0, size=3)
    # Rejection sampling, vectorised: all tries are drawn up front (one rng
    # call each instead of up to 2 * MAX_TRIES on crowded canvases) and the
    # first fitting candidate wins, as a sequential loop would pick it.
    xs = rng.randint(0, w - s + 1, size=MAX_TRIES)
    ys = rng.randint(0, h - s + 1, size=MAX_TRIES)
    hit = _first_fit(xs, ys, s, placed)
    if hit is None:
      continue  # No room left for this digit: drop it.
    x0, y0 = int(xs[hit]), int(ys[hit])
    ink = render_glyph(images[source_id], s)[..., None] * tint  # [s, s, 3]
    ink = np.floor(ink + 0.5).astype(np.uint8)  # ink <= 255: no clip needed.
    patch = canvas[y0:y0 + s, x0:x0 + s]
    canvas[y0:y0 + s, x0:x0 + s] = np.maximum(patch, ink)
    placed.append((x0, y0, s))
    boxes.append(ink_box(images[source_id], s, x0, y0))
    sources.append(source_id)
  return {
      'image': canvas,
      'boxes': np.array(boxes, np.float64).reshape(-1, 4),
      'source_ids': np.array(sources, np.int64),
      'sizes': np.array([p[2] for p in placed], np.int64),
      'background': background,
  }


def to_example(split: str, index: int, canvas: Dict[str, np.ndarray],
               labels: np.ndarray, config: str = DEFAULT_CONFIG) -> Dict:
  """The coco/2017-shaped feature dict of a rendered canvas (ids of builder `config`)."""
  image_id = image_id_offsets(config)[split] + index + 1
  h, w = canvas['image'].shape[:2]
  boxes = canvas['boxes']
  areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  objects = {
      'area': np.floor(areas + 0.5).astype(np.int64),
      # BBoxFeature order: (ymin, xmin, ymax, xmax), normalised.
      'bbox': np.stack([boxes[:, 1] / h, boxes[:, 0] / w,
                        boxes[:, 3] / h, boxes[:, 2] / w],
                       axis=-1).astype(np.float32).reshape(-1, 4),
      'id': image_id * OBJECT_ID_STRIDE + np.arange(len(boxes), dtype=np.int64),
      'is_crowd': np.zeros(len(boxes), bool),
      'label': np.asarray(labels)[canvas['source_ids']].astype(np.int64),
      'source_id': canvas['source_ids'],
  }
  return {
      'image': canvas['image'],
      'image/filename': f'{image_id:012d}.png',
      'image/id': image_id,
      'objects': objects,
  }


class DigitsDetection(tfds.core.GeneratorBasedBuilder):
  """sklearn digits pasted on canvases: 2,000 (or 10,000) / 250 detection images, offline."""

  VERSION = tfds.core.Version('1.2.0')
  RELEASE_NOTES = {
      '1.0.0': ('Initial release: 0..4 sklearn digits (s in [14, 44] px, '
                'bilinear, ink (v/16)^(1/4), tinted) per 64..112 px canvas; '
                'train 2,000 / test 250 canvases from disjoint source '
                'digits.'),
      '1.1.0': ('Builder configs: 2k (the default; 1.0.0\'s data) and 10k (10,000 '
                'train canvases, the first 2,000 those of 2k; the same 250 test '
                'canvases, their ids after the train ids).'),
      '1.2.0': ('The same examples as ArrayRecord files (random access for '
                'grain), 4 shards per split.'),
  }
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name=name, description=f'train {n:,} / test {TEST_SIZE} canvases')
      for name, n in TRAIN_SIZES.items()]
  DEFAULT_BUILDER_CONFIG_NAME = DEFAULT_CONFIG

  # Same reason as SklearnDigits.code_path: tfds' default probes the optional
  # `importlib_resources` backport, absent from this venv.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(os.path.abspath(__file__))

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            'Real 8x8 digit scans (sklearn load_digits) resized and pasted, '
            '0..4 per canvas, onto noisy dark canvases, with exact ink boxes; '
            'features shaped like coco/2017.'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(
                shape=(None, None, 3), dtype=np.uint8, encoding_format='png'),
            'image/filename': tfds.features.Text(),
            'image/id': np.int64,
            'objects': tfds.features.Sequence({
                'area': np.int64,
                'bbox': tfds.features.BBoxFeature(),
                'id': np.int64,
                'is_crowd': np.bool_,
                'label': tfds.features.ClassLabel(
                    names=[str(i) for i in range(NUM_CLASSES)]),
                'source_id': np.int64,
            }),
        }),
        homepage='https://scikit-learn.org/stable/modules/generated/'
                 'sklearn.datasets.load_digits.html',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything ships with scikit-learn; nothing to download.
    images, labels = digits_lib.load_source()
    train_ids, test_ids = digits_lib.stratified_split(labels)
    ids = {'train': train_ids, 'test': test_ids}
    return {split: self._generate_examples(split, images, labels, ids[split])
            for split in split_sizes(self.builder_config.name)}

  def _generate_examples(self, split: str, images: np.ndarray,
                         labels: np.ndarray,
                         split_ids: np.ndarray) -> Iterator[Tuple[int, Dict]]:
    config = self.builder_config.name
    for index in range(split_sizes(config)[split]):
      canvas = render_canvas(split, index, images, split_ids)
      example = to_example(split, index, canvas, labels, config)
      example['image'] = encode_png(example['image'])
      yield example['image/id'], example


def encode_png(image: np.ndarray) -> bytes:
  """Lossless PNG bytes of a uint8 [H, W, 3] image.

  tfds stores bytes as given. PIL at zlib level 1 is ~3x faster than tfds'
  own TF encoder on these noise-filled canvases (they compress no better at
  higher levels), which keeps preparing the dataset to seconds.
  """
  buf = io.BytesIO()
  PIL.Image.fromarray(image).save(buf, format='png', compress_level=1)
  return buf.getvalue()


def prepare_embedded_detection(data_dir: Optional[str] = None,
                               config: Optional[str] = None) -> DigitsDetection:
  """Builds `digits_detection/<config>` (default '2k') into `data_dir` unless prepared."""
  return digits_lib.prepare_builder(DigitsDetection, data_dir, config=config)
