"""Training / inference speed and memory of a registered model on the current backend.

    python -m swin_jax.tools.benchmark vit_base_patch16_224 --batch 64 [--img-size 224]
        [--steps 10] [--dtype bfloat16]

Self-contained: the train step is forward + backward + ``optax.adamw`` update with softmax
cross-entropy on random integer labels, jitted with the train state donated. Prints compile
times (s) of the train and inference steps, images/s of each (timed over ``--steps`` steps
after a warm-up step, with ``block_until_ready``) and memory: XLA's compiled estimate
(``memory_analysis()``: temp + argument + output bytes) and, where the backend reports it,
the device's measured ``peak_bytes_in_use``.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from swin_jax import cli
from swin_jax.models import create_model
from swin_jax.tools import count

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def _bytes(n: Optional[float]) -> str:
  """Bytes as GiB (or MiB below 1 GiB)."""
  if n is None:
    return 'n/a'
  return f'{n / 2**30:.2f} GiB' if n >= 2**30 else f'{n / 2**20:.1f} MiB'


def materialize(tree, seed: int = 0):
  """Concrete random arrays for a tree of ShapeDtypeStructs (floats ~ N(0, 1), else 0)."""
  rng = np.random.default_rng(seed)

  def make(s):
    if jnp.issubdtype(s.dtype, jnp.floating):
      return jnp.asarray(rng.standard_normal(s.shape, dtype=np.float32), s.dtype)
    return jnp.zeros(s.shape, s.dtype)
  return jax.tree_util.tree_map(make, tree)


def compiled_memory(compiled) -> Dict[str, Optional[int]]:
  """XLA's memory estimate of a compiled executable, in bytes (None where unsupported).

  'total' is temp + argument + output bytes; 'alias' (outputs sharing donated input
  buffers) is reported separately and not subtracted.
  """
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # Not every backend implements it.
    m = None
  if m is None:
    return dict(total=None, temp=None, argument=None, output=None, alias=None)
  if isinstance(m, (list, tuple)):
    m = m[0]
  out = dict(temp=m.temp_size_in_bytes, argument=m.argument_size_in_bytes,
             output=m.output_size_in_bytes, alias=getattr(m, 'alias_size_in_bytes', None))
  out['total'] = out['temp'] + out['argument'] + out['output']
  return out


def device_peak_bytes(device) -> Optional[int]:
  """``device.memory_stats()['peak_bytes_in_use']`` (process lifetime), or None."""
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  return None if not stats else stats.get('peak_bytes_in_use')


def _time_steps(fn, steps: int) -> float:
  """Seconds per call of ``fn()`` (returns arrays), after one warm-up call."""
  jax.block_until_ready(fn())
  t0 = time.perf_counter()
  out = None
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / steps


def benchmark(name: str, batch: int, img_size=None, steps: int = 10,
              dtype: str = 'float32', **overrides) -> Dict[str, Any]:
  """Compiles and times the train and inference steps of model ``name``.

  Returns a dict: backend, device_kind, input_shape, params, compile_train_s,
  compile_infer_s, train_images_per_s, infer_images_per_s, train_memory / infer_memory
  (``compiled_memory`` dicts, bytes), peak_infer_bytes / peak_train_bytes (device peak after
  each phase, cumulative; None where unsupported).
  """
  if dtype not in _DTYPES:
    raise ValueError(f'dtype={dtype!r}: use one of {sorted(_DTYPES)}')
  if img_size is not None:
    overrides['img_size'] = img_size
  if dtype != 'float32':
    overrides['dtype'] = _DTYPES[dtype]
  model = create_model(name, **overrides)
  num_classes = int(getattr(model, 'num_classes', 0) or 0)
  if num_classes <= 0:
    raise ValueError(f'{name}: the benchmark needs a classifier (num_classes > 0)')
  shape = count.input_shape_for(model, batch)
  in_args, in_kwargs = count.make_inputs(model, shape, dtype=_DTYPES[dtype])
  device = jax.devices()[0]

  # Real init, jitted (one program instead of many small dispatches).
  variables = jax.jit(lambda k, *a: model.init(k, *a, **in_kwargs))(
      jax.random.key(0), *in_args)
  params = variables['params']
  rest = {k: v for k, v in variables.items() if k != 'params'}
  tx = optax.adamw(1e-4, weight_decay=0.05)
  state = dict(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32))
  args = materialize(in_args, seed=0)
  kwargs = materialize(in_kwargs, seed=1)
  labels = jax.random.randint(jax.random.key(1), (batch,), 0, num_classes)
  dropout_key = jax.random.key(2)

  def train_step(state, args, kwargs, labels):
    rng = jax.random.fold_in(dropout_key, state['step'])

    def loss_fn(p):
      if rest:  # BatchNorm models: batch statistics in training (updates not kept here)
        logits = model.apply({'params': p, **rest}, *args, **kwargs, train=True,
                             rngs={'dropout': rng}, mutable=list(rest))[0]
      else:
        logits = model.apply({'params': p, **rest}, *args, **kwargs, train=True,
                             rngs={'dropout': rng})
      return optax.softmax_cross_entropy_with_integer_labels(
          logits.astype(jnp.float32), labels).mean()
    loss, grads = jax.value_and_grad(loss_fn)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    new = dict(params=optax.apply_updates(state['params'], updates), opt_state=opt_state,
               step=state['step'] + 1)
    return new, loss

  def infer_step(params, args, kwargs):
    return model.apply({'params': params, **rest}, *args, **kwargs, train=False)

  t0 = time.perf_counter()
  train_c = jax.jit(train_step, donate_argnums=(0,)).lower(state, args, kwargs, labels).compile()
  compile_train = time.perf_counter() - t0
  t0 = time.perf_counter()
  infer_c = jax.jit(infer_step).lower(params, args, kwargs).compile()
  compile_infer = time.perf_counter() - t0

  # Inference first, so its device peak is not hidden by the train step's.
  infer_s = _time_steps(lambda: infer_c(state['params'], args, kwargs), steps)
  peak_infer = device_peak_bytes(device)

  holder = {'state': state}
  del state, params, variables

  def one_train_step():
    holder['state'], loss = train_c(holder['state'], args, kwargs, labels)
    return loss
  train_s = _time_steps(one_train_step, steps)
  peak_train = device_peak_bytes(device)

  return dict(
      name=name, backend=jax.default_backend(), device_kind=device.device_kind,
      num_devices=jax.device_count(), input_shape=shape, dtype=dtype, steps=steps,
      params=count.count_params({'params': holder['state']['params']}),
      compile_train_s=compile_train, compile_infer_s=compile_infer,
      train_step_s=train_s, infer_step_s=infer_s,
      train_images_per_s=batch / train_s, infer_images_per_s=batch / infer_s,
      train_memory=compiled_memory(train_c), infer_memory=compiled_memory(infer_c),
      peak_infer_bytes=peak_infer, peak_train_bytes=peak_train)


def _mem_line(m: Dict[str, Optional[int]]) -> str:
  if m['total'] is None:
    return 'n/a'
  s = (f'{_bytes(m["total"])} (temp {_bytes(m["temp"])} + args {_bytes(m["argument"])} + '
       f'out {_bytes(m["output"])}')
  if m['alias']:
    s += f'; {_bytes(m["alias"])} of out aliases donated args'
  return s + ')'


def format_report(r: Dict[str, Any]) -> str:
  B, H, W, _ = r['input_shape']
  lines = [
      f'backend {r["backend"]}  device {r["device_kind"]} (x{r["num_devices"]}, using 1)',
      f'{r["name"]}  img {H}x{W}  batch {B}  dtype {r["dtype"]}  '
      f'params {r["params"] / 1e6:.2f} M  steps {r["steps"]}',
      f'compile: train step {r["compile_train_s"]:.2f} s  inference step '
      f'{r["compile_infer_s"]:.2f} s',
      f'train:     {r["train_images_per_s"]:.1f} images/s  '
      f'({r["train_step_s"] * 1e3:.1f} ms/step)',
      f'inference: {r["infer_images_per_s"]:.1f} images/s  '
      f'({r["infer_step_s"] * 1e3:.1f} ms/step)',
      f'memory (XLA compiled estimate): train {_mem_line(r["train_memory"])}',
      f'                                inference {_mem_line(r["infer_memory"])}',
  ]
  if r['peak_train_bytes'] is None:
    lines.append(f'memory (device peak_bytes_in_use): n/a on {r["backend"]}')
  else:
    lines.append(f'memory (device peak_bytes_in_use): after inference '
                 f'{_bytes(r["peak_infer_bytes"])}  after train {_bytes(r["peak_train_bytes"])}')
  return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  cli.quiet_startup()
  parser = argparse.ArgumentParser(
      prog='python -m swin_jax.tools.benchmark',
      description='Compile time, train/inference images/s and peak memory of a model.')
  parser.add_argument('model', help='registered model name, e.g. vit_base_patch16_224')
  parser.add_argument('--batch', type=int, required=True, help='batch size (images)')
  parser.add_argument('--img-size', type=int, nargs='+', metavar='N',
                      help='input size: N (square) or H W; default: the model\'s img_size')
  parser.add_argument('--steps', type=int, default=10, help='timed steps (after warm-up)')
  parser.add_argument('--dtype', choices=sorted(_DTYPES), default='float32',
                      help='compute dtype of the model (parameters stay float32)')
  args = parser.parse_args(argv)
  if args.batch < 1 or args.steps < 1:
    parser.error('--batch and --steps must be >= 1')
  img_size = count.parse_img_size(args.img_size, parser)
  try:
    report = benchmark(args.model, args.batch, img_size, steps=args.steps, dtype=args.dtype)
  except (ValueError, TypeError) as e:
    print(f'error: {count.one_line_error(e)}', file=sys.stderr)
    return 2
  print(format_report(report))
  return 0


if __name__ == '__main__':
  sys.exit(main())
