"""Runs one training command as N local processes joined by ``jax.distributed``.

    python -m swin_jax.tools.launch_local --num_processes=2 --devices_per_process=4 -- \\
        --config=configs/demo/vit_digits.py --workdir=runs/demo_2x4

This is a multi-host run on one machine, for testing what a TPU pod or a GPU cluster does
with the same code: process i runs ``python -m swin_jax.main ARGS
--config.distributed.initialize=True --config.distributed.coordinator_address=127.0.0.1:PORT
--config.distributed.num_processes=N --config.distributed.process_id=i`` with
``--devices_per_process`` CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count``)
and gloo CPU collectives. The coordinator and the collectives listen on 127.0.0.1 only (a
free port is picked). Each output line is prefixed with ``[p<i>]``.

The launcher waits for every process, bounded by ``--timeout``; when one fails, the others
(which would wait for it in a collective) are stopped: SIGTERM, then SIGKILL after a grace
period. SIGINT / SIGTERM to the launcher go to every process (the trainer saves a
checkpoint and exits). The exit code is the first non-zero one, else 0.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import List, Optional, Sequence

from swin_jax import cli


def free_port() -> int:
  """A TCP port free on 127.0.0.1 right now (bound to 0, read back, released)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def process_env(devices_per_process: int, base: Optional[dict] = None,
                platform: str = 'cpu') -> dict:
  """The environment of one process: ``devices_per_process`` host devices (appended to
  XLA_FLAGS, so other flags stay) and JAX on ``platform`` ('' keeps JAX's choice)."""
  env = dict(os.environ if base is None else base)
  flags = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                   if not f.startswith('--xla_force_host_platform_device_count'))
  env['XLA_FLAGS'] = f'{flags} --xla_force_host_platform_device_count={devices_per_process}'.strip()
  if platform:
    env['JAX_PLATFORMS'] = platform
  return env


def process_args(args: Sequence[str], num_processes: int, process_id: int,
                 port: int) -> List[str]:
  """``swin_jax.main`` arguments of process ``process_id``."""
  return [*args, '--config.distributed.initialize=True',
          f'--config.distributed.coordinator_address=127.0.0.1:{port}',
          f'--config.distributed.num_processes={num_processes}',
          f'--config.distributed.process_id={process_id}']


class LocalCluster:
  """N ``swin_jax.main`` processes on this machine; see the module docstring.

  ``procs[i]`` is process i's Popen (tests send a signal to one), ``outputs[i]`` the
  lines it printed so far (stdout and stderr together, unprefixed).
  """

  def __init__(self, args: Sequence[str], *, num_processes: int, devices_per_process: int,
               env: Optional[dict] = None, platform: str = 'cpu', cwd: Optional[str] = None,
               echo: bool = True, port: Optional[int] = None):
    self.num_processes = num_processes
    self.port = port or free_port()
    self.outputs: List[List[str]] = [[] for _ in range(num_processes)]
    self._echo = echo
    self._lock = threading.Lock()
    self.procs: List[subprocess.Popen] = []
    self._threads = []
    penv = process_env(devices_per_process, env, platform)
    try:
      for i in range(num_processes):
        proc = subprocess.Popen(
            [sys.executable, '-m', 'swin_jax.main',
             *process_args(args, num_processes, i, self.port)],
            cwd=cwd, env=penv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            bufsize=1, start_new_session=True)
        self.procs.append(proc)
        t = threading.Thread(target=self._pump, args=(i, proc), daemon=True)
        t.start()
        self._threads.append(t)
    except BaseException:
      self.stop(grace_s=0)
      raise

  def _pump(self, i: int, proc: subprocess.Popen):
    for line in proc.stdout:
      self.outputs[i].append(line)
      if self._echo:
        with self._lock:
          sys.stdout.write(f'[p{i}] {line}')
          sys.stdout.flush()

  def output(self, i: int) -> str:
    return ''.join(self.outputs[i])

  def signal(self, sig, process_id: Optional[int] = None):
    """Sends ``sig`` to one process, or to every live one."""
    for i, p in enumerate(self.procs):
      if (process_id is None or i == process_id) and p.poll() is None:
        p.send_signal(sig)

  def wait(self, timeout: Optional[float] = None, grace_s: float = 30.0) -> List[int]:
    """Waits for every process, at most ``timeout`` seconds; returns their exit codes.

    When one exits non-zero, or the time is up, the rest are stopped (``stop``): a lone
    survivor would wait in a collective for the one that is gone.
    """
    deadline = None if timeout is None else time.time() + timeout
    while any(p.poll() is None for p in self.procs):
      failed = any(p.poll() not in (None, 0) for p in self.procs)
      if failed or (deadline is not None and time.time() > deadline):
        self.stop(grace_s=grace_s)
        break
      time.sleep(0.05)
    for t in self._threads:
      t.join(timeout=5)
    return [p.returncode for p in self.procs]

  def stop(self, grace_s: float = 30.0):
    """SIGTERM to every live process, SIGKILL to those alive ``grace_s`` later."""
    self.signal(signal.SIGTERM)
    end = time.time() + grace_s
    while time.time() < end and any(p.poll() is None for p in self.procs):
      time.sleep(0.05)
    for p in self.procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)  # its own session: children go too
        p.wait()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if any(p.poll() is None for p in self.procs):
      self.stop(grace_s=5)


def exit_code(codes: Sequence[int]) -> int:
  """The first non-zero exit code (a signal -s as 128 + s), else 0."""
  for c in codes:
    if c:
      return 128 - c if c < 0 else c
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  cli.quiet_startup()
  argv = list(sys.argv[1:] if argv is None else argv)
  rest: List[str] = []
  if '--' in argv:
    k = argv.index('--')
    argv, rest = argv[:k], argv[k + 1:]
  parser = argparse.ArgumentParser(
      prog='python -m swin_jax.tools.launch_local',
      description='Run `python -m swin_jax.main ARGS` as N local jax.distributed processes '
                  '(CPU devices, gloo collectives, coordinator on 127.0.0.1).',
      epilog='Example: python -m swin_jax.tools.launch_local --num_processes=2 '
             '--devices_per_process=4 -- --config=configs/demo/vit_digits.py '
             '--workdir=runs/demo_2x4')
  parser.add_argument('--num_processes', type=int, default=2)
  parser.add_argument('--devices_per_process', type=int, default=4)
  parser.add_argument('--timeout', type=float, default=None,
                      help='seconds before every process is stopped (default: none)')
  parser.add_argument('--platform', default='cpu',
                      help="JAX_PLATFORMS of the processes ('' = JAX's choice)")
  opts, unknown = parser.parse_known_args(argv)
  rest = unknown + rest
  if opts.num_processes < 1 or opts.devices_per_process < 1:
    parser.error('--num_processes and --devices_per_process must be >= 1')
  if not any(a.startswith('--config') for a in rest):
    parser.error('give the swin_jax.main arguments after --, e.g. -- '
                 '--config=configs/demo/vit_digits.py --workdir=runs/demo_2x4')
  cluster = LocalCluster(rest, num_processes=opts.num_processes,
                         devices_per_process=opts.devices_per_process, platform=opts.platform)

  def forward(signum, frame):  # pylint: disable=unused-argument
    cluster.signal(signum)
  old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    codes = cluster.wait(timeout=opts.timeout)
  finally:
    for s, h in old.items():
      signal.signal(s, h)
  print(f'launch_local: exit codes {codes}', flush=True)
  return exit_code(codes)


if __name__ == '__main__':
  sys.exit(main())
