"""Cost of one log step of the metric writer after 10,000 log steps (a script, not a test).

Compares the writer the trainer had before (``OldMetricWriter`` below, copied from
swin_jax/train/loop.py as it was: metrics.jsonl and tensorboardX, flushed on the training
thread at every log step) with ``swin_jax.train.metric_writer.MetricWriter`` (a queue; one
background thread; remote files flushed on a timer), on

* a local workdir, and
* a fake bucket: gs:// mapped onto a local directory through the trainer's path helpers, with
  the one property of GCS that matters here: an object cannot be appended to, so every flush
  uploads the whole file again (``GcsLikeFile`` writes the whole object out at each flush;
  the new writer's TensorBoard file, which TensorFlow opens itself, gets the same cost by a
  full copy at each flush).

Each run writes --steps train records of 11 scalars (what a train log step holds), untimed
up to the last --window, then times the last --window: the training thread's time in
``write()`` (the stall every host sees, since the others wait in the next collective), the
new writer's background time per record, and the bytes a flush uploads. Local disk writes
to the page cache are much faster than GCS uploads (~50-100 ms a request plus the bytes), so
on the fake bucket the bytes are the number to scale.

  python experiments/bench_logging.py [--steps 10000] [--window 200]
"""
import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from typing import Dict

from etils import epath

from swin_jax.train import checkpointing
from swin_jax.train import metric_writer


# ----------------------------------------------------------------------------- the old writer
class _RemoteEventFiles:
  """tensorboardX writer factory for remote logdirs (gs://) through tf.io.gfile
  (checkpointing.open_file). tensorboardX's own gs:// writer needs google-cloud-storage,
  which this package does not install; with this one TensorBoard events of a remote workdir
  go straight to <workdir>/tensorboard (``tensorboard --logdir gs://bucket/run``)."""

  def open(self, path):
    return checkpointing.open_file(path, 'wb')

  def directory_check(self, path):
    checkpointing.makedirs(path)


