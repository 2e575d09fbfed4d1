"""Entry point: ``python -m swin_jax.main --config=configs/....py[:arg] --workdir=DIR``.

``--config.a.b=value`` overrides any config field; unknown fields are rejected. Running the
same command again resumes from the workdir's latest checkpoint. ``--mode=evaluate``
evaluates the latest checkpoint (or ``--config.init_from``) on the eval split.
"""
from __future__ import annotations

import glob
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from swin_jax import cli
from swin_jax import host_memory

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to an ml_collections config '
                                          'file, optionally with :arg for get_config(arg).')
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and the resolved config.')
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate'], 'train (auto-resumes) or evaluate.')


def _fail(msg: str):
  print(f'error: {msg}', file=sys.stderr)
  sys.exit(2)


def _config_path(argv):
  for i, a in enumerate(argv):
    if a.startswith('--config='):
      return a.split('=', 1)[1].split(':', 1)[0]
    if a == '--config' and i + 1 < len(argv):
      return argv[i + 1].split(':', 1)[0]
  return None


def parse_flags(argv):
  """absl parsing with the mistakes a user makes turned into one-line errors."""
  path = _config_path(argv)
  if path is None:
    _fail('--config=PATH is required (e.g. --config=configs/demo/vit_digits.py).')
  if not os.path.isfile(path):
    known = sorted(glob.glob(os.path.join('configs', '**', '*.py'), recursive=True))
    known = [k for k in known if not os.path.basename(k).startswith('_')]
    _fail(f'config file {path!r} (--config) does not exist. Available: {", ".join(known)}')
  try:
    rest = FLAGS(argv)
    config = FLAGS.config  # the file is loaded and overrides applied here
  except ImportError as e:  # an import of the config file itself
    hint = ''
    if e.name == 'configs':  # `from configs import common`: an install from before configs/
      hint = (' (the configs package comes with the install: run `pip install -e .` in the '
              'repository again)')
    _fail(f'{path} (--config): {type(e).__name__}: {e}{hint}')
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    msg = str(e).strip()
    if 'Traceback (most recent call last)' in msg:  # raised inside the file's get_config()
      last = [l for l in msg.replace('\\n', '\n').splitlines() if l.strip()][-1]
      _fail(f'{path} (--config): {last.strip()}')
    msg = msg.strip("'\"").replace('\\n', ' ').replace('\n', ' ').replace("\\'", "'")
    _fail(f'bad config override ({msg}). Override existing fields only, e.g. '
          f'--config.optimizer.lr=1e-3; see the config file for the fields.')
  if config is None or not hasattr(config, 'to_dict'):
    _fail(f'could not load a config from {path!r} (--config): it must define get_config().')
  if not FLAGS.workdir:
    _fail('--workdir=DIR is required: checkpoints, logs and config.json are written there.')
  return rest


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
  # Here, not at the top: cli.quiet_startup() must run before the trainer imports TF.
  from swin_jax.train import loop  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  try:
    if FLAGS.mode == 'evaluate':
      loop.evaluate(config, FLAGS.workdir)
    else:
      loop.train_and_evaluate(config, FLAGS.workdir)
  # OSError: an unwritable --workdir, a workdir locked by another run (WorkdirLockedError),
  # a full disk; the messages name the path.
  except (ValueError, OSError, FloatingPointError, TypeError) as e:
    if os.environ.get('SWIN_JAX_DEBUG'):
      raise
    _fail(f'{e}  (set SWIN_JAX_DEBUG=1 for the traceback)')


def run():
  cli.quiet_startup()  # before flag parsing loads the config and main imports tensorflow
  try:
    host_memory.reuse_freed_memory()  # before any JAX computation starts XLA's threads
  except ValueError as e:  # a bad SWIN_JAX_HOST_MEMORY: named, before any work
    _fail(str(e))
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()
