"""Synthetic ImageNet- and COCO-shaped tfds datasets for experiments/bench_input.py.

Two offline GeneratorBasedBuilders (real JPEG encodings, nothing downloaded):

  bench_imagenet: features as imagenet2012 (image jpeg, label ClassLabel(1000),
    file_name). Sizes around ImageNet's typical 500x375: the long side is 500
    for 60 % of the images, else ~N(480, 120) clipped to [200, 1000]; aspect
    4:3 for 60 %, else uniform in [1, 1.8]; 3/4 landscape. Content: smooth
    random RGB fields at three scales plus grey Gaussian noise (sigma uniform
    in [14, 26]), JPEG quality 90: ~100-110 KB a file (ImageNet's average is
    ~110 KB).
  bench_coco: features as coco/2017 (image jpeg, image/filename, image/id,
    objects {area, bbox, id, is_crowd, label ClassLabel(80)}). COCO sizes:
    long side 640, short side 480 (50 %), 427 (30 %) or uniform in [300, 640];
    7/10 landscape; 1..15 random boxes, 1 % of them crowd.

Example i is a pure function of (dataset, i). The builders live in this
importable module (not in the script) so that grain's spawned worker
processes unpickle the data source by reference.
"""
from __future__ import annotations

import io
import os
import time
from typing import Dict, Tuple

from etils import epath
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

NUM_SHARDS = 8
JPEG_QUALITY = 90
IMAGENET_CLASSES = 1000
COCO_CLASSES = 80


