import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

# The suite compiles hundreds of small programs: XLA's cheap CPU pipeline cuts compile time
# 2-3x (the models are tiny, so run time hardly changes). Set before jax starts its backend;
# subprocess tests inherit it. Numerics agree with the default pipeline to ~1e-7.
_FAST_COMPILE = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()
# What cli.quiet_startup sets in every entry point, for the workers and the subprocesses that
# are not entry points too: TensorFlow then skips importing Keras 3 (~2 s of CPU a process).
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

# One persistent XLA compilation cache for the whole run (set up by the first process that
# loads this file: the xdist controller, whose environment the workers and every subprocess
# test inherit): the many runs of the same tiny configs (CLI, multi-process, resume tests)
# compile each program once. Executables are reused bit for bit, so results do not change.
_OWN_JIT_CACHE = None
if 'SWIN_JAX_TEST_JIT_CACHE' not in os.environ:
  _OWN_JIT_CACHE = tempfile.mkdtemp(prefix='swin_jax_test_jit_cache_')
  os.environ['SWIN_JAX_TEST_JIT_CACHE'] = _OWN_JIT_CACHE
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.environ['SWIN_JAX_TEST_JIT_CACHE'])
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The files that run longest (a few minutes each, mostly training subprocesses), collected
# first: pytest-xdist's --dist loadfile hands files out in collection order, so these start
# at once on both workers and the many short files fill in beside them, instead of one
# worker finishing a long file alone at the end.
_LONGEST_FIRST = ('test_multiprocess.py', 'test_train.py', 'test_collectives.py',
                  'test_detection_train.py', 'test_workdir.py', 'test_recipe.py',
                  'test_sweep.py', 'test_shunted.py')


def pytest_collection_modifyitems(session, config, items):
  del session, config
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))


def pytest_unconfigure(config):
  del config
  if _OWN_JIT_CACHE:
    shutil.rmtree(_OWN_JIT_CACHE, ignore_errors=True)


def load_config(relpath: str, arg=None):
  """get_config(arg) of a config file, as --config=relpath:arg would give."""
  path = os.path.join(ROOT, relpath)
  spec = importlib.util.spec_from_file_location('cfg_' + os.path.basename(path)[:-3], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg) if arg is not None else mod.get_config()



def set_fields(config, fields):
  """Sets dotted config fields in place ({'model.dropout': 0.1, ...}), as --config.a.b=v."""
  for k, v in fields.items():
    node = config
    *parents, leaf = k.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = v
  return config

@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  """A tfds data dir with the embedded digits dataset prepared once per session."""
  from swin_jax.data import prepare_embedded
  d = str(tmp_path_factory.mktemp('tfds'))
  prepare_embedded(d)
  return d


@pytest.fixture(scope='session')
def detection_tfds_dir(tmp_path_factory):
  """A tfds data dir with the embedded digits_detection dataset prepared once per session."""
  from swin_jax.data import prepare_embedded_detection
  d = str(tmp_path_factory.mktemp('tfds_detection'))
  prepare_embedded_detection(d)
  return d


def run_main(args, cwd=ROOT, env=None, timeout=600):
  """Runs `python -m swin_jax.main ARGS` to completion; returns CompletedProcess."""
  return subprocess.run([sys.executable, '-m', 'swin_jax.main', *args], cwd=cwd,
                        capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ, **(env or {})))


def jaxpr_eqns(jaxpr):
  """All equations of a jaxpr, recursing into sub-jaxprs (pjit, custom_jvp, scan, vmap ...)."""
  for e in jaxpr.eqns:
    yield e
    for p in e.params.values():
      for sub in (p if isinstance(p, (tuple, list)) else [p]):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          yield from jaxpr_eqns(inner)
