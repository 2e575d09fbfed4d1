"""Config checks that need neither the data nor the model, run before any work is done.

``check_config(config)`` raises ``ValueError`` with one line that names
``config.<field>=<value>`` and the fix, for the first field that cannot work: a mistake found
here costs seconds, not a training run that fails at its first evaluation. It needs the
device count, so the trainer calls it after ``jax.distributed`` is initialised.

Fields other modules check where they are read are left to them (each is checked before
the first step): the schedule's name and a warm-up as long as the run
(``optimizers.make_schedule``), the optimizer's name, ``lr_mults``, ``layer_decay``,
``finetune`` (``optimizers.make_optimizer``), ``config.mixup`` (``tasks.mixup_options``),
``config.task``, ``config.model.dtype``, the image size a model accepts (the model, when
the trainer builds it), and the input pipelines' fields (they read them when they start;
``check_eval_input`` builds the eval pipeline up front, which is otherwise first built after
training).
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import jax

from swin_jax.data import input_pipeline

_MISSING = object()


def _get(config, dotted: str) -> Any:
  """config.a.b, or _MISSING where the config has no such field (detection configs
  delete a few) or it is None (an unset placeholder)."""
  node = config
  for key in dotted.split('.'):
    if node is None or not hasattr(node, 'get'):
      return _MISSING
    node = node.get(key, None)
  return _MISSING if node is None else node


def _fail(field: str, value, why: str):
  raise ValueError(f'config.{field}={value!r} {why}')


def _number(field: str, value) -> float:
  """float(value); NaN passes through (and fails every range check that follows)."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    _fail(field, value, 'must be a number.')
  return float(value)


def _int_at_least(config, field: str, low: int, hint: str = '') -> Any:
  value = _get(config, field)
  if value is _MISSING:
    return value
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
    _fail(field, value, f'must be an integer >= {low}{hint}.')
  return value


def _in_range(config, field: str, low: float, high: float, *, high_open: bool = True,
              low_open: bool = False, hint: str = ''):
  value = _get(config, field)
  if value is _MISSING:
    return value
  x = _number(field, value)
  ok = (low < x if low_open else low <= x) and (x < high if high_open else x <= high)
  if not ok:
    interval = f'{"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}'
    _fail(field, value, f'must be in {interval}{hint}.')
  return x


def check_config(config) -> None:
  """Raises ValueError for the first field of ``config`` that cannot work (see module doc)."""
  devices, processes = jax.device_count(), jax.process_count()

  # Batches: the global batch is split over every device, and into micro-batches.
  batch = _int_at_least(config, 'batch_size', 1)
  accum = _int_at_least(config, 'optimizer.grad_accum_steps', 1, ' (1 = no accumulation)')
  accum = 1 if accum is _MISSING else accum
  if batch is not _MISSING:
    if batch % devices:
      _fail('batch_size', batch, f'is not divisible by the {devices} devices: use a '
            f'multiple of {devices}.')
    if batch % (accum * devices):
      _fail('batch_size', batch, f'must be divisible by config.optimizer.grad_accum_steps='
            f'{accum} x {devices} devices: use a multiple of {accum * devices}, or another '
            f'grad_accum_steps.')
  eval_batch = _int_at_least(config, 'eval_batch_size', 1)
  if eval_batch is not _MISSING and (eval_batch % devices or eval_batch % processes):
    _fail('eval_batch_size', eval_batch, f'is not divisible by the {devices} devices '
          f'({processes} process{"es" * (processes != 1)}): use a multiple of {devices} '
          f'(the last eval batch is padded, so any multiple evaluates every example).')

  # Length of the run and the schedule.
  total = _int_at_least(config, 'total_steps', 1, ' (or unset it to train num_epochs)')
  if total is _MISSING:
    epochs = _get(config, 'num_epochs')
    if epochs is _MISSING or not _number('num_epochs', epochs) > 0:
      _fail('num_epochs', None if epochs is _MISSING else epochs,
            'must be > 0 when config.total_steps is unset: set one of them.')
  _int_at_least(config, 'schedule.warmup_steps', 0, ' (0 = no warm-up)')
  for field in ('schedule.warmup_epochs', 'schedule.warmup_init_lr', 'schedule.min_lr'):
    _in_range(config, field, 0.0, math.inf, hint=' (0 = off)')
  _in_range(config, 'schedule.decay_rate', 0.0, math.inf, low_open=True,
            hint=" (the 'step' schedule multiplies the lr by it at each boundary)")

  # Optimizer.
  lr = _get(config, 'optimizer.lr')
  if lr is not _MISSING and not (_number('optimizer.lr', lr) > 0 and math.isfinite(lr)):
    _fail('optimizer.lr', lr, 'must be a finite number > 0 (e.g. 1e-3 for AdamW).')
  _in_range(config, 'optimizer.weight_decay', 0.0, math.inf, hint=' (0 = off)')
  _in_range(config, 'optimizer.clip_grad_norm', 0.0, math.inf, hint=' (0 = no clipping)')
  _in_range(config, 'optimizer.ema_decay', 0.0, 1.0,
            hint=' (0 = off; e.g. 0.9999 evaluates the EMA params)')
  for field in ('optimizer.b1', 'optimizer.b2', 'optimizer.momentum'):
    _in_range(config, field, 0.0, 1.0)
  _in_range(config, 'optimizer.eps', 0.0, math.inf, low_open=True, hint=' (AdamW: 1e-8)')

  # Loss and regularisation.
  _in_range(config, 'label_smoothing', 0.0, 1.0, hint=' (0 = off; 0.1 in the ImageNet recipes)')
  model = _get(config, 'model')
  if model is not _MISSING:
    for key, value in model.items():
      if value is not None and (key == 'dropout' or key.endswith('drop_rate') or
                                key.endswith('drop_path_rate')):
        _in_range(config, f'model.{key}', 0.0, 1.0, hint=' (a probability; 0 = off)')

  # Checkpoints and logs.
  _int_at_least(config, 'checkpoint.every_steps', 1)
  _int_at_least(config, 'checkpoint.keep', 1, ' (the number of checkpoints kept)')
  _int_at_least(config, 'log_every_steps', 1)
  _int_at_least(config, 'eval_every_steps', 0, ' (0 = evaluate at the end only)')
  init_from = _get(config, 'init_from')
  if init_from is not _MISSING and not isinstance(init_from, str):
    _fail('init_from', init_from, "must be a path (a workdir, step directory, "
          "or .pth/.safetensors/.npz file), or '' for none.")


def check_eval_input(config) -> None:
  """Builds the classification eval pipeline (reads nothing), so that its own checks of
  config.input.eval_split and eval_resize fail before training rather than at the first
  evaluation after it. With config.input.cache the evaluation reuses this very dataset.
  (Detection checks its eval fields when its train pipeline starts, before the first step.)
  """
  if config.get('task', 'classification') != 'classification':
    return
  input_pipeline.make_eval_dataset(
      config.input, split=config.input.eval_split,
      global_batch_size=config.get('eval_batch_size', config.batch_size),  # as the task's
      process_index=jax.process_index(), process_count=jax.process_count())
