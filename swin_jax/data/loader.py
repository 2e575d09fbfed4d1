"""Random-access input: tfds ArrayRecord sources read by index through grain.

Both input pipelines (input_pipeline: classification, detection_pipeline:
DETR) are built from the pieces here:

  open_source(builder, split, field) -> Sequence[dict]
      The split as a random-access tfds data source (ArrayRecord files),
      images left encoded. A dataset prepared as TFRecord only gets one error
      that names the conversion command (swin_jax.tools.to_array_record).
  TrainOrder
      Which source record, and which augmentation seed, row r of step s of
      process p reads: a pure function of (seed, step, row), so resuming at
      step 10**6 costs what step 0 costs and nothing is read twice.
  EvalOrder
      The same for one padded pass over a split in storage order.
  map_rows(fn, *columns) -> tensors
      Inside a batch's tf.function: fn on each row, rows computed in
      parallel, stacked in order.
  make_dataset(batch_fn, start_step, num_steps, read) -> grain.IterDataset
      grain MapDataset over the steps, mapped by `batch_fn` (one step's rows
      of this process, preprocessed in one TF call), read by
      `read.num_threads` threads (and `read.num_workers` processes) ahead of
      the trainer.

The global stream. Element j of the train stream is record
shuffle_e(j mod N) of epoch e = j // N, where shuffle_e is grain's global
index shuffle (a seeded bijection of 0..N-1, reseeded each epoch: every epoch
is a fresh permutation of the whole split, not a shuffle buffer). With
repeated augmentation k > 1, global index g reads stream element g // k: k
consecutive copies, each with its own index g and so its own augmentation
(DeiT's RASampler). The global batch of step s is the global indices
[s * B, (s + 1) * B); process p of n holds rows [p * b, (p + 1) * b) of it,
b = B / n, the rows its devices hold in the global jax.Array
(train/sharding.py). So 2 processes x 4 devices train on exactly the batches
of 1 process x 8 devices, and no process reads another's rows.

Determinism does not depend on the reader's threads or worker processes:
batches are formed before the work is split (a worker computes whole
batches; grain interleaves them back in order), and every random draw comes
from the element's global index g (stateless TF ops seeded by
fold_in([seed, 0], g)).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from typing import Any, Callable, Dict, Optional, Sequence

from absl import flags
import grain
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

# Above this many positions a MapDataset range is "infinite" (grain's own
# convention for repeated datasets).
_INFINITE = sys.maxsize
# Default read settings (config.input.num_threads / prefetch / num_workers).
DEFAULT_NUM_THREADS = 4  # at most; fewer on a host with fewer cores
DEFAULT_PREFETCH_BATCHES = 4
DEFAULT_NUM_WORKERS = 0
# Rows of a batch that TF preprocesses concurrently (map_rows); the read
# threads (config.input.num_threads) add parallelism on top.
ROW_PARALLELISM = 16


# Traced batch functions by key (loader.traced).
_TRACED: Dict[Any, Any] = {}
_TRACED_LOCK = threading.Lock()
_MAX_TRACED = 16


def traced(key: Any, build: Callable[[], Any]) -> Any:
  """The batch tf.function for `key`, built (and traced) once per process.

  The read threads share it, and the successive iterators of a process (each
  evaluation makes one; a resumed run in a notebook) reuse it untraced. A
  batch_fn calls this on use rather than holding the function, so it pickles
  to grain workers without TF state and each worker builds its own.
  """
  with _TRACED_LOCK:
    if key not in _TRACED:
      if len(_TRACED) >= _MAX_TRACED:
        _TRACED.pop(next(iter(_TRACED)))
      fn = build()
      # Trace it here, once: the read threads' first calls would otherwise all
      # trace it at the same time (each the full cost; TF warns of retracing).
      if getattr(fn, 'input_signature', None) is not None:
        fn.get_concrete_function()
      _TRACED[key] = fn
    return _TRACED[key]


def map_rows(fn: Callable[..., Any], *columns: tf.Tensor) -> Any:
  """fn(*row) for each row of `columns` (tensors [b, ...]), stacked [b, ...].

  For use inside a batch's tf.function. The map is a tf.data map (rows in
  parallel, order kept) batched and read as a single element, rather than a
  tf.map_fn: grappler leaves tf.data functions as traced, as the pre-grain
  tf.data pipelines ran them, while in a tf.function body its constant
  folding rewrites the x / 255 of input_pipeline.normalize as x * (1 / 255),
  a 1-ulp change of a third of the pixels. So a row is bit for bit what the
  old pipelines gave for its (record, global index); the two are equally
  fast (experiments/bench_input.py). `fn` must not branch in Python on
  tensors (tf.cond / tf.where only): it is not converted by autograph.
  """
  ds = tf.data.Dataset.from_tensor_slices(columns)
  ds = ds.map(tf.autograph.experimental.do_not_convert(fn),
              num_parallel_calls=ROW_PARALLELISM, deterministic=True)
  size = tf.shape(columns[0], out_type=tf.int64)[0]
  return ds.batch(size).get_single_element()


class ArrayRecordRequiredError(FileNotFoundError):
  """The dataset is prepared, but not in the ArrayRecord format grain reads."""


def conversion_command(builder: tfds.core.DatasetBuilder) -> str:
  """The shell command that adds ArrayRecord files to a prepared dataset."""
  return (f'python -m swin_jax.tools.to_array_record '
          f'--dataset_dir={builder.data_dir}')


def has_array_record(builder: tfds.core.DatasetBuilder) -> bool:
  """Whether the prepared dataset has ArrayRecord files (main or alternative
  file format of its dataset_info.json)."""
  info = builder.info
  fmt = tfds.core.file_adapters.FileFormat.ARRAY_RECORD
  if info.file_format == fmt:
    return True
  alternatives = info.alternative_file_formats
  # A builder made from its class (tfds.builder(name)) reads dataset_info.json's
  # alternativeFileFormats (what tools.to_array_record adds) into the proto only;
  # as_data_source checks the live list, so bring it over.
  if (fmt.value in info.as_proto.alternative_file_formats
      and fmt not in alternatives):
    alternatives.append(fmt)
  return fmt in alternatives


def open_source(builder: tfds.core.DatasetBuilder, split: str,
                field: str = 'split') -> Sequence[Dict[str, Any]]:
  """The split as a random-access sequence of examples, images encoded.

  Args:
    builder: a prepared tfds builder.
    split: tfds split, slicing allowed ('train[:90%]').
    field: the config field that named the split, for error messages.

  Returns:
    A tfds ArrayRecord data source: `len()` and `source[i]` -> the example's
    features as numpy / Python values, 'image' as encoded bytes.

  Raises:
    ArrayRecordRequiredError: the dataset has TFRecord files only.
  """
  if not has_array_record(builder):
    fmt = getattr(builder.info.file_format, 'value', builder.info.file_format)
    raise ArrayRecordRequiredError(
        f'Dataset {builder.info.full_name!r} in {builder.data_dir} is prepared '
        f'as {fmt} only; the input pipeline reads ArrayRecord (random access, '
        f'so resuming does not re-read the stream). Convert it once with: '
        f'{conversion_command(builder)} (or rebuild with tfds build '
        f'--file_format=array_record).')
  features = builder.info.features
  decoders = {'image': tfds.decode.SkipDecoding()} if 'image' in features else None
  return builder.as_data_source(split=split, decoders=decoders,
                                file_format='array_record')


class InMemorySource:
  """All records of a source held in a list (config.input.cache: small sets)."""

  def __init__(self, source: Sequence[Any]):
    self._records = [source[i] for i in range(len(source))]

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> Any:
    return self._records[index]


# --------------------------------------------------------------------------
# Which record each row of each step reads.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Rows:
  """Process p's rows of every global batch (shared by train and eval)."""
  local_batch: int
  process_index: int = 0
  process_count: int = 1

  @property
  def global_batch(self) -> int:
    return self.local_batch * self.process_count

  def global_indices(self, step: int) -> np.ndarray:
    """int64 [b]: the global element indices of this process's rows of `step`."""
    first = int(step) * self.global_batch + self.process_index * self.local_batch
    return np.arange(first, first + self.local_batch, dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class TrainOrder(_Rows):
  """The seeded infinite train stream, read by index (see module docstring).

  Attributes:
    num_records: N, the size of the split.
    seed: the shuffle seed (config.seed; any int, folded into 32 bits as
      grain's shuffle takes them).
    repeats: repeated augmentation k >= 1.
  """
  num_records: int = 0
  seed: int = 0
  repeats: int = 1

  def __post_init__(self):
    if self.num_records <= 0:
      raise ValueError(f'The train split is empty (num_records={self.num_records}).')
    # grain's global shuffle, reseeded per epoch: element j -> record.
    order = grain.MapDataset.range(self.num_records).shuffle(
        seed=int(self.seed) % 2**32).repeat()
    object.__setattr__(self, '_order', order)

  def epoch(self, global_index: int) -> int:
    return (int(global_index) // self.repeats) // self.num_records

  def record(self, global_index: int) -> int:
    """Global element index g -> index of the source record it reads."""
    return int(self._order[int(global_index) // self.repeats])  # pytype: disable=attribute-error

  def __reduce__(self):  # grain workers get a copy; rebuild the shuffle there.
    return (_make_train_order, (dataclasses.asdict(self),))


def _make_train_order(fields: Dict[str, Any]) -> TrainOrder:
  return TrainOrder(**fields)


@dataclasses.dataclass(frozen=True)
class EvalOrder(_Rows):
  """One pass over a split in storage order, padded to whole global batches.

  Global index g < num_records reads record g; g >= num_records is a padding
  row (mask False). Every process yields `num_batches` = ceil(N / B) batches,
  so collectives see the same number of steps everywhere.
  """
  num_records: int = 0

  @property
  def num_batches(self) -> int:
    return max(1, -(-self.num_records // self.global_batch))

  def record(self, global_index: int) -> Optional[int]:
    g = int(global_index)
    return g if g < self.num_records else None


def num_owned(n: int, batch_size: int, process_index: int,
              process_count: int) -> int:
  """How many of the global element indices 0..n-1 process p owns."""
  global_batch = batch_size * process_count
  full, rest = divmod(int(n), global_batch)
  return full * batch_size + min(max(rest - process_index * batch_size, 0),
                                 batch_size)


# --------------------------------------------------------------------------
# The grain dataset.
# --------------------------------------------------------------------------


def default_num_threads() -> int:
  """config.input.num_threads=None: 4, or the cores this process may use if fewer.

  Each thread's batch call already runs ROW_PARALLELISM rows at once, so more
  threads than cores only contend: on 2 cores, 4 threads gave 113 img/s of
  the Swin recipe against 127 with 2 (experiments/bench_input.py).
  """
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    cores = os.cpu_count() or 1
  return max(1, min(DEFAULT_NUM_THREADS, cores))


@dataclasses.dataclass(frozen=True)
class ReadConfig:
  """How a host reads: config.input.num_threads / prefetch / num_workers.

  num_threads: grain read threads per process (or per worker); each computes
    whole batches. TF's image ops release the GIL, so threads scale with
    cores for decode + augmentation.
  prefetch: batches buffered ahead of the trainer (per worker with workers).
  num_workers: grain worker processes (0 = none, threads only); each gets
    every num_workers-th batch and `num_threads` threads of its own.
  """
  num_threads: int = dataclasses.field(default_factory=default_num_threads)
  prefetch: int = DEFAULT_PREFETCH_BATCHES
  num_workers: int = DEFAULT_NUM_WORKERS


def read_config(input_cfg: Any) -> ReadConfig:
  """The checked read settings of config.input (defaults where unset)."""
  values = {}
  for field, default, low in (('num_threads', default_num_threads(), 1),
                              ('prefetch', DEFAULT_PREFETCH_BATCHES, 1),
                              ('num_workers', DEFAULT_NUM_WORKERS, 0)):
    try:
      value = getattr(input_cfg, field)
    except (AttributeError, KeyError):
      value = default
    if value is None:
      value = default
    if (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
        or value < low):
      raise ValueError(
          f'config.input.{field}={value!r} must be an integer >= {low} '
          f'(default {default}; see the README, "Input: threads and '
          f'workers").')
    values[field] = int(value)
  return ReadConfig(**values)


def make_dataset(batch_fn: Callable[[int], Dict[str, Any]], *,
                 start_step: int, num_steps: Optional[int],
                 read: ReadConfig) -> grain.IterDataset:
  """Batches start_step, start_step + 1, ... as a grain dataset.

  Each element is a whole batch: `batch_fn(step)` reads its rows
  (order.global_indices(step)) and runs the TF preprocessing on all of them
  in one call (one graph execution per batch, not per image: the per-call
  overhead of TF is about 1 ms, more than an 8x8 digit's whole work). Threads
  and workers therefore split the work by batches, and a batch's content
  does not depend on the read settings.

  Args:
    batch_fn: step -> dict of numpy arrays [b, ...]. Must be picklable when
      read.num_workers > 0.
    start_step: first batch (resume): the range starts there, nothing before
      it is read or computed.
    num_steps: number of batches, None = infinite.
    read: threads / prefetch / workers.

  Returns:
    An IterDataset of the batches, in step order.
  """
  if start_step < 0:
    raise ValueError(f'start_step={start_step} must be >= 0.')
  stop = _INFINITE if num_steps is None else int(start_step) + int(num_steps)
  ds = grain.MapDataset.range(int(start_step), stop).map(batch_fn)
  ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=read.num_threads, prefetch_buffer_size=read.prefetch))
  if read.num_workers:
    # grain reads absl flags of its own; outside an absl app (a notebook, a
    # script, the tests) nothing has parsed them, so take their defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=read.num_workers, per_worker_buffer_size=read.prefetch))
  return ds
