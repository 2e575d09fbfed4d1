"""Processes on this machine: is a pid alive, and when did it start (to tell a reused pid).

Standard library only, so the sweep's parent process (which never imports jax) and the
workdir lock (``swin_jax.train.workdir``) share it.
"""
from __future__ import annotations

import os
from typing import Optional


def process_start(pid: int) -> Optional[str]:
  """The start time of process ``pid`` in clock ticks since boot (Linux /proc), which tells
  a reused pid from the original; None where unknown."""
  try:
    with open(f'/proc/{pid}/stat') as f:  # pylint: disable=unspecified-encoding
      # Field 22; the command name (field 2) is in parentheses and may contain spaces.
      return f.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def pid_alive(pid: int) -> bool:
  """Whether a process ``pid`` exists on this machine (signal 0; another user's counts)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  return True
