"""Adds ArrayRecord files to a tfds dataset prepared as TFRecord (in place).

    python -m swin_jax.tools.to_array_record --dataset_dir=DIR [--overwrite]
        [--num_threads=8]

DIR is a prepared tfds dataset version dir, the one holding
dataset_info.json (e.g. ~/tensorflow_datasets/imagenet2012/5.1.0, or a
gs:// path). The input pipelines read ArrayRecord by index through grain
(swin_jax/data/loader.py); this writes the same serialized records, in the
same order, shard by shard, next to the TFRecord files, under the names tfds
gives ArrayRecord shards (`{DATASET}-{SPLIT}.array_record-{SHARD_X_OF_Y}`),
with tfds' own ArrayRecord writer (`file_adapters.ArrayRecordFileAdapter`,
its writer options), then adds 'array_record' to the alternative file formats
of dataset_info.json, as `tfds convert_format` does (which needs apache_beam).
After that `builder.as_data_source(split, file_format='array_record')` reads
every example the TFRecord files hold; the TFRecord files are left in place.

Safe to kill and rerun: each shard is written to a temporary name
(tfds' `incomplete.<hex>.` prefix) and renamed once complete and counted, so a
file with a shard's name is always whole; a rerun skips the shards that exist
with the right record count (unless --overwrite) and removes stale temporary
files. dataset_info.json changes only when every shard of every split exists.
Record counts are checked against the split info's shard_lengths.

Paths go through etils.epath / tf.io.gfile. Where the dataset dir is not a
local path (gs://...), each shard is written to a local temporary file and
then copied to its temporary name in DIR and renamed.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from typing import List, Optional, Sequence

from etils import epath

# tfds' pieces (importing tensorflow_datasets imports them).
import tensorflow_datasets as tfds  # pylint: disable=unused-import
from tensorflow_datasets.core import constants
from tensorflow_datasets.core import dataset_info as dataset_info_lib
from tensorflow_datasets.core import file_adapters
from tensorflow_datasets.core.utils import py_utils

from swin_jax import cli

ARRAY_RECORD = file_adapters.FileFormat.ARRAY_RECORD
DEFAULT_NUM_THREADS = 8
# Records read from the TFRecord file per tf.data step (fewer Python steps).
_READ_BATCH = 256


class ConversionError(ValueError):
  """The dataset dir cannot be converted (message is one line)."""


@dataclasses.dataclass(frozen=True)
class Shard:
  """One shard to convert: TFRecord path -> ArrayRecord path, its length."""
  split: str
  index: int
  num_shards: int
  length: int
  in_path: epath.Path
  out_path: epath.Path


@dataclasses.dataclass
class Summary:
  """What `convert` did."""
  dataset_dir: str
  converted: List[str] = dataclasses.field(default_factory=list)
  skipped: List[str] = dataclasses.field(default_factory=list)
  removed_temp: List[str] = dataclasses.field(default_factory=list)
  num_records: int = 0
  metadata_updated: bool = False


def _is_local(path: epath.Path) -> bool:
  """Whether the path is on the local file system (no gs:// etc. scheme)."""
  return '://' not in os.fspath(path)


def _read_info(dataset_dir: epath.Path):
  """The dataset_info proto of `dataset_dir`; one-line errors."""
  info_path = dataset_dir / constants.DATASET_INFO_FILENAME
  if not info_path.exists():
    hint = ''
    try:
      versions = sorted(p.name for p in dataset_dir.iterdir()
                        if (p / constants.DATASET_INFO_FILENAME).exists())
    except (OSError, NotADirectoryError):
      versions = []
    if versions:
      hint = (f' It holds the version dirs {versions}: pass one, e.g. '
              f'--dataset_dir={dataset_dir / versions[-1]}.')
    raise ConversionError(
        f'No {constants.DATASET_INFO_FILENAME} in {dataset_dir}: '
        f'--dataset_dir must be a prepared tfds dataset version dir (e.g. '
        f'~/tensorflow_datasets/imagenet2012/5.1.0).{hint}')
  try:
    return dataset_info_lib.read_proto_from_builder_dir(dataset_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(
        f'Cannot read {info_path}: {" ".join(str(e).split())}') from e


def _input_format(info, dataset_dir: epath.Path) -> file_adapters.FileFormat:
  value = info.file_format or file_adapters.DEFAULT_FILE_FORMAT.value
  try:
    fmt = file_adapters.FileFormat.from_value(value)
  except ValueError as e:
    raise ConversionError(
        f'Dataset in {dataset_dir} has the unknown file format {value!r}.'
    ) from e
  if fmt == ARRAY_RECORD:
    raise ConversionError(
        f'Dataset {info.name!r} in {dataset_dir} is already ArrayRecord (its '
        f'file format is {fmt.value}): nothing to convert.')
  if not file_adapters.ADAPTER_FOR_FORMAT[fmt].SUPPORTS_TF_DATA:
    raise ConversionError(
        f'Dataset in {dataset_dir} is stored as {fmt.value}, which this tool '
        f'cannot read (it reads formats with tf.data support, e.g. tfrecord).')
  return fmt


def plan(dataset_dir: epath.Path, info) -> List[Shard]:
  """Every shard of every split, with its input and output path."""
  in_format = _input_format(info, dataset_dir)
  in_splits = dataset_info_lib.get_split_dict_from_proto(
      info, data_dir=dataset_dir, file_format=in_format)
  shards = []
  for name, split_info in in_splits.items():
    template = split_info.filename_template
    lengths = [int(n) for n in split_info.shard_lengths]
    if template is None or not lengths:
      raise ConversionError(
          f'Split {name!r} of {dataset_dir} has no shard list in '
          f'{constants.DATASET_INFO_FILENAME} (shard_lengths empty): cannot '
          f'name its files.')
    out_template = template.replace(filetype_suffix=ARRAY_RECORD.file_suffix)
    n = len(lengths)
    for i, length in enumerate(lengths):
      shards.append(Shard(
          split=name, index=i, num_shards=n, length=length,
          in_path=template.sharded_filepath(shard_index=i, num_shards=n),
          out_path=out_template.sharded_filepath(shard_index=i, num_shards=n)))
  present = _listing(dataset_dir)
  missing = [s.in_path for s in shards if s.in_path.name not in present]
  if missing:
    raise ConversionError(
        f'{len(missing)} of the {len(shards)} {in_format.value} shard files '
        f'listed in {constants.DATASET_INFO_FILENAME} are missing from '
        f'{dataset_dir}, e.g. {missing[0].name}.')
  return shards


def _listing(dataset_dir: epath.Path) -> set:
  """File names in the dir (one listing, not a stat per shard: gs://)."""
  return {p.name for p in dataset_dir.iterdir()}


def count_records(path: epath.Path) -> Optional[int]:
  """Records in an ArrayRecord file (its footer), None if it is unreadable."""
  try:
    return file_adapters.ArrayRecordFileAdapter.num_examples(path)
  except Exception:  # pylint: disable=broad-except  # Truncated / not ArrayRecord.
    return None


def _records(shard: Shard, in_format: file_adapters.FileFormat, counter: list):
  """(key, serialized record) of the input shard, in file order."""
  ds = file_adapters.ADAPTER_FOR_FORMAT[in_format].make_tf_data(shard.in_path)
  for batch in ds.batch(_READ_BATCH).as_numpy_iterator():
    for record in batch:
      yield counter[0], record
      counter[0] += 1


def _write_local(shard: Shard, in_format, path: epath.Path) -> None:
  """Writes the shard's records to `path` (local) and checks the count."""
  counter = [0]
  file_adapters.ArrayRecordFileAdapter.write_examples(
      path, _records(shard, in_format, counter))
  if counter[0] != shard.length:
    raise ConversionError(
        f'{shard.in_path} holds {counter[0]} records but '
        f'{constants.DATASET_INFO_FILENAME} says shard {shard.index} of split '
        f'{shard.split!r} has {shard.length}: the dataset is damaged or its '
        f'info is stale; nothing was written for this shard.')
  written = count_records(path)
  if written != shard.length:
    raise ConversionError(
        f'Wrote {written} records to {path} but expected {shard.length} '
        f'(shard {shard.index} of split {shard.split!r}).')


def convert_shard(shard: Shard, in_format: file_adapters.FileFormat) -> None:
  """Writes one ArrayRecord shard: temporary name, then rename when whole."""
  # tfds' incomplete_file: `incomplete.<hex>.<name>`, renamed on success,
  # deleted on failure; a kill leaves only such a temporary file.
  with py_utils.incomplete_file(shard.out_path) as tmp_path:
    if _is_local(tmp_path):
      _write_local(shard, in_format, tmp_path)
    else:  # Stage locally, then copy to the temporary name next to the data.
      staging = tempfile.mkdtemp(prefix='to_array_record_')
      try:
        local = epath.Path(staging) / shard.out_path.name
        _write_local(shard, in_format, local)
        import tensorflow as tf  # pylint: disable=g-import-not-at-top  # gs:// only
        tf.io.gfile.copy(os.fspath(local), os.fspath(tmp_path), overwrite=True)
      finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stale_temp_files(dataset_dir: epath.Path,
                      shards: Sequence[Shard]) -> List[epath.Path]:
  """Temporary files a killed run left for these shards (or the info)."""
  names = {s.out_path.name for s in shards} | {constants.DATASET_INFO_FILENAME}
  stale = []
  for path in dataset_dir.glob(f'{constants.INCOMPLETE_PREFIX}*'):
    if not py_utils.is_incomplete_file(path):
      continue
    # incomplete.<32 hex>.<shard name>
    original = path.name.split('.', 2)[-1]
    if original in names:
      stale.append(path)
  return stale


def update_metadata(dataset_dir: epath.Path) -> bool:
  """Adds 'array_record' to the alternative file formats of dataset_info.json.

  Returns:
    Whether the file changed (False: it already listed array_record).
  """
  info = _read_info(dataset_dir)  # Re-read: change nothing else in it.
  if ARRAY_RECORD.value in list(info.alternative_file_formats):
    return False
  info.alternative_file_formats.append(ARRAY_RECORD.value)
  json_str = dataset_info_lib.get_dataset_info_json(info)
  path = dataset_info_lib.dataset_info_path(dataset_dir)
  with py_utils.incomplete_file(path) as tmp_path:
    tmp_path.write_text(json_str)
  return True


def convert(dataset_dir, *, overwrite: bool = False,
            num_threads: int = DEFAULT_NUM_THREADS,
            log=print) -> Summary:
  """Adds ArrayRecord copies of every shard of `dataset_dir` (see module doc).

  Args:
    dataset_dir: prepared tfds dataset version dir (local or gs://).
    overwrite: rewrite shards that are already converted.
    num_threads: shards converted concurrently.
    log: progress lines go here (None: quiet).

  Returns:
    A Summary of the shards converted and skipped.

  Raises:
    ConversionError: one-line reason (no dataset_info.json, already
      ArrayRecord, missing input files, record count mismatch).
  """
  log = log or (lambda *_: None)
  dataset_dir = epath.Path(os.path.expanduser(os.fspath(dataset_dir)))
  info = _read_info(dataset_dir)
  in_format = _input_format(info, dataset_dir)
  shards = plan(dataset_dir, info)
  summary = Summary(dataset_dir=os.fspath(dataset_dir))
  for path in _stale_temp_files(dataset_dir, shards):
    path.unlink(missing_ok=True)
    summary.removed_temp.append(path.name)
  if summary.removed_temp:
    log(f'removed {len(summary.removed_temp)} temporary file(s) of an '
        f'interrupted run')
  todo = []
  present = _listing(dataset_dir)
  for shard in shards:
    if not overwrite and shard.out_path.name in present:
      if count_records(shard.out_path) == shard.length:
        summary.skipped.append(shard.out_path.name)
        continue
      log(f'{shard.out_path.name} exists but does not hold {shard.length} '
          f'records: rewriting it')
    todo.append(shard)
  log(f'{info.name} {info.version} in {dataset_dir}: {len(shards)} shards '
      f'({in_format.value}), {len(summary.skipped)} already converted, '
      f'{len(todo)} to write')
  start = time.time()
  with concurrent.futures.ThreadPoolExecutor(
      max_workers=max(1, int(num_threads))) as pool:
    futures = {pool.submit(convert_shard, s, in_format): s for s in todo}
    try:
      for k, future in enumerate(concurrent.futures.as_completed(futures), 1):
        future.result()
        shard = futures[future]
        summary.converted.append(shard.out_path.name)
        summary.num_records += shard.length
        log(f'[{k}/{len(todo)}] {shard.out_path.name} ({shard.length} '
            f'records, {time.time() - start:.0f} s)')
    except BaseException:
      for f in futures:
        f.cancel()
      raise
  present = _listing(dataset_dir)
  missing = [s.out_path.name for s in shards if s.out_path.name not in present]
  if missing:  # Cannot happen unless files vanish underneath us.
    raise ConversionError(
        f'{len(missing)} ArrayRecord shards missing after conversion, e.g. '
        f'{missing[0]}; {constants.DATASET_INFO_FILENAME} left unchanged.')
  summary.metadata_updated = update_metadata(dataset_dir)
  if summary.metadata_updated:
    log(f'{constants.DATASET_INFO_FILENAME}: added {ARRAY_RECORD.value} to '
        f'the alternative file formats')
  return summary


def _one_line(e: BaseException) -> str:
  return ' '.join(str(e).split()) or type(e).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
  cli.quiet_startup()
  parser = argparse.ArgumentParser(
      prog='python -m swin_jax.tools.to_array_record',
      description='Add ArrayRecord files (random access, for the grain input '
                  'pipeline) to a tfds dataset prepared as TFRecord, in place.')
  parser.add_argument(
      '--dataset_dir', required=True,
      help='prepared tfds dataset version dir holding dataset_info.json, e.g. '
           '~/tensorflow_datasets/imagenet2012/5.1.0 (gs:// paths work)')
  parser.add_argument('--overwrite', action='store_true',
                      help='rewrite shards that are already converted')
  parser.add_argument('--num_threads', type=int, default=DEFAULT_NUM_THREADS,
                      help='shards converted concurrently (default %(default)s)')
  args = parser.parse_args(argv)
  if args.num_threads < 1:
    parser.error('--num_threads must be >= 1')
  try:
    summary = convert(args.dataset_dir, overwrite=args.overwrite,
                      num_threads=args.num_threads)
  except ConversionError as e:
    print(f'error: {_one_line(e)}', file=sys.stderr)
    return 1
  print(f'done: {len(summary.converted)} shards written '
        f'({summary.num_records} records), {len(summary.skipped)} skipped; '
        f'read with file_format={ARRAY_RECORD.value!r}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
