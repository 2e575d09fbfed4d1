"""One writer per workdir: ``<workdir>/lock.json``, held by process 0 while a run trains.

A second run started into the same workdir would write checkpoints and logs between the
first one's, and nothing would tell. So ``train_and_evaluate`` holds ``WorkdirLock`` from
before it writes anything until it returns or raises:

* Taking it creates ``lock.json`` atomically (``O_CREAT | O_EXCL``) with the holder's host
  name, pid, the process's start time and a heartbeat time, refreshed every
  ``HEARTBEAT_S`` seconds by a daemon thread.
* A lock found there is honoured while its holder lives: on the same host, while that pid
  runs (and is the same process: pid and start time); from another host (a shared or
  gs:// workdir), while its heartbeat is younger than ``STALE_AFTER_S``. A second run is
  then refused with ``WorkdirLockedError`` (one line: the holder and what to do).
* A lock whose holder is gone (killed with SIGKILL, a crashed host) is stale: it is taken
  over with a warning that names the old holder.
* Released on exit, also on exceptions; only a lock that is still this run's own is
  removed.

Only process 0 takes it; the other processes learn its outcome (and raise with it) through
one broadcast, so a refused multi-process run stops on every host. ``--mode=evaluate``
reads only and takes no lock: it may run next to a training run.

On gs:// there is no atomic create through tf.io.gfile: the lock is written, then read
back to check it is this run's; two runs started within that instant may both proceed.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import Optional

import jax
from jax.experimental import multihost_utils
import numpy as np

from swin_jax import procs
from swin_jax.train import checkpointing

log = logging.getLogger('swin_jax')

LOCK_FILE = 'lock.json'
HEARTBEAT_S = 60.0  # how often the holder refreshes its heartbeat
STALE_AFTER_S = 600.0  # another host's lock without a heartbeat for this long is stale


class WorkdirLockedError(FileExistsError):
  """Another live run holds the workdir's lock."""


def not_writable(workdir: str, err: OSError) -> PermissionError:
  """The one-line error for a workdir that training cannot write to."""
  what = f'{err.strerror or err}' + (f': {err.filename}' if err.filename else '')
  return PermissionError(
      f'--workdir={workdir} is not writable ({what}): training writes checkpoints, logs and '
      f'config.json there. Use a writable --workdir, or fix its permissions '
      f'(--mode=evaluate only reads a workdir).')


def _describe(holder: dict) -> str:
  started = holder.get('started')
  when = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started)) if started else '?'
  return f'pid {holder.get("pid")} on host {holder.get("host")!r}, started {when}'