class OldMetricWriter:
  """metrics.jsonl (one JSON object per line) + TensorBoard event files, process 0 only.

  Local or remote (gs://) workdirs: remote files are written with tf.io.gfile, each flush
  (every log step) uploading the file again."""

  def __init__(self, workdir: str, enabled: bool):
    self.enabled = enabled
    if not enabled:
      return
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    tb_dir = os.path.join(workdir, 'tensorboard')
    if checkpointing.is_remote(tb_dir):
      from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
      record_writer.register_writer_factory(tb_dir.split(':', 1)[0], _RemoteEventFiles())
    self._jsonl = checkpointing.open_file(os.path.join(workdir, 'metrics.jsonl'), 'a')
    self._tb = SummaryWriter(tb_dir)

  def write(self, step: int, split: str, metrics: Dict[str, float]):
    if not self.enabled:
      return
    rec = {'step': int(step), 'split': split, 'time': time.time()}
    rec.update({k: float(v) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(rec) + '\n')
    self._jsonl.flush()
    for k, v in metrics.items():
      self._tb.add_scalar(f'{split}/{k}', float(v), int(step))
    self._tb.flush()

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


# ----------------------------------------------------------------------------- a fake bucket
class GcsLikeFile:
  """A gs:// file of tf.io.gfile as far as uploads go: writes stay in memory, each flush
  uploads (here: writes out) the whole object. ``uploading`` False skips the uploads (to fill
  the files quickly before the timed window)."""
  uploading = True
  uploaded_bytes = 0
  uploads = 0

  def __init__(self, path, mode):
    self.path, self.binary = path, 'b' in mode
    self.data = bytearray()
    if 'a' in mode and os.path.exists(path):
      with open(path, 'rb') as f:
        self.data += f.read()

  def write(self, s):
    self.data += s if self.binary else s.encode()

  def flush(self):
    if GcsLikeFile.uploading:
      with open(self.path, 'wb') as f:
        f.write(self.data)
      GcsLikeFile.uploaded_bytes += len(self.data)
      GcsLikeFile.uploads += 1

  def close(self):
    GcsLikeFile.uploading = True
    self.flush()


class FakeBucket:
  """gs://... -> <root>/... for checkpointing.as_path / open_file (the test suite's mapping),
  and a whole-object upload at each flush of the new writer's TensorBoard file."""

  def __init__(self, root):
    self.root = root
    self._saved = None

  def local(self, p):
    p = os.fspath(p)
    return os.path.join(self.root, p[len('gs://'):]) if p.startswith('gs://') else p

  def __enter__(self):
    self._saved = (checkpointing.as_path, checkpointing.open_file,
                   metric_writer._EventFile.flush)  # pylint: disable=protected-access
    checkpointing.as_path = lambda p: epath.Path(self.local(p))
    checkpointing.open_file = lambda p, mode='r': GcsLikeFile(self.local(p), mode)
    flush = self._saved[2]

    def upload_whole_file(event_file):
      flush(event_file)
      if GcsLikeFile.uploading:
        path = self.local(event_file.path)
        shutil.copyfile(path, path + '.uploaded')
        GcsLikeFile.uploaded_bytes += os.path.getsize(path)
        GcsLikeFile.uploads += 1
    metric_writer._EventFile.flush = upload_whole_file  # pylint: disable=protected-access
    return self

  def __exit__(self, *exc):
    (checkpointing.as_path, checkpointing.open_file,
     metric_writer._EventFile.flush) = self._saved  # pylint: disable=protected-access


# ----------------------------------------------------------------------------- the runs
def _record(step):
  return {'loss': 2.0 / step, 'accuracy': 0.5, 'grad_norm': 1.25, 'lr': 1e-3 / step,
          'param_norm': 32.5, 'epoch': step / 1000, 'images_per_s': 2345.6,
          'images_per_s_per_device': 293.2, 'step_time_s': 0.2183, 'input_wait_frac': 0.02,
          'mfu': 0.41}


def _drain(writer, n):
  while writer.stats['records'] < n:
    time.sleep(0.001)


def run(kind: str, workdir: str, steps: int, window: int) -> Dict[str, float]:
  """Writes `steps` train records; times the last `window`."""
  new = kind == 'new'
  writer = metric_writer.MetricWriter(workdir, True) if new else OldMetricWriter(workdir, True)
  GcsLikeFile.uploading = False
  t_all = time.perf_counter()
  for step in range(1, steps - window + 1):
    writer.write(step, 'train', _record(step))
  if new:
    _drain(writer, steps - window)
    busy0 = writer.stats['busy_s']
  GcsLikeFile.uploading = True
  GcsLikeFile.uploaded_bytes = GcsLikeFile.uploads = 0
  per_call = []
  for step in range(steps - window + 1, steps + 1):
    t = time.perf_counter()
    writer.write(step, 'train', _record(step))
    per_call.append(time.perf_counter() - t)
  out = {'write_ms_mean': 1e3 * statistics.mean(per_call),
         'write_ms_median': 1e3 * statistics.median(per_call),
         'write_ms_max': 1e3 * max(per_call),
         'uploaded_MB_per_step': GcsLikeFile.uploaded_bytes / window / 1e6}
  if new:
    _drain(writer, steps)
    out['background_ms_per_record'] = 1e3 * (writer.stats['busy_s'] - busy0) / window
    # One flush at 10,000 records (a remote workdir does this at most every 30 s).
    b0, u0, f0 = writer.stats['busy_s'], GcsLikeFile.uploaded_bytes, writer.stats['flushes']
    writer.write(steps, 'eval', {'loss': 1.0})  # an evaluation record flushes at once
    while writer.stats['flushes'] == f0:
      time.sleep(0.001)
    time.sleep(0.01)  # busy_s is added after the flush
    out['one_flush_ms'] = 1e3 * (writer.stats['busy_s'] - b0)
    out['one_flush_MB'] = (GcsLikeFile.uploaded_bytes - u0) / 1e6
  writer.close()
  out['total_s'] = time.perf_counter() - t_all
  if new:
    out['background_s_total'] = writer.stats['busy_s']
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--steps', type=int, default=10_000)
  parser.add_argument('--window', type=int, default=200)
  args = parser.parse_args()
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top,unused-import
    kinds = ('old', 'new')
  except ImportError:
    print('tensorboardX is not installed (pip install tensorboardX): the old writer is skipped')
    kinds = ('new',)
  for where in ('local', 'fake bucket'):
    for kind in kinds:
      with tempfile.TemporaryDirectory() as tmp:
        if where == 'local':
          res = run(kind, tmp, args.steps, args.window)
        else:
          with FakeBucket(tmp):
            checkpointing.makedirs('gs://bucket/run')
            res = run(kind, 'gs://bucket/run', args.steps, args.window)
        jsonl = os.path.join(tmp, *(['bucket', 'run'] if where != 'local' else []),
                             'metrics.jsonl')
        res['jsonl_MB'] = os.path.getsize(jsonl) / 1e6
      print(f'{where:11s} {kind}: ' + '  '.join(f'{k} {v:.4g}' for k, v in res.items()),
            flush=True)


if __name__ == '__main__':
  main()
