"""swin_jax.tools.to_array_record: TFRecord-prepared tfds dataset -> + ArrayRecord.

The embedded digits builder is prepared once as TFRecord (4 shards per split);
each test converts its own copy of that dir.
"""
import json
import os
import shutil
import uuid

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from swin_jax.data import digits, loader
from swin_jax.tools import to_array_record as t2a

SPLITS = ('train', 'test')


@pytest.fixture(scope='module')
def tfrecord_dir(tmp_path_factory):
  """The dataset version dir of sklearn_digits prepared as TFRecord only."""
  data_dir = str(tmp_path_factory.mktemp('tfds_tfrecord'))
  with digits.gcs_disabled():
    builder = digits.SklearnDigits(data_dir=data_dir, file_format='tfrecord')
    builder.download_and_prepare(
        download_config=digits.offline_download_config())
  return str(builder.data_dir)


@pytest.fixture
def version_dir(tfrecord_dir, tmp_path):
  """A fresh copy of the TFRecord-only dataset version dir."""
  out = tmp_path / 'sklearn_digits' / os.path.basename(tfrecord_dir)
  shutil.copytree(tfrecord_dir, out)
  return str(out)


def _files(d, kind):
  return sorted(n for n in os.listdir(d) if f'.{kind}-' in n)


def _info_json(d):
  with open(os.path.join(d, 'dataset_info.json')) as f:
    return json.load(f)


