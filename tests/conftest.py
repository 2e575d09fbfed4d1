import importlib.util
import os
import subprocess
import sys

import pytest

# The suite compiles hundreds of small programs: XLA's cheap CPU pipeline cuts compile time
# 2-3x (the models are tiny, so run time hardly changes). Set before jax starts its backend;
# subprocess tests inherit it. Numerics agree with the default pipeline to ~1e-7.
_FAST_COMPILE = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