class WorkdirLock:
  """``<workdir>/lock.json``; ``acquire()`` / ``release()``, or a context manager."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self.held = False
    self._info: dict = {}
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  # ---------------------------------------------------------------- public
  def acquire(self) -> 'WorkdirLock':
    """Takes the lock (process 0), or raises WorkdirLockedError / PermissionError."""
    error = None
    if jax.process_index() == 0:
      try:
        self._acquire()
      except Exception as e:  # pylint: disable=broad-except  # raised below, on every process
        unwritable = isinstance(e, OSError) and not isinstance(e, WorkdirLockedError)
        error = not_writable(self.workdir, e) if unwritable else e
    if jax.process_count() > 1:
      ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
      if not ok and error is None:
        error = WorkdirLockedError(
            f'--workdir={self.workdir}: process 0 could not take {self.path}; its error '
            f'says why. Nothing was written.')
    if error is not None:
      raise error
    return self

  def release(self) -> None:
    """Removes the lock if this run holds it (and it is still this run's own)."""
    if not self.held:
      return
    self.held = False
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
    try:
      if (self._read() or {}).get('token') == self._info['token']:
        checkpointing.as_path(self.path).unlink()
    except OSError as e:
      log.warning('Could not remove the workdir lock %s (%s): delete it by hand if no run '
                  'uses %s.', self.path, e, self.workdir)

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()

  # ---------------------------------------------------------------- internals
  def _read(self) -> Optional[dict]:
    """The lock file's holder, or None if there is none or it is unreadable."""
    try:
      holder = json.loads(checkpointing.as_path(self.path).read_text())
    except (OSError, ValueError):
      return None
    return holder if isinstance(holder, dict) else None

  def _new_info(self) -> dict:
    now = time.time()
    return {'host': socket.gethostname(), 'pid': os.getpid(),
            'pid_start': procs.process_start(os.getpid()), 'started': now, 'heartbeat': now,
            'token': uuid.uuid4().hex, 'command': ' '.join(sys.argv)[:1000]}

  def _stale_reason(self, holder: Optional[dict]) -> Optional[str]:
    """Why the lock found in the workdir no longer counts, or None while its holder lives."""
    if holder is None:  # unreadable: a writer between create and write, or garbage
      try:
        age = time.time() - checkpointing.as_path(self.path).stat().mtime
      except OSError:
        return 'it is gone'
      return f'it is unreadable and {age:.0f} s old' if age > 10 else None
    if holder.get('host') == socket.gethostname():
      pid = holder.get('pid')
      if not isinstance(pid, int) or not procs.pid_alive(pid):
        return f'its process ({_describe(holder)}) is gone'
      start = holder.get('pid_start')
      if start is not None and procs.process_start(pid) not in (None, start):
        return f'pid {pid} is now another process (the holder, {_describe(holder)}, is gone)'
      return None
    age = time.time() - float(holder.get('heartbeat') or 0)
    if age > STALE_AFTER_S:
      return f'its holder ({_describe(holder)}) sent no heartbeat for {age / 60:.0f} min'
    return None

  def _refused(self, holder: Optional[dict]) -> WorkdirLockedError:
    if holder is None:
      who, todo = 'one that is taking the lock right now', 'Wait for it'
    elif holder.get('host') == socket.gethostname():
      who = _describe(holder)
      todo = f'Wait for it to finish or stop it (kill {holder.get("pid")})'
    else:
      who = _describe(holder)
      todo = (f'If that run is gone, delete {self.path} (or wait: a lock without heartbeat for '
              f'{STALE_AFTER_S / 60:.0f} min is taken over)')
    return WorkdirLockedError(
        f'--workdir={self.workdir} is in use by another run ({who}; lock {self.path}): two '
        f'runs in one workdir would mix their checkpoints. {todo}, or use another '
        f'--workdir. Nothing was written.')

  def _acquire(self) -> None:
    for _ in range(5):
      info = self._new_info()
      if self._create(info):
        self._info, self.held = info, True
        self._start_heartbeat()
        return
      holder = self._read()
      why = self._stale_reason(holder)
      if why is None:
        raise self._refused(holder)
      log.warning('Taking over the stale lock of --workdir=%s: %s.', self.workdir, why)
      self._break(holder)
    raise self._refused(self._read())

  def _create(self, info: dict) -> bool:
    """Writes the lock if there is none; False if one exists."""
    text = json.dumps(info, indent=1)
    if checkpointing.is_remote(self.path):
      path = checkpointing.as_path(self.path)
      if path.exists():
        return False
      path.write_text(text)
      return (self._read() or {}).get('token') == info['token']
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'w') as f:
      f.write(text)
    return True

  def _break(self, holder: Optional[dict]) -> None:
    """Removes a stale lock. Locally it is first renamed to a name of this process: of two
    runs that found the same stale lock, only one can rename it, so the other cannot
    remove the lock the first one takes next."""
    path = checkpointing.as_path(self.path)
    try:
      if checkpointing.is_remote(self.path):
        if self._read() == holder:
          path.unlink()
        return
      mine = f'{self.path}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}'
      os.rename(self.path, mine)
      os.remove(mine)
    except FileNotFoundError:  # another run broke it first: try again
      pass

  def _start_heartbeat(self) -> None:
    self._stop.clear()
    self._thread = threading.Thread(target=self._beat, name='swin_jax-workdir-lock',
                                    daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        if (self._read() or {}).get('token') != self._info['token']:
          log.warning('The lock of --workdir=%s is no longer this run\'s (%s): another run '
                      'may be writing there.', self.workdir, self.path)
          return
        self._info['heartbeat'] = time.time()
        text = json.dumps(self._info, indent=1)
        if checkpointing.is_remote(self.path):
          checkpointing.as_path(self.path).write_text(text)
        else:  # atomic: the lock never disappears or reads half-written
          tmp = f'{self.path}.{os.getpid()}.tmp'
          with open(tmp, 'w') as f:  # pylint: disable=unspecified-encoding
            f.write(text)
          os.replace(tmp, self.path)
      except OSError as e:  # a full disk or a network hiccup: try again next time
        log.warning('Could not refresh the workdir lock %s: %s', self.path, e)