def _tfrecord_examples(d, split):
  builder = tfds.builder_from_directory(d)
  ds = builder.as_dataset(
      split=split, shuffle_files=False,
      decoders={'image': tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(interleave_cycle_length=1))
  return list(tfds.as_numpy(ds))


def _check_same_examples(d):
  """open_source reads every example of both splits, equal and in order."""
  builder = tfds.builder_from_directory(d)
  for split in SPLITS:
    source = loader.open_source(builder, split)
    want = _tfrecord_examples(d, split)
    assert len(source) == len(want) == builder.info.splits[split].num_examples
    for i, w in enumerate(want):
      got = source[i]
      assert got['image'] == w['image'], (split, i)
      assert int(got['label']) == int(w['label']), (split, i)
      assert int(got['id']) == int(w['id']), (split, i)


def _check_same_records(d):
  """Each ArrayRecord shard holds its TFRecord shard's serialized records."""
  from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
  tfr, arr = _files(d, 'tfrecord'), _files(d, 'array_record')
  assert [n.replace('.tfrecord-', '.array_record-') for n in tfr] == arr
  for t, a in zip(tfr, arr):
    want = [r.numpy() for r in tf.data.TFRecordDataset(os.path.join(d, t))]
    source = array_record_data_source.ArrayRecordDataSource(
        [os.path.join(d, a)])
    assert [source[i] for i in range(len(source))] == want, a


def test_refused_then_converted(version_dir, capsys):
  builder = tfds.builder_from_directory(version_dir)
  with pytest.raises(loader.ArrayRecordRequiredError) as e:
    loader.open_source(builder, 'train')
  command = ('python -m swin_jax.tools.to_array_record '
             f'--dataset_dir={version_dir}')
  assert command in str(e.value)
  before = _info_json(version_dir)

  assert t2a.main([f'--dataset_dir={version_dir}']) == 0
  assert 'done: 8 shards written (1797 records), 0 skipped' in (
      capsys.readouterr().out)

  # tfds' names for the array_record format, beside the untouched TFRecords.
  assert _files(version_dir, 'array_record') == [
      f'sklearn_digits-{s}.array_record-{i:05d}-of-00004'
      for s in ('test', 'train') for i in range(4)]
  assert len(_files(version_dir, 'tfrecord')) == 8
  assert not [n for n in os.listdir(version_dir) if n.startswith('incomplete')]
  after = _info_json(version_dir)
  assert after.pop('alternativeFileFormats') == ['array_record']
  assert after == before  # Nothing else changed; fileFormat stays tfrecord.
  _check_same_records(version_dir)
  _check_same_examples(version_dir)
  # And tfds' own reader sees the format.
  source = tfds.builder_from_directory(version_dir).as_data_source(
      'test', file_format='array_record')
  assert len(source) == 360
  # A builder made from its class, as input_pipeline.get_builder makes them, too (it reads
  # alternativeFileFormats into its proto only; loader.has_array_record brings it over).
  from swin_jax.data import digits  # pylint: disable=g-import-not-at-top
  with digits.gcs_disabled():
    by_class = digits.SklearnDigits(data_dir=os.path.dirname(os.path.dirname(version_dir)))
  assert by_class.is_prepared() and by_class.info.file_format.value == 'tfrecord'
  assert len(loader.open_source(by_class, 'test')) == 360


def test_rerun_skips_and_overwrite_rewrites(version_dir, monkeypatch):
  first = t2a.convert(version_dir, log=None)
  assert len(first.converted) == 8 and first.metadata_updated
  paths = [os.path.join(version_dir, n)
           for n in _files(version_dir, 'array_record')]
  mtimes = [os.stat(p).st_mtime_ns for p in paths]
  info = _info_json(version_dir)

  again = t2a.convert(version_dir, log=None)
  assert again.converted == [] and len(again.skipped) == 8
  assert not again.metadata_updated
  assert [os.stat(p).st_mtime_ns for p in paths] == mtimes
  assert _info_json(version_dir) == info

  # --overwrite, through the path used for gs:// dirs (write locally, copy
  # to the temporary name beside the data, rename).
  monkeypatch.setattr(t2a, '_is_local', lambda path: False)
  rewritten = t2a.convert(version_dir, overwrite=True, num_threads=2,
                          log=None)
  assert len(rewritten.converted) == 8 and not rewritten.metadata_updated
  assert _info_json(version_dir) == info
  _check_same_records(version_dir)


def test_interrupted_run_leftovers(version_dir):
  """A killed run's temp file, a missing and a damaged shard: repaired."""
  t2a.convert(version_dir, log=None)
  arr = _files(version_dir, 'array_record')
  # A half-written temporary file of a killed run, beside the finished ones,
  os.remove(os.path.join(version_dir, arr[0]))
  stale = os.path.join(version_dir, f'incomplete.{uuid.uuid4().hex}.{arr[0]}')
  with open(os.path.join(version_dir, arr[1]), 'rb') as f:
    data = f.read()
  with open(stale, 'wb') as f:
    f.write(data[:len(data) // 3])
  # a shard cut short (a copy gone wrong), and an unrelated file.
  with open(os.path.join(version_dir, arr[1]), 'wb') as f:
    f.write(data[:len(data) // 2])
  other = os.path.join(version_dir, 'notes.txt')
  with open(other, 'w') as f:
    f.write('keep me')

  summary = t2a.convert(version_dir, log=None)
  assert summary.removed_temp == [os.path.basename(stale)]
  assert sorted(summary.converted) == sorted(arr[:2])
  assert len(summary.skipped) == 6
  assert not os.path.exists(stale) and os.path.exists(other)
  _check_same_records(version_dir)
  _check_same_examples(version_dir)


def test_errors_are_one_line(version_dir, tmp_path, capsys):
  # Not a version dir (its parent), with the version dir suggested.
  parent = os.path.dirname(version_dir)
  assert t2a.main([f'--dataset_dir={parent}']) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'No dataset_info.json' in err
  assert f'--dataset_dir={version_dir}' in err

  # Already ArrayRecord (its main format).
  info = _info_json(version_dir)
  ar_dir = tmp_path / 'ar'
  ar_dir.mkdir()
  (ar_dir / 'dataset_info.json').write_text(
      json.dumps(dict(info, fileFormat='array_record')))
  assert t2a.main([f'--dataset_dir={ar_dir}']) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'already ArrayRecord' in err

  # Record counts that disagree with the split info: nothing half-written.
  info['splits'][0]['shardLengths'][2] = str(
      int(info['splits'][0]['shardLengths'][2]) + 1)
  with open(os.path.join(version_dir, 'dataset_info.json'), 'w') as f:
    json.dump(info, f)
  with pytest.raises(t2a.ConversionError,
                     match=r'holds 360 records but .* has 361'):
    t2a.convert(version_dir, log=None, num_threads=1)
  assert 'sklearn_digits-train.array_record-00002-of-00004' not in os.listdir(
      version_dir)
  assert not [n for n in os.listdir(version_dir) if n.startswith('incomplete')]
  assert 'alternativeFileFormats' not in _info_json(version_dir)
  assert t2a.main([f'--dataset_dir={version_dir}']) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'holds 360 records' in err


def test_missing_input_shard(version_dir):
  os.remove(os.path.join(version_dir,
                         'sklearn_digits-test.tfrecord-00003-of-00004'))
  with pytest.raises(t2a.ConversionError, match='1 of the 8 tfrecord shard'):
    t2a.convert(version_dir, log=None)
  assert _files(version_dir, 'array_record') == []
