"""A run's metrics.jsonl and TensorBoard events, written off the training thread.

Process 0 writes (``enabled``). ``write`` only puts the record on a queue; one background
thread turns each record into a line of ``<workdir>/metrics.jsonl`` (``{"step", "split",
"time", ...}``) and an Event in ``<workdir>/tensorboard/events.out.tfevents.*``. The events
are what ``tf.summary`` writes (Event protos in a TFRecord file, read by TensorBoard), written
with ``tf.io.TFRecordWriter``, which opens gs:// natively: about 40 us a record, where
``tf.summary.write`` takes 0.5 ms a scalar and ``tf.summary.scalar`` needs the tensorboard
package.

Flushing. A local file is flushed after every record (appending is cheap), so ``tail -f`` and
a sweep's summary see each line at once. A GCS object cannot be appended to: every flush of
a tf.io.gfile file on gs:// uploads the whole object again, so flushing at every log step
costs O(n^2) bytes over a run. Remote files are flushed at most every ``flush_secs`` (and
after each evaluation record, after each checkpoint (``flush()``), and at close): the uploads
then grow with the run's duration / flush_secs, not with its number of log steps, and no
host waits for them. A kill loses what was logged since the last flush; what came after the
last checkpoint is logged again by the resumed run.

Images (``write_image``: the detection task's prediction grid of each evaluation) go the same
way: the array is queued, and the background thread encodes it as PNG into an image Summary
(what ``tf.summary.image`` / TensorBoard's images plugin reads) at that step, flushed at once.

Errors of the background thread are raised by the next ``write`` or by ``close``.
"""
from __future__ import annotations

import io
import itertools
import json
import logging
import os
import queue
import socket
import threading
import time
from typing import Any, Dict, Optional

import numpy as np
from PIL import Image
import tensorflow as tf

from swin_jax.train import checkpointing

log = logging.getLogger('swin_jax')

# gs:// workdirs: how often (seconds) metrics.jsonl and the events file are uploaded at most.
DEFAULT_REMOTE_FLUSH_SECS = 30.0

_STOP = object()
_FLUSH = object()
_FILE_IDS = itertools.count()  # two runs of one process in the same second: two files


class _ImageRecord:
  """An image queued for the events file (the caller's copy: it may change the array)."""
  __slots__ = ('step', 'tag', 'time', 'image')

  def __init__(self, step: int, tag: str, wall_time: float, image: np.ndarray):
    self.step, self.tag, self.time, self.image = step, tag, wall_time, image


class MetricWriterError(RuntimeError):
  """Writing metrics.jsonl / TensorBoard events failed in the background thread."""


def drop_records_after(path: str, step: int) -> int:
  """Removes the lines of a metrics.jsonl (local or gs://) whose "step" is > ``step``, and
  lines that are not JSON (cut by a kill mid-write). Returns how many were dropped.

  A run resumed from the checkpoint of ``step`` trains (and logs) the later steps again; a
  killed run may have logged some of them already. The file is read once and, when something
  is dropped, rewritten once: a temporary file, then renamed over the old one.
  """
  p = checkpointing.as_path(path)
  if not p.exists():
    return 0
  lines = p.read_text().splitlines(keepends=True)
  kept = []
  for line in lines:
    try:
      rec = json.loads(line)
    except ValueError:
      continue
    if isinstance(rec, dict) and int(rec.get('step', 0)) > step:
      continue
    kept.append(line if line.endswith('\n') else line + '\n')
  dropped = len(lines) - len(kept)
  if dropped or (lines and not lines[-1].endswith('\n')):  # appending would join two lines
    tmp = checkpointing.as_path(f'{path}.tmp')
    tmp.write_text(''.join(kept))
    tmp.replace(p)
  return dropped


