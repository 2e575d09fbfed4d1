"""metrics.jsonl / TensorBoard written off the training thread (swin_jax/train/metric_writer.py),
the speed fields, console line, MFU and profiler traces (swin_jax/train/throughput.py), and
how the trainer uses them: one line per log step with the progress bar off, each step logged
once after a resume, a trace of config.profile_steps."""
import contextlib
import glob
import io
import json
import os
import shutil
import threading
import time
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config, set_fields

DEMO = 'configs/demo/vit_digits.py'


def _records(path):
  return [json.loads(l) for l in open(path)]


def _events(tb_dir):
  """{(tag, step): value} of every events file in tb_dir."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = {}
  for f in glob.glob(os.path.join(tb_dir, 'events.out.tfevents.*')):
    for e in tf.compat.v1.train.summary_iterator(f):
      for v in e.summary.value:
        out[(v.tag, e.step)] = v.simple_value
  return out


# ------------------------------------------------------------------ the writer
def test_records_are_written_in_order_off_the_training_thread(tmp_path):
  from swin_jax.train.metric_writer import MetricWriter
  writer = MetricWriter(str(tmp_path), enabled=True)
  assert any(t.name == 'MetricWriter' for t in threading.enumerate())
  t0 = time.perf_counter()
  for step in range(1, 501):
    writer.write(step, 'train', {'loss': 1.0 / step, 'lr': np.float32(0.5)})
  queued = time.perf_counter() - t0
  writer.write(500, 'eval', {'loss': 0.25, 'accuracy': 0.75})
  writer.close()
  assert not any(t.name == 'MetricWriter' for t in threading.enumerate())
  recs = _records(tmp_path / 'metrics.jsonl')
  assert [r['step'] for r in recs] == list(range(1, 501)) + [500]
  assert recs[0] == {'step': 1, 'split': 'train', 'time': recs[0]['time'], 'loss': 1.0,
                     'lr': 0.5}
  assert recs[-1]['split'] == 'eval' and recs[-1]['accuracy'] == 0.75
  events = _events(tmp_path / 'tensorboard')
  assert events[('train/loss', 4)] == 0.25 and events[('eval/accuracy', 500)] == 0.75
  assert len(events) == 500 * 2 + 2
  assert writer.stats['records'] == 501
  assert queued / 500 < 1e-3, queued  # the training thread only queues (~5 us a record)


def test_local_records_are_on_disk_without_close(tmp_path):
  from swin_jax.train.metric_writer import MetricWriter
  writer = MetricWriter(str(tmp_path), enabled=True)
  writer.write(2, 'train', {'loss': 0.5})
  deadline = time.time() + 10
  while not (tmp_path / 'metrics.jsonl').read_text() and time.time() < deadline:
    time.sleep(0.01)
  assert json.loads((tmp_path / 'metrics.jsonl').read_text())['loss'] == 0.5  # tail -f
  writer.close()


def test_disabled_writer_writes_nothing(tmp_path):
  from swin_jax.train.metric_writer import MetricWriter
  writer = MetricWriter(str(tmp_path), enabled=False)
  writer.write(1, 'train', {'loss': 1.0})
  writer.close()
  assert os.listdir(tmp_path) == []


class _GcsLikeFile:
  """A tf.io.gfile file on gs:// as far as uploads go: writes stay local, every flush uploads
  (here: writes out) the whole object; counted in `uploads`."""
  uploads = []

  def __init__(self, path, mode):
    self.path, self.text = path, ''
    if 'a' in mode and os.path.exists(path):
      self.text = open(path).read()

  def write(self, s):
    self.text += s

  def flush(self):
    with open(self.path + '.upload', 'w') as f:
      f.write(self.text)
    os.replace(self.path + '.upload', self.path)  # a reader sees the old or the new object
    _GcsLikeFile.uploads.append(len(self.text))

  def close(self):
    self.flush()


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """gs://... mapped onto tmp_path/gcs through the trainer's path helpers; metrics.jsonl
  opened as a _GcsLikeFile."""
  from etils import epath
  from swin_jax.train import checkpointing
  root = tmp_path / 'gcs'

  def local(p):
    p = os.fspath(p)
    return str(root / p[len('gs://'):]) if p.startswith('gs://') else p

  monkeypatch.setattr(checkpointing, 'as_path', lambda p: epath.Path(local(p)))
  monkeypatch.setattr(checkpointing, 'open_file', lambda p, mode='r': _GcsLikeFile(local(p), mode))
  _GcsLikeFile.uploads = []
  return root


def test_remote_files_are_uploaded_on_a_timer_not_per_record(bucket):
  from swin_jax.train.metric_writer import MetricWriter
  work = 'gs://b/run'
  writer = MetricWriter(work, enabled=True)
  assert writer.flush_secs == 30.0  # the remote default
  for step in range(1, 101):
    writer.write(step, 'train', {'loss': 1.0})
  writer.write(100, 'eval', {'loss': 0.5})  # an evaluation record flushes at once
  deadline = time.time() + 10
  while not _GcsLikeFile.uploads and time.time() < deadline:
    time.sleep(0.01)
  time.sleep(0.2)
  assert len(_GcsLikeFile.uploads) == 1, _GcsLikeFile.uploads  # not 101 uploads
  writer.write(101, 'train', {'loss': 1.0})
  writer.flush()  # what the trainer asks after a checkpoint save; returns at once
  while len(_GcsLikeFile.uploads) < 2 and time.time() < deadline:
    time.sleep(0.01)
  assert len(_GcsLikeFile.uploads) == 2
  writer.close()  # the last upload
  assert len(_GcsLikeFile.uploads) == 3
  recs = _records(bucket / 'b' / 'run' / 'metrics.jsonl')
  assert [r['step'] for r in recs] == list(range(1, 101)) + [100, 101]
  assert _events(bucket / 'b' / 'run' / 'tensorboard')[('eval/loss', 100)] == 0.5


def test_a_due_flush_happens_without_further_records(bucket):
  from swin_jax.train.metric_writer import MetricWriter
  writer = MetricWriter('gs://b/run', enabled=True, flush_secs=0.5)
  for step in range(1, 11):
    writer.write(step, 'train', {'loss': 1.0})
  path = bucket / 'b' / 'run' / 'metrics.jsonl'
  deadline = time.time() + 20
  while not (path.exists() and len(_records(path)) == 10) and time.time() < deadline:
    time.sleep(0.01)
  assert len(_records(path)) == 10  # uploaded by the timer, before close
  assert len(_GcsLikeFile.uploads) <= 2, _GcsLikeFile.uploads  # not one per record
  writer.close()


def test_background_errors_surface_at_the_next_write_and_at_close(tmp_path, monkeypatch):
  from swin_jax.train import checkpointing
  from swin_jax.train.metric_writer import MetricWriter, MetricWriterError

  class Full(io.StringIO):
    def write(self, s):
      raise OSError(28, 'No space left on device')

  monkeypatch.setattr(checkpointing, 'open_file', lambda p, mode='r': Full())
  writer = MetricWriter(str(tmp_path), enabled=True)
  writer.write(1, 'train', {'loss': 1.0})
  with pytest.raises(MetricWriterError, match='No space left on device'):
    deadline = time.time() + 10
    while time.time() < deadline:
      writer.write(2, 'train', {'loss': 1.0})
      time.sleep(0.01)
  writer.close()  # reported once already

  writer = MetricWriter(str(tmp_path), enabled=True)
  writer.write(1, 'train', {'loss': 1.0})
  with pytest.raises(MetricWriterError, match=r'metrics.jsonl, tensorboard/\) failed'):
    writer.close()
  writer = MetricWriter(str(tmp_path), enabled=True)
  writer.write(1, 'train', {'loss': 1.0})
  writer.close(raise_errors=False)  # while another error propagates: logged, not raised


# ------------------------------------------------------------------ dedup on resume
def _write_lines(path, lines):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(''.join(lines))


_LOG = [json.dumps({'step': 2, 'split': 'train', 'loss': 2.0}) + '\n',
        json.dumps({'step': 4, 'split': 'train', 'loss': 1.0}) + '\n',
        json.dumps({'step': 4, 'split': 'eval', 'loss': 1.5}) + '\n',
        json.dumps({'step': 6, 'split': 'train', 'loss': 0.5}) + '\n',
        '{"step": 8, "split": "tr']  # cut by a kill mid-line


@pytest.mark.parametrize('remote', [False, True])
def test_drop_records_after_the_resume_step(tmp_path, bucket, remote):
  from swin_jax.train.metric_writer import drop_records_after
  path = 'gs://b/run/metrics.jsonl' if remote else str(tmp_path / 'run' / 'metrics.jsonl')
  local = str(bucket / 'b' / 'run' / 'metrics.jsonl') if remote else path
  _write_lines(local, _LOG)
  assert drop_records_after(path, 4) == 2
  assert open(local).read() == ''.join(_LOG[:3])
  assert os.listdir(os.path.dirname(local)) == ['metrics.jsonl']  # the temporary file renamed
  assert drop_records_after(path, 4) == 0
  assert drop_records_after(str(tmp_path / 'none.jsonl'), 4) == 0


# ------------------------------------------------------------------ MFU, meter, console
class _Tiny(nn.Module):
  """conv 3x3 (2 -> 4 channels) on 5x5, then Dense 100 -> 3: 1,800 + 300 multiply-adds."""

  @nn.compact
  def __call__(self, x, mask=None, train=False):
    x = nn.Conv(4, (3, 3), padding='SAME')(x)  # [B, 5, 5, 4]
    if mask is not None:
      x = x * (1 - mask[..., None])
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


def test_mfu_by_hand_with_a_fake_device_kind(monkeypatch):
  from swin_jax.train import throughput
  model = _Tiny()
  inputs = ((jnp.zeros((1, 5, 5, 2)),), {'mask': jnp.zeros((1, 5, 5))})
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs[0], **inputs[1]))
  macs = 5 * 5 * 4 * 2 * 9 + 100 * 3
  assert throughput.train_flops_per_example(model, variables, inputs) == 3 * 2 * macs
  # A batch of 4 counts the same per example.
  batch4 = ((jnp.zeros((4, 5, 5, 2)),), {'mask': jnp.zeros((4, 5, 5))})
  assert throughput.train_flops_per_example(model, variables, batch4) == 3 * 2 * macs

  monkeypatch.setitem(throughput.PEAK_FLOPS, 'Fake TPU', {'bfloat16': 1e9})
  state = types.SimpleNamespace(params=variables['params'], model_state={})
  flops, peak = throughput.mfu_inputs(model, state, inputs, 'bfloat16', device_kind='Fake TPU')
  assert (flops, peak) == (12600.0, 1e9)
  assert throughput.mfu_inputs(model, state, inputs, 'float32', 'Fake TPU') == (None, None)
  assert throughput.mfu_inputs(model, state, inputs, 'float32', 'cpu') == (None, None)

  # 2 devices, global batch 64: compile 10 s, then 10 steps of 0.5 s, 1 s of input wait.
  now = [0.0]
  meter = throughput.Meter(64, 2, flops, peak, clock=lambda: now[0])
  meter.start()
  now[0] = 10.0
  meter.step_done(1)
  for step in range(2, 12):
    now[0] += 0.5
    meter.add_input_wait(0.1)
    meter.step_done(step)
  f = meter.fields()
  assert f['compile_time_s'] == 10.0
  assert f['images_per_s'] == 64 * 10 / 5.0 == 128.0 and f['images_per_s_per_device'] == 64.0
  assert f['step_time_s'] == 0.5 and f['input_wait_frac'] == pytest.approx(0.2)
  assert f['mfu'] == pytest.approx(128.0 * 12600 / (2 * 1e9))  # = 8.064e-4
  assert meter.eta_s(11, 31) == 10.0
  # The next interval: an evaluation of 3 s inside it is not step time; no compile again.
  now[0] += 3.0 + 2 * 0.5
  meter.add_pause(3.0)
  meter.step_done(13)
  f = meter.fields()
  assert 'compile_time_s' not in f and f['step_time_s'] == pytest.approx(0.5)


def test_peak_table_lookups():
  from swin_jax.train import throughput
  assert throughput.peak_flops_per_device('TPU v4', 'bfloat16') == 275e12
  assert throughput.peak_flops_per_device('TPU v5 lite', 'float32') == 197e12
  assert throughput.peak_flops_per_device('TPU v3', 'bfloat16') == 61.5e12  # per TensorCore
  assert throughput.peak_flops_per_device('NVIDIA H100 80GB HBM3', 'float32') == 494.5e12
  assert throughput.peak_flops_per_device('NVIDIA A100-SXM4-80GB', 'bfloat16') == 312e12
  assert throughput.peak_flops_per_device('NVIDIA H200', 'bfloat16') == 989.5e12
  for kind in ('cpu', 'NVIDIA H200 NVL', 'TPU v9'):
    assert throughput.peak_flops_per_device(kind, 'bfloat16') is None
  assert throughput.peak_flops_per_device('TPU v4', 'float16') is None


def test_console_line():
  from swin_jax.train import throughput
  rec = {'loss': 0.41234, 'images_per_s': 2345.4, 'images_per_s_per_device': 293.2,
         'input_wait_frac': 0.021, 'mfu': 0.4123, 'compile_time_s': 31.2}
  assert throughput.console_line(120, 1320, rec, 754.0) == (
      'step 120/1320  loss 0.4123  2,345 img/s (293/device)  input 2%  MFU 41.2%  '
      'first step 31.2s (compile)  ETA 0:12:34')
  assert throughput.console_line(2, 6, {'loss': 1.0}, None) == 'step 2/6  loss 1.0000'


@pytest.mark.parametrize('value', [(5, 3), (0, 2), (3,), 'abc', (1.5, 3), [2, 4, 6]])
def test_profile_steps_are_validated(value):
  from swin_jax.train import throughput
  with pytest.raises(ValueError, match=r'config.profile_steps=.*use \(start, stop\)'):
    throughput.parse_profile_steps(value)


def test_profile_steps_off_and_on():
  from swin_jax.train import throughput
  assert throughput.parse_profile_steps(()) is None
  assert throughput.parse_profile_steps(None) is None
  assert throughput.parse_profile_steps([3, 5]) == (3, 5)


# ------------------------------------------------------------------ the trainer
def _quick(tfds_dir, **overrides):
  c = load_config(DEMO, 'quick')  # 6 steps, log and checkpoint every 2
  c.input.data_dir = tfds_dir
  c.progress_bar = False
  return set_fields(c, overrides)


@pytest.fixture(scope='module')
def run(tfds_dir, tmp_path_factory):
  """4 steps of the quick demo with a trace of steps 2-3 and a fake 'cpu' peak (for an mfu
  field): (workdir, printed output, train FLOPs per example, peak)."""
  from swin_jax.train import loop, throughput
  work = str(tmp_path_factory.mktemp('run') / 'w')
  out = io.StringIO()
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(throughput.PEAK_FLOPS, 'cpu', {'float32': 1e11})
    with contextlib.redirect_stdout(out):
      loop.train_and_evaluate(_quick(tfds_dir, total_steps=4, profile_steps=(2, 4)), work)
  trainer = loop.Trainer(_quick(tfds_dir), str(tmp_path_factory.mktemp('scratch')))
  trainer.ckpt.close()
  flops = throughput.train_flops_per_example(
      trainer.model, {'params': trainer.abstract_state.params},
      trainer.task.init_inputs(trainer.config))
  return work, out.getvalue(), flops, 1e11


def test_train_records_carry_speed_and_mfu(run):
  work, _, flops, peak = run
  train = [r for r in _records(os.path.join(work, 'metrics.jsonl')) if r['split'] == 'train']
  assert [r['step'] for r in train] == [2, 4]
  assert 'compile_time_s' in train[0] and 'compile_time_s' not in train[1]
  for r in train:
    assert r['images_per_s'] > 0 and 0 <= r['input_wait_frac'] <= 1
    assert r['images_per_s_per_device'] == r['images_per_s'] / jax.device_count()
    assert r['step_time_s'] == pytest.approx(64 / r['images_per_s'])
    assert r['mfu'] == pytest.approx(r['images_per_s'] * flops / (jax.device_count() * peak))


def test_one_console_line_per_log_step_with_the_progress_bar_off(run):
  _, out, _, _ = run
  lines = [l for l in out.splitlines() if l.startswith('step ') and ' loss ' in l]
  assert [l.split()[1] for l in lines] == ['2/4', '4/4'], out
  assert all('img/s' in l and 'MFU' in l and 'ETA' in l for l in lines), lines
  assert 'first step' in lines[0] and 'first step' not in lines[1]


def test_profile_steps_write_a_trace_for_tensorboard(run):
  work, _, _, _ = run
  traces = glob.glob(os.path.join(work, 'tensorboard', 'plugins', 'profile', '*', '*.xplane.pb'))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0


def test_resume_logs_each_step_once(run, tfds_dir, tmp_path):
  """The killed run had logged steps 5-6 (and half of a line) after its step-4 checkpoint;
  the resumed run drops them and logs its own."""
  from swin_jax.train import loop
  work = str(tmp_path / 'resume')
  shutil.copytree(run[0], work)
  path = os.path.join(work, 'metrics.jsonl')
  with open(path, 'a') as f:
    f.write(json.dumps({'step': 6, 'split': 'train', 'loss': -1.0}) + '\n')
    f.write(json.dumps({'step': 6, 'split': 'eval', 'loss': -1.0}) + '\n')
    f.write('{"step": 8, "spl')
  loop.train_and_evaluate(_quick(tfds_dir, total_steps=6), work)
  recs = _records(path)
  assert [(r['step'], r['split']) for r in recs] == [
      (2, 'train'), (4, 'train'), (4, 'eval'), (6, 'train'), (6, 'eval')]
  assert all(r['loss'] > 0 for r in recs)
  assert 'compile_time_s' in recs[3]  # the resumed run's first record
  # TensorBoard: the resumed run's file starts with a restart at step 5, from which on
  # TensorBoard drops what older files hold (its purge of orphaned data).
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  files = sorted(glob.glob(os.path.join(work, 'tensorboard', 'events.out.tfevents.*')),
                 key=os.path.getmtime)
  assert len(files) == 2
  starts = [e.step for e in tf.compat.v1.train.summary_iterator(files[1])
            if e.HasField('session_log') and e.session_log.status == e.session_log.START]
  assert starts == [5]


def test_invalid_profile_steps_fail_before_anything_is_written(tfds_dir, tmp_path):
  from swin_jax.train import loop
  work = tmp_path / 'bad'
  with pytest.raises(ValueError, match='config.profile_steps=\\(5, 3\\)'):
    loop.train_and_evaluate(_quick(tfds_dir, profile_steps=(5, 3)), str(work))
  assert not (work / 'metrics.jsonl').exists() and not (work / 'config.json').exists()
