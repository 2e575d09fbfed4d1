"""swin_jax.host_memory: XLA:CPU's temp buffer is reused from step to step, not faulted in
again (glibc malloc settings applied by the entry points)."""
import json
import os
import platform
import subprocess
import sys
import textwrap

import jax
import pytest

from swin_jax import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A program whose temp buffer is 128 MiB (the fori_loop's carry) and whose arguments and
# output are scalars: each call allocates and frees that buffer, nothing else of size.
_SCRIPT = textwrap.dedent('''
    import json, resource, sys
    from swin_jax import host_memory
    applied = host_memory.reuse_freed_memory(sys.argv[1])
    import jax, jax.numpy as jnp
    N = 32 * 2**20
    @jax.jit
    def f(x):
      c = jax.lax.fori_loop(0, 3, lambda i, c: c * 1.0001 + x, jnp.broadcast_to(x, (N,)))
      return c.sum()
    compiled = f.lower(1.0).compile()
    faults = []
    for _ in range(12):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      jax.block_until_ready(compiled(1.0))
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps(dict(applied=applied, faults=faults,
                          temp=compiled.memory_analysis().temp_size_in_bytes)))
''')

_GLIBC = sys.platform.startswith('linux') and platform.libc_ver()[0] == 'glibc'


def _run(mode):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop(host_memory.ENV, None)
  out = subprocess.run([sys.executable, '-c', _SCRIPT, mode], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not _GLIBC, reason='glibc malloc only')
def test_the_temp_buffer_is_faulted_in_every_step_by_default_and_reused_with_the_settings():
  default, reuse = _run('default'), _run('reuse')
  pages = default['temp'] / 4096
  assert pages >= 32 * 2**20 * 4 / 4096  # the 128 MiB carry
  assert not default['applied'] and reuse['applied']
  # glibc's default: the buffer is a fresh mmap each call, every 4 KiB page faulted in.
  assert all(f >= 0.9 * pages for f in default['faults']), default
  # With the settings the freed pages serve the next call. Not every call: now and then
  # a small allocation splits the freed chunk and the next call extends the heap instead
  # (measured: 0-3 of 10 calls, the rest 0-3 faults), so the median call is the measure.
  later = sorted(reuse['faults'][2:])
  assert later[len(later) // 2] <= 0.02 * pages, reuse
  assert sum(later) <= 0.5 * sum(default['faults'][2:]), reuse


def test_auto_applies_only_where_jax_runs_on_the_cpu_alone():
  assert host_memory._jax_will_run_on_cpu_only('cpu')
  assert not host_memory._jax_will_run_on_cpu_only('cuda,cpu')
  assert not host_memory._jax_will_run_on_cpu_only('tpu')


def test_nothing_is_changed_once_a_backend_has_started_or_when_asked_not_to(monkeypatch):
  jax.devices()  # this process's backend is up: XLA's threads own their arenas already
  monkeypatch.setattr(host_memory, '_applied', False)
  assert not host_memory.reuse_freed_memory('reuse')
  assert not host_memory.reuse_freed_memory('default')
  monkeypatch.setenv(host_memory.ENV, 'default')
  assert not host_memory.reuse_freed_memory()


def test_an_unknown_mode_names_the_variable(monkeypatch):
  monkeypatch.setenv(host_memory.ENV, 'always')
  with pytest.raises(ValueError, match=r'SWIN_JAX_HOST_MEMORY=.always.: use one of auto'):
    host_memory.reuse_freed_memory()


@pytest.mark.parametrize('module', ['swin_jax.main', 'swin_jax.tools.benchmark'])
def test_the_entry_points_name_a_bad_mode_in_one_line(module, tmp_path):
  # Checked before flags are parsed or any work is done: nothing is written to the workdir.
  args = {'swin_jax.main': ['--config=configs/demo/vit_digits.py', f'--workdir={tmp_path}/w'],
          'swin_jax.tools.benchmark': ['vit_tiny_patch16_224', '--batch', '1']}[module]
  env = dict(os.environ, SWIN_JAX_HOST_MEMORY='always', JAX_PLATFORMS='cpu')
  r = subprocess.run([sys.executable, '-m', module, *args], capture_output=True, text=True,
                     env=env, cwd=ROOT, timeout=120)
  assert r.returncode == 2, r.stderr
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert lines[-1] == 'error: SWIN_JAX_HOST_MEMORY=\'always\': use one of auto, reuse, default'
  assert 'Traceback' not in r.stderr
  assert not (tmp_path / 'w').exists()