class _EventFile:
  """One TensorBoard events file: Event protos (scalars as simple_value) in TFRecord form.

  first_step: the first step this run logs, or None. A SessionLog START event at that step
  makes TensorBoard drop what older files of the logdir hold from that step on (what a killed
  run logged after the checkpoint this run resumes from), as it does after a restart."""

  def __init__(self, logdir: str, first_step: Optional[int] = None):
    self._tf = tf
    name = (f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.'
            f'{next(_FILE_IDS)}')
    self.path = os.path.join(logdir, name)
    self._writer = tf.io.TFRecordWriter(checkpointing.native_path(self.path))
    self._add(tf.compat.v1.Event(wall_time=time.time(), file_version='brain.Event:2'))
    if first_step is not None:
      self._add(tf.compat.v1.Event(wall_time=time.time(), step=first_step,
                                   session_log=tf.compat.v1.SessionLog(
                                       status=tf.compat.v1.SessionLog.START)))

  def _add(self, event):
    self._writer.write(event.SerializeToString())

  def scalars(self, step: int, wall_time: float, values: Dict[str, float]):
    summary = self._tf.compat.v1.Summary(value=[
        self._tf.compat.v1.Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
    self._add(self._tf.compat.v1.Event(wall_time=wall_time, step=step, summary=summary))

  def image(self, step: int, wall_time: float, tag: str, png: bytes, height: int, width: int):
    """One RGB PNG as an image Summary value (TensorBoard's images plugin)."""
    img = self._tf.compat.v1.Summary.Image(height=height, width=width, colorspace=3,
                                           encoded_image_string=png)
    summary = self._tf.compat.v1.Summary(value=[
        self._tf.compat.v1.Summary.Value(tag=tag, image=img)])
    self._add(self._tf.compat.v1.Event(wall_time=wall_time, step=step, summary=summary))

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


class MetricWriter:
  """metrics.jsonl + TensorBoard events of ``workdir`` (local or gs://), process 0 only.

  Args:
    workdir: the run's directory.
    enabled: False on the processes that do not write (every one but process 0).
    resume_step: the step the run starts from: lines of metrics.jsonl logged after it by an
      earlier, killed run are dropped first (``drop_records_after``), so each step appears
      once, and TensorBoard is told to drop them too (``_EventFile``). None leaves the files
      as they are.
    flush_secs: flush at most this often; None: after every record for a local workdir,
      every ``DEFAULT_REMOTE_FLUSH_SECS`` for a remote one. Evaluation records and ``close``
      always flush.
  """

  def __init__(self, workdir: str, enabled: bool, *, resume_step: Optional[int] = None,
               flush_secs: Optional[float] = None):
    self.enabled = enabled
    self._closed = False
    self._error: Optional[BaseException] = None
    self._reported = False
    self.stats = {'records': 0, 'flushes': 0, 'busy_s': 0.0}  # of the background thread
    if not enabled:
      return
    self.jsonl_path = os.path.join(workdir, 'metrics.jsonl')
    if flush_secs is None:
      flush_secs = DEFAULT_REMOTE_FLUSH_SECS if checkpointing.is_remote(workdir) else 0.0
    self.flush_secs = float(flush_secs)
    if resume_step is not None:
      dropped = drop_records_after(self.jsonl_path, resume_step)
      if dropped:
        log.info('Dropped %d line(s) of %s logged after step %d (the checkpoint this run '
                 'resumes from) or cut by a kill.', dropped, self.jsonl_path, resume_step)
    # Opened here, on the caller's thread: a workdir that cannot be written fails at once.
    tb_dir = os.path.join(workdir, 'tensorboard')
    checkpointing.makedirs(tb_dir)
    self._jsonl = checkpointing.open_file(self.jsonl_path, 'a')
    self._events = _EventFile(tb_dir, None if resume_step is None else resume_step + 1)
    self._queue: queue.SimpleQueue = queue.SimpleQueue()
    self._thread = threading.Thread(target=self._run, name='MetricWriter', daemon=True)
    self._thread.start()

  # ------------------------------------------------------------------ training thread
  def write(self, step: int, split: str, metrics: Dict[str, Any],
            flush: Optional[bool] = None):
    """Queues one record; returns at once. flush: flush the files after it (default: for
    evaluation records, which readers such as a sweep's summary wait for)."""
    if not self.enabled:
      return
    self._raise_error()
    if self._closed:
      raise MetricWriterError(f'write(step={step}) after close() of {self.jsonl_path}')
    rec = {'step': int(step), 'split': split, 'time': time.time()}
    rec.update({k: float(v) for k, v in metrics.items()})
    self._queue.put((rec, split == 'eval' if flush is None else flush))

  def write_image(self, step: int, tag: str, image):
    """Queues an RGB image (uint8 [H, W, 3]) for TensorBoard at ``step``; returns at once.
    The PNG encoding happens on the background thread; the events file is flushed after it."""
    if not self.enabled:
      return
    self._raise_error()
    if self._closed:
      raise MetricWriterError(f'write_image(step={step}) after close() of {self.jsonl_path}')
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
      raise ValueError(f'write_image({tag!r}): want uint8 [H, W, 3], got {arr.dtype} '
                       f'{arr.shape}.')
    self._queue.put(_ImageRecord(int(step), str(tag), time.time(), np.array(arr)))

  def flush(self):
    """Asks for a flush after the records queued so far; returns at once. The trainer asks
    after each checkpoint save, so a kill loses at most what was logged after it (and the
    resumed run logs that again) even when remote files are flushed on a timer."""
    if self.enabled and not self._closed:
      self._queue.put(_FLUSH)

  def close(self, raise_errors: bool = True):
    """Writes every queued record, flushes and closes the files; waits for the thread.

    raise_errors=False (closing while another exception propagates): a background error is
    logged instead of raised, so it does not hide the error that stopped training."""
    if not self.enabled or self._closed:
      return
    self._closed = True
    self._queue.put(_STOP)
    self._thread.join()
    if raise_errors:
      self._raise_error()
    elif self._error is not None and not self._reported:
      log.error('Writing %s failed: %r', self.jsonl_path, self._error)

  def _raise_error(self):
    if self._error is not None and not self._reported:
      self._reported = True
      raise MetricWriterError(f'writing the metrics of {os.path.dirname(self.jsonl_path)} '
                              f'(metrics.jsonl, tensorboard/) failed: {self._error!r}') \
          from self._error

  # ------------------------------------------------------------------ background thread
  def _run(self):
    last_flush, dirty = time.monotonic(), False
    while True:
      timeout = None
      if dirty:
        timeout = max(0.0, last_flush + self.flush_secs - time.monotonic())
      try:
        item = self._queue.get(timeout=timeout)
      except queue.Empty:
        item = None  # a flush is due and nothing else came
      if item is _STOP:
        break
      if self._error is not None:
        continue  # keep draining, so write() never blocks; the error is raised there
      t0 = time.perf_counter()
      try:
        force = item is _FLUSH
        if isinstance(item, _ImageRecord):
          self._write_image(item)
          dirty, force = True, True
        elif item is not None and not force:
          rec, force = item
          self._write_record(rec)
          dirty = True
        if dirty and (force or time.monotonic() - last_flush >= self.flush_secs):
          self._flush()
          last_flush, dirty = time.monotonic(), False
      except BaseException as e:  # pylint: disable=broad-except
        self._error = e
      self.stats['busy_s'] += time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
      self._jsonl.close()  # uploads a remote file a last time
    except BaseException as e:  # pylint: disable=broad-except
      self._error = self._error or e
    try:
      self._events.close()
    except BaseException as e:  # pylint: disable=broad-except
      self._error = self._error or e
    self.stats['busy_s'] += time.perf_counter() - t0

  def _write_record(self, rec: Dict[str, Any]):
    self._jsonl.write(json.dumps(rec) + '\n')
    split, step = rec['split'], rec['step']
    self._events.scalars(step, rec['time'], {f'{split}/{k}': v for k, v in rec.items()
                                             if k not in ('step', 'split', 'time')})
    self.stats['records'] += 1

  def _write_image(self, item: '_ImageRecord'):
    buf = io.BytesIO()
    Image.fromarray(item.image).save(buf, format='PNG')
    h, w = item.image.shape[:2]
    self._events.image(item.step, item.time, item.tag, buf.getvalue(), h, w)
    self.stats['images'] = self.stats.get('images', 0) + 1

  def _flush(self):
    self._jsonl.flush()
    self._events.flush()
    self.stats['flushes'] += 1
