"""The embedded dataset: scikit-learn's digits as a TFDS builder.

`sklearn.datasets.load_digits()` ships 1,797 real 8x8 grey images of the
digits 0..9 (pixel values 0..16) inside the scikit-learn install, so this
builder prepares a real TFDS dataset (`sklearn_digits`) without any network
access. Its features mimic imagenet2012's (`image`, `label`) so the same input
pipeline serves both:

  image: uint8 [8, 8, 3], the grey digit replicated to 3 channels, values
    scaled 0..16 -> 0..255 with round-half-up (v * 255 / 16 + 0.5, floored).
  label: ClassLabel with 10 classes ('0'..'9').
  id: int32, the example's index into `load_digits()` (0..1796).

Splits: a deterministic stratified 80/20 split (fixed seed, per-class
permutations from `np.random.RandomState`, whose stream NumPy keeps stable):
`train` has 1,437 images, `test` 360, disjoint, together all 1,797.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Dict, Iterator, Optional, Tuple

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

NAME = 'sklearn_digits'
NUM_CLASSES = 10
NUM_EXAMPLES = 1797
NUM_TEST = 360
SPLIT_SEED = 0
SOURCE_MAX = 16  # load_digits pixel values are integers in 0..16.


def load_source() -> Tuple[np.ndarray, np.ndarray]:
  """Returns sklearn's digits.

  Returns:
    (images float64 [1797, 8, 8] with values 0..16, labels int [1797]).
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  return digits.images, digits.target


def to_uint8_rgb(images: np.ndarray) -> np.ndarray:
  """Scales source pixels 0..16 to 0..255 and replicates grey to RGB.

  Args:
    images: float [..., 8, 8] with values 0..16.

  Returns:
    uint8 [..., 8, 8, 3].
  """
  scaled = np.floor(np.asarray(images, np.float64) * 255.0 / SOURCE_MAX + 0.5)
  scaled = np.clip(scaled, 0, 255).astype(np.uint8)
  return np.repeat(scaled[..., None], 3, axis=-1)


