"""What every command-line entry point does first: quiet the libraries' start-up chatter.

``quiet_startup()`` is the first line of each entry point's ``main`` (``swin_jax.main``,
``.sweep``, ``.predict``, ``.tools.*``), never run on import, so ``import swin_jax`` leaves
the caller's logging alone. Only notices go; warnings and errors still print:

* TensorFlow's C++ INFO lines: the CPU-instruction notice ("This TensorFlow binary is
  optimized to use available CPU instructions..."), oneDNN's "custom operations are on",
  and absl's "WARNING: All log messages before absl::InitializeLog() is called are written
  to STDERR", which only the first such ``I0000 ...`` line triggers. TensorFlow reads
  TF_CPP_MIN_LOG_LEVEL when its library loads, so this must run before tensorflow is
  imported (tensorflow_datasets loads it lazily, on first use). jax sets the same default
  when it is imported first, so without this the order of imports decided what a user saw.
  TF_ENABLE_ONEDNN_OPTS stays as it is: turning oneDNN off would change TF's numerics.
* jax's INFO line for each optional backend it could not start ("Unable to initialize
  backend 'tpu'"); a failure of the backend the user asked for still raises.
* INFO records of the libraries that log through absl (orbax: a line per handler it
  registers and per restore; tfds), unless --verbosity asks for debug output; and orbax's
  warnings that a checkpoint opened read-only is read-only (restoring init_from, predict).

A TF_CPP_MIN_LOG_LEVEL the user has set (0 to debug TensorFlow or XLA) is kept.
"""
from __future__ import annotations

import ast
import logging
import os
from typing import Any, Dict, Mapping, Optional, Sequence

# 1: INFO hidden, WARNING and ERROR shown (tensorflow/tsl/platform/default/logging.cc).
_TF_CPP_MIN_LOG_LEVEL = '1'

# orbax's CheckpointManager logs these as warnings whenever it is opened read-only: they
# state the options read-only implies, nothing a user can act on.
_ORBAX_READ_ONLY = ('CheckpointManagerOptions.read_only=True', 'Given directory is read only')


class _QuietAbsl(logging.Filter):
  """On the 'absl' logger: drops INFO records and orbax's read-only notices, unless debug
  output is on (--verbosity=1, or a DEBUG root logger).

  A filter, not a logger level: absl.app.run resets the 'absl' logger's level when it parses
  --verbosity, after an entry point would have set it.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    if logging.getLogger('absl').getEffectiveLevel() <= logging.DEBUG:
      return True  # the user asked for everything
    return (record.levelno >= logging.WARNING and
            not str(record.msg).startswith(_ORBAX_READ_ONLY))


_ABSL_FILTER = _QuietAbsl()


def quiet_startup() -> None:
  """Hides the start-up notices of TensorFlow, jax and orbax; call before heavy imports.

  Idempotent. Sets TF_CPP_MIN_LOG_LEVEL (inherited by subprocesses: a sweep's runs), the
  level of jax's backend logger and a filter on the 'absl' logger.

  Also TF_USE_LEGACY_KERAS=1 (unless set): ``import tensorflow`` otherwise imports Keras 3
  eagerly (``keras.src.optimizers``, for SavedModel registrations), with matplotlib and
  scipy behind it: ~2 s of CPU at every start, and swin_jax never uses Keras. With the flag
  TensorFlow looks for tf_keras instead and, when it is not installed, skips the load.
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', _TF_CPP_MIN_LOG_LEVEL)
  os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)
  absl_logger = logging.getLogger('absl')  # absl.logging's records go through this logger
  if _ABSL_FILTER not in absl_logger.filters:
    absl_logger.addFilter(_ABSL_FILTER)


def _literal(text: str) -> Any:
  """A --model-arg value: a Python literal where it is one, true/false in any case as
  bools, anything else the string itself (so names need no quotes)."""
  if text.lower() in ('true', 'false'):
    return text.lower() == 'true'
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_model_args(items: Optional[Sequence[str]],
                     own_flags: Mapping[str, str] = None) -> Dict[str, Any]:
  """The tools' repeatable ``--model-arg KEY=VALUE`` (create_model overrides):
  ``['depths=(1,1)', 'fast_cpu=True']`` -> {'depths': (1, 1), 'fast_cpu': True}.

  Raises ValueError naming --model-arg for an item without ``KEY=``, a key given twice or
  a field that has its own flag in the tool (``own_flags``: field -> flag).
  """
  own_flags = own_flags or {}
  out = {}
  for item in items or ():
    key, sep, value = item.partition('=')
    key = key.strip()
    if not sep or not key.isidentifier():
      raise ValueError(f'--model-arg {item!r}: expected KEY=VALUE, e.g. '
                       f'--model-arg drop_path_rate=0.1')
    if key in own_flags:
      raise ValueError(f'--model-arg {key}=...: use {own_flags[key]} for {key}')
    if key in out:
      raise ValueError(f'--model-arg {key}=... is given twice')
    out[key] = _literal(value.strip())
  return out