def _field(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
  """A smooth random RGB field in [-1, 1]: `cells` random values along the
  short side, bilinearly upsampled."""
  ch = max(2, cells if h <= w else cells * h // w)
  cw = max(2, cells if w <= h else cells * w // h)
  small = rng.integers(0, 256, (ch, cw, 3), dtype=np.uint8)
  up = PIL.Image.fromarray(small).resize((w, h), PIL.Image.BILINEAR)
  return np.asarray(up, np.float32) / 127.5 - 1.0


def synthetic_jpeg(rng: np.random.Generator, h: int, w: int,
                   noise: float) -> bytes:
  """Smooth fields at three scales + grey noise, as a quality-90 JPEG."""
  image = (rng.uniform(60, 190, 3).astype(np.float32)
           + 60 * _field(rng, h, w, 3) + 35 * _field(rng, h, w, 12)
           + 30 * _field(rng, h, w, 96))
  image += rng.normal(0, noise, (h, w, 1)).astype(np.float32)
  out = io.BytesIO()
  PIL.Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
      out, 'JPEG', quality=JPEG_QUALITY)
  return out.getvalue()


def imagenet_size(rng: np.random.Generator) -> Tuple[int, int]:
  """(h, w) around ImageNet's typical 500x375, both orientations."""
  long = 500 if rng.random() < 0.6 else int(np.clip(rng.normal(480, 120),
                                                    200, 1000))
  aspect = 4 / 3 if rng.random() < 0.6 else rng.uniform(1.0, 1.8)
  short = max(100, int(round(long / aspect)))
  return (short, long) if rng.random() < 0.75 else (long, short)


def coco_size(rng: np.random.Generator) -> Tuple[int, int]:
  """(h, w) as COCO's: long side 640, short side mostly 480 or 427."""
  u = rng.random()
  short = 480 if u < 0.5 else 427 if u < 0.8 else int(rng.uniform(300, 640))
  return (short, 640) if rng.random() < 0.7 else (640, short)


_IMAGES: Dict[Tuple[str, int], Tuple[bytes, Tuple[int, int]]] = {}


def image(kind: str, i: int) -> Tuple[bytes, Tuple[int, int]]:
  """(JPEG bytes, (h, w)) of example i; memoised, so that the TFRecord and
  the ArrayRecord copy encode each image once."""
  key = (kind, i)
  if key not in _IMAGES:
    rng = np.random.default_rng([0 if kind == 'imagenet' else 1, i])
    if kind == 'imagenet':
      h, w = imagenet_size(rng)
      noise = rng.uniform(14.0, 26.0)
    else:
      h, w = coco_size(rng)
      noise = rng.uniform(18.0, 30.0)
    _IMAGES[key] = (synthetic_jpeg(rng, h, w, noise), (h, w))
  return _IMAGES[key]


class _BenchBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared parts: offline; NUM_EXAMPLES is set before preparing."""
  NUM_EXAMPLES = 2000

  # As swin_jax.data.digits: tfds' default code_path probes the optional
  # importlib_resources backport (not installed in this venv).
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(os.path.abspath(__file__))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(self.NUM_EXAMPLES)}


class BenchImagenet(_BenchBuilder):
  """Synthetic imagenet2012-shaped JPEGs (sizes and file sizes as ImageNet's)."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='Synthetic ImageNet-sized JPEGs (experiments/bench_input.py).',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(num_classes=IMAGENET_CLASSES),
            'file_name': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'))

  def _generate_examples(self, n):
    for i in range(n):
      jpeg, _ = image('imagenet', i)
      label = int(np.random.default_rng([2, i]).integers(IMAGENET_CLASSES))
      yield i, {'image': io.BytesIO(jpeg), 'label': label,
                'file_name': f'n{label:08d}_{i}.JPEG'}


class BenchCoco(_BenchBuilder):
  """Synthetic coco/2017-shaped JPEGs with random boxes."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='Synthetic COCO-sized JPEGs (experiments/bench_input.py).',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(encoding_format='jpeg'),
            'image/filename': tfds.features.Text(),
            'image/id': np.int64,
            'objects': tfds.features.Sequence({
                'area': np.int64,
                'bbox': tfds.features.BBoxFeature(),
                'id': np.int64,
                'is_crowd': np.bool_,
                'label': tfds.features.ClassLabel(num_classes=COCO_CLASSES),
            }),
        }))

  def _generate_examples(self, n):
    for i in range(n):
      jpeg, (h, w) = image('coco', i)
      rng = np.random.default_rng([3, i])
      k = int(rng.integers(1, 16))
      y0, x0 = rng.uniform(0, 0.8, k), rng.uniform(0, 0.8, k)
      y1 = np.minimum(1.0, y0 + rng.uniform(0.03, 0.6, k))
      x1 = np.minimum(1.0, x0 + rng.uniform(0.03, 0.6, k))
      yield i, {
          'image': io.BytesIO(jpeg),
          'image/filename': f'{i + 1:012d}.jpg',
          'image/id': i + 1,
          'objects': {
              'area': np.round((y1 - y0) * h * (x1 - x0) * w).astype(np.int64),
              'bbox': np.stack([y0, x0, y1, x1], 1).astype(np.float32),
              'id': (i + 1) * 100 + np.arange(k, dtype=np.int64),
              'is_crowd': rng.random(k) < 0.01,
              'label': rng.integers(0, COCO_CLASSES, k),
          },
      }


BUILDERS = {'classification': BenchImagenet, 'detection': BenchCoco}


def prepare(task: str, data_dir: str, num_images: int, file_format: str):
  """(data dir, builder) of the task's dataset prepared as `file_format`,
  each size and format in its own data dir; reused when present."""
  from swin_jax.data import digits  # pylint: disable=g-import-not-at-top
  cls = BUILDERS[task]
  cls.NUM_EXAMPLES = num_images
  kind = 'imagenet' if task == 'classification' else 'coco'
  root = os.path.join(data_dir, f'{kind}_n{num_images}', file_format)
  config = tfds.download.DownloadConfig(
      num_shards=NUM_SHARDS, try_download_gcs=False, register_checksums=False,
      force_checksums_validation=False,
      compute_stats=tfds.download.ComputeStatsMode.SKIP,
      download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  with digits.gcs_disabled():
    builder = cls(data_dir=root, file_format=file_format)
    if not builder.is_prepared():
      start = time.time()
      builder.download_and_prepare(download_config=config)
      print(f'prepared {cls.name} ({num_images} images, {file_format}) in '
            f'{time.time() - start:.0f} s: {builder.data_dir}', flush=True)
      builder = cls(data_dir=root, file_format=file_format)
  return root, builder


def _train_files(builder):
  return [p for p in epath.Path(builder.data_dir).iterdir()
          if '-train.' in p.name]


def record_bytes(builder) -> float:
  """Mean bytes per train record (files / records)."""
  total = sum(p.stat().length for p in _train_files(builder))
  return total / builder.info.splits['train'].num_examples


def file_stats(builder) -> str:
  n = builder.info.splits['train'].num_examples
  return (f'{n} images in {len(_train_files(builder))} files, '
          f'{record_bytes(builder) / 1e3:.0f} KB per record')