def stratified_split(labels: np.ndarray, num_test: int = NUM_TEST,
                     seed: int = SPLIT_SEED) -> Tuple[np.ndarray, np.ndarray]:
  """Deterministic stratified split of range(len(labels)).

  Each class contributes round(num_test * n_class / n) test examples (largest
  remainder apportionment, so the test split has exactly `num_test` examples),
  chosen by a seeded permutation of the class's indices.

  Args:
    labels: int [n], class of each example.
    num_test: total size of the test split.
    seed: seed of the `np.random.RandomState` drawing the permutations.

  Returns:
    (train_ids, test_ids): sorted int64 arrays, disjoint, union = range(n).
  """
  labels = np.asarray(labels)
  n = labels.shape[0]
  classes = np.unique(labels)
  counts = np.array([np.sum(labels == c) for c in classes])
  quota = counts * num_test / n
  take = np.floor(quota).astype(np.int64)
  # Largest remainders get the leftover slots; ties broken by class order.
  leftover = num_test - int(take.sum())
  order = np.argsort(-(quota - take), kind='stable')
  take[order[:leftover]] += 1
  rng = np.random.RandomState(seed)
  test = []
  for c, k in zip(classes, take):
    ids = np.flatnonzero(labels == c)
    test.append(ids[rng.permutation(ids.shape[0])[:k]])
  test_ids = np.sort(np.concatenate(test)).astype(np.int64)
  train_ids = np.setdiff1d(np.arange(n), test_ids).astype(np.int64)
  return train_ids, test_ids


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), offline."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.0.0': ('Initial release: sklearn.datasets.load_digits() as 8x8x3 '
                'uint8 PNG images (0..16 scaled to 0..255), stratified '
                '1,437/360 train/test split (seed 0).'),
      '1.1.0': ('The same examples as ArrayRecord files (random access for '
                'grain), 4 shards per split.'),
  }

  # tfds' default `code_path` probes `importlib_resources.abc.Traversable`,
  # which crashes when the optional `importlib_resources` backport is not
  # installed (it is not in this venv). The builder's code is a plain file.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(os.path.abspath(__file__))

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            'Optical recognition of handwritten digits (UCI), as bundled with '
            'scikit-learn: 1,797 8x8 images, grey replicated to RGB.'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(
                shape=(8, 8, 3), dtype=np.uint8, encoding_format='png'),
            'label': tfds.features.ClassLabel(
                names=[str(i) for i in range(NUM_CLASSES)]),
            'id': tfds.features.Scalar(
                dtype=np.int32, doc='Index into sklearn load_digits().'),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://scikit-learn.org/stable/modules/generated/'
                 'sklearn.datasets.load_digits.html',
        citation=(
            '@misc{uci_digits, author={Alpaydin, E. and Kaynak, C.}, '
            'title={Optical Recognition of Handwritten Digits}, '
            'year={1998}, publisher={UCI Machine Learning Repository}}'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything ships with scikit-learn; nothing to download.
    images, labels = load_source()
    train_ids, test_ids = stratified_split(labels)
    rgb = to_uint8_rgb(images)
    return {
        'train': self._generate_examples(rgb, labels, train_ids),
        'test': self._generate_examples(rgb, labels, test_ids),
    }

  def _generate_examples(self, rgb: np.ndarray, labels: np.ndarray,
                         ids: np.ndarray) -> Iterator[Tuple[int, Dict]]:
    for i in ids:
      i = int(i)
      yield i, {'image': rgb[i], 'label': int(labels[i]), 'id': i}


# Embedded datasets are written as ArrayRecord (the format the grain loader
# reads by index) in this many files per split, so that every test and the
# quickstart read a multi-file dataset, as ImageNet and COCO are.
FILE_FORMAT = 'array_record'
NUM_SHARDS = 4


def offline_download_config() -> tfds.download.DownloadConfig:
  """A DownloadConfig that never reaches the network.

  `try_download_gcs=False` stops `download_and_prepare` from probing the
  public GCS bucket for a pre-built copy; no checksums are registered or
  validated, and statistics are not computed. Splits are written in
  NUM_SHARDS files.
  """
  return tfds.download.DownloadConfig(
      num_shards=NUM_SHARDS,
      try_download_gcs=False,
      register_checksums=False,
      force_checksums_validation=False,
      compute_stats=tfds.download.ComputeStatsMode.SKIP,
      download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
  )


@contextlib.contextmanager
def gcs_disabled() -> Iterator[None]:
  """Stops tfds from probing gs://tfds-data while constructing builders.

  A builder whose data is not prepared yet asks the public GCS bucket for
  pre-computed DatasetInfo. tfds 4.9.10 disables that by default; older
  releases did not, so force it off (private flag, guarded). The probe first
  makes a temp dir (``tempfile.mkdtemp('tfds')``, DatasetInfo.
  initialize_from_bucket) and leaves it behind, empty, when the bucket has
  nothing: the empty ones that appeared meanwhile are removed on exit.
  """
  from tensorflow_datasets.core.utils import gcs_utils  # pylint: disable=g-import-not-at-top
  before = _tfds_temp_dirs()
  saved = getattr(gcs_utils, '_is_gcs_disabled', None)
  if saved is not None:
    gcs_utils._is_gcs_disabled = True  # pylint: disable=protected-access
  try:
    yield
  finally:
    if saved is not None:
      gcs_utils._is_gcs_disabled = saved  # pylint: disable=protected-access
    for d in _tfds_temp_dirs() - before:
      try:
        os.rmdir(d)  # only if empty
      except OSError:
        pass


def _tfds_temp_dirs() -> set:
  """The ``tmp*tfds`` dirs in the temp dir (what initialize_from_bucket makes)."""
  root = tempfile.gettempdir()
  try:
    names = os.listdir(root)
  except OSError:
    return set()
  return {os.path.join(root, n) for n in names if n.startswith('tmp') and n.endswith('tfds')}


def prepare_builder(builder_cls, data_dir: Optional[str] = None,
                    config: Optional[str] = None):
  """Builds an offline (embedded) tfds builder into `data_dir` unless already prepared.

  Args:
    builder_cls: a GeneratorBasedBuilder that needs no downloads.
    data_dir: TFDS data dir; None = TFDS default (env TFDS_DATA_DIR, else
      ~/tensorflow_datasets).
    config: name of one of its BUILDER_CONFIGS (None: its default).

  Returns:
    The (prepared) builder, ready for `as_dataset`.
  """
  if data_dir is not None:
    data_dir = os.fspath(os.path.expanduser(data_dir))
  kwargs = {'data_dir': data_dir, 'file_format': FILE_FORMAT}
  if config:
    names = [c.name for c in builder_cls.BUILDER_CONFIGS]
    if config not in names:
      raise ValueError(
          f'config.input.dataset={builder_cls.name}/{config}: {builder_cls.name} has '
          + (f'the builder configs {names}' if names else 'no builder configs')
          + f'; use config.input.dataset={builder_cls.name}'
          + (f'/{names[0]}' if names else '') + '.')
    kwargs['config'] = config
  with gcs_disabled():
    builder = builder_cls(**kwargs)
    if not builder.is_prepared():
      builder.download_and_prepare(download_config=offline_download_config())
      builder = builder_cls(**kwargs)  # Re-read the written info.
  return builder


def prepare_embedded(data_dir: Optional[str] = None,
                     config: Optional[str] = None) -> SklearnDigits:
  """Builds `sklearn_digits` into `data_dir` unless already prepared."""
  return prepare_builder(SklearnDigits, data_dir, config=config)
