"""Training / inference speed and memory of a registered model on the current backend.

    python -m swin_jax.tools.benchmark vit_base_patch16_224 --batch 64 [--img-size 224]
        [--steps 10] [--dtype bfloat16] [--model-arg KEY=VALUE ...] [--boxes 8]

Self-contained: the train step is forward + backward + ``optax.adamw`` update, jitted with
the train state donated, on random inputs. Its loss is the model's training loss:

* classifiers: softmax cross-entropy on random integer labels;
* DETR: the set loss of training (``SetCriterion``: Hungarian matching in JAX of every
  decoder layer, cross-entropy + L1 + GIoU, aux losses as the model has them) on random
  targets, ``--boxes`` boxes per image padded to ``num_queries`` slots as the detection
  input pipeline pads them; the leaves ``detr.trainable_mask`` freezes get no update, as
  in the trainer. Images carry an all-False padding mask (no padded pixel).

The inference step is the forward pass with ``train=False`` (for DETR: the last decoder
layer's logits and boxes, what the evaluation reads). Prints compile times (s) of both
steps, images/s of each (timed over ``--steps`` steps after a warm-up step, with
``block_until_ready``) and memory: XLA's compiled estimate (``memory_analysis()``: temp +
argument + output bytes) and, where the backend reports it, the device's measured
``peak_bytes_in_use``.

``--model-arg KEY=VALUE`` (repeatable) passes ``create_model`` overrides; VALUE is read as
a Python literal where it is one (``1``, ``0.1``, ``True``, ``(1, 1)``, ``None``), else as
a string (``backbone=resnet101``).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from swin_jax import cli
from swin_jax import host_memory
from swin_jax.detection.criterion import SetCriterion
from swin_jax.models import create_model
from swin_jax.models import detr as detr_lib
from swin_jax.tools import count

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

# Real target boxes per DETR image: COCO train2017 has 7.3 annotations per image.
DEFAULT_BOXES = 8

# Fields that have their own flag: --model-arg would be overridden by it or clash with it.
_OWN_FLAGS = {'img_size': '--img-size', 'dtype': '--dtype'}


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


def detection_targets(batch: int, num_slots: int, boxes_per_image: int, num_classes: int,
                      seed: int = 0) -> Dict[str, jax.Array]:
  """Random DETR targets as the detection pipeline batches them (padded to ``num_slots``).

  Returns {'labels': int32 [B, T] in [0, num_classes), 'boxes': float32 [B, T, 4] (cx, cy,
  w, h in [0, 1], inside the image), 'valid': bool [B, T] (the first ``boxes_per_image``
  slots of each image)}, T = ``num_slots``.
  """
  rng = np.random.default_rng(seed)
  centre = rng.uniform(0.25, 0.75, (batch, num_slots, 2))
  size = rng.uniform(0.05, 0.4, (batch, num_slots, 2))  # <= 2 * 0.25: stays in the image
  valid = np.broadcast_to(np.arange(num_slots) < boxes_per_image, (batch, num_slots))
  return {'labels': jnp.asarray(rng.integers(0, num_classes, (batch, num_slots)), jnp.int32),
          'boxes': jnp.asarray(np.concatenate([centre, size], -1), jnp.float32),
          'valid': jnp.asarray(valid)}


class _Task(NamedTuple):
  """What the steps differ in between classifiers and DETR."""
  loss_name: str  # printed: what the train step minimises
  targets: Any  # pytree of arrays, an argument of the train step
  loss: Callable[[Any, Any], jax.Array]  # (model outputs, targets) -> scalar
  infer_outputs: Callable[[Any], Any]  # model outputs -> what inference returns
  trainable: Optional[Callable[[Any], Any]]  # params -> bool tree; None: all trained


def _task(name: str, model, batch: int, boxes_per_image: int) -> _Task:
  """The loss, targets and frozen leaves of ``model``'s training."""
  if isinstance(model, detr_lib.DETR):
    q = int(model.num_queries)
    if not 0 <= boxes_per_image <= q:
      raise ValueError(f'boxes_per_image={boxes_per_image} (--boxes): use 0..num_queries '
                       f'({q}); DETR matches each target box to one of its queries')
    # The trainer's defaults (DetectionTask): Hungarian matching, eos_coef 0.1, weights
    # ce 1, bbox 5, giou 2 for both the cost and the loss.
    criterion = SetCriterion(int(model.num_classes), aux_loss=bool(model.aux_loss))
    return _Task(
        loss_name=f'DETR set criterion, {boxes_per_image} boxes/image',
        targets=detection_targets(batch, q, boxes_per_image, int(model.num_classes), seed=1),
        loss=lambda out, targets: criterion(out, targets)[0],
        # The evaluation reads the last layer only; XLA then drops the aux heads.
        infer_outputs=lambda out: {k: out[k] for k in ('pred_logits', 'pred_boxes')},
        trainable=lambda p: detr_lib.trainable_mask(p, model.train_backbone,
                                                    model.freeze_stem))
  num_classes = int(getattr(model, 'num_classes', 0) or 0)
  if num_classes <= 0:
    raise ValueError(f'{name} with num_classes={num_classes}: the benchmark times '
                     f'classifiers (num_classes > 0) and DETR')

  def loss(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels).mean()
  return _Task(loss_name='cross-entropy',
               targets=jax.random.randint(jax.random.key(1), (batch,), 0, num_classes),
               loss=loss, infer_outputs=lambda out: out, trainable=None)


def build_steps(name: str, batch: int, img_size=None, dtype: str = 'float32',
                boxes_per_image: int = DEFAULT_BOXES, **overrides):
  """The benchmark's model, train and inference steps (not jitted) and their inputs:
  (model, task, train_step(state, args, kwargs, targets) -> (state, loss),
  infer_step(params, args, kwargs), state, args, kwargs)."""
  if dtype not in _DTYPES:
    raise ValueError(f'dtype={dtype!r}: use one of {sorted(_DTYPES)}')
  if img_size is not None:
    overrides['img_size'] = img_size
  if dtype != 'float32':
    overrides['dtype'] = _DTYPES[dtype]
  model = create_model(name, **overrides)
  shape = count.input_shape_for(model, batch)
  task = _task(name, model, batch, boxes_per_image)
  in_args, in_kwargs = count.make_inputs(model, shape, dtype=_DTYPES[dtype])
  args = materialize(in_args, seed=0)
  kwargs = materialize(in_kwargs, seed=1)  # DETR's mask: all False, no padded pixel

  # Real init, jitted (one program instead of many small dispatches).
  variables = jax.jit(lambda k, a, kw: model.init(k, *a, **kw))(
      jax.random.key(0), args, kwargs)
  params = variables['params']
  rest = {k: v for k, v in variables.items() if k != 'params'}
  tx = optax.adamw(1e-4, weight_decay=0.05)
  if task.trainable is not None:  # as swin_jax.train.optimizers: no update, no decay
    labels = jax.tree.map(lambda t: 'train' if t else 'frozen', task.trainable(params))
    tx = optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)
  state = dict(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32))
  dropout_key = jax.random.key(2)

  def train_step(state, args, kwargs, targets):
    rng = jax.random.fold_in(dropout_key, state['step'])

    def loss_fn(p):
      if rest:  # BatchNorm statistics / DETR's frozen BN: updates are not kept here
        out = model.apply({'params': p, **rest}, *args, **kwargs, train=True,
                          rngs={'dropout': rng}, mutable=list(rest))[0]
      else:
        out = model.apply({'params': p}, *args, **kwargs, train=True, rngs={'dropout': rng})
      return task.loss(out, targets)
    loss, grads = jax.value_and_grad(loss_fn)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    new = dict(params=optax.apply_updates(state['params'], updates), opt_state=opt_state,
               step=state['step'] + 1)
    return new, loss

  def infer_step(params, args, kwargs):
    out = model.apply({'params': params, **rest}, *args, **kwargs, train=False)
    return task.infer_outputs(out)
  return model, task, train_step, infer_step, state, args, kwargs


def train_step_for_profiling(name: str, batch: int, img_size=None, **overrides):
  """(jitted train step, state, (args, kwargs, targets)): experiments/profile_cpu_step.py."""
  _, task, train_step, _, state, args, kwargs = build_steps(name, batch, img_size,
                                                            **overrides)
  return jax.jit(train_step, donate_argnums=(0,)), state, (args, kwargs, task.targets)


def benchmark(name: str, batch: int, img_size=None, steps: int = 10,
              dtype: str = 'float32', boxes_per_image: int = DEFAULT_BOXES,
              **overrides) -> Dict[str, Any]:
  """Compiles and times the train and inference steps of model ``name``.

  ``overrides`` go to ``create_model``; ``boxes_per_image`` is DETR's number of real
  target boxes per image (ignored for classifiers).

  Returns a dict: name, backend, device_kind, num_devices, input_shape, dtype, steps, loss
  (what the train step minimises), params, compile_train_s, compile_infer_s, train_step_s,
  infer_step_s, train_images_per_s, infer_images_per_s, train_memory / infer_memory
  (``compiled_memory`` dicts, bytes), peak_infer_bytes / peak_train_bytes (device peak after
  each phase, cumulative; None where unsupported).
  """
  model, task, train_step, infer_step, state, args, kwargs = build_steps(
      name, batch, img_size, dtype, boxes_per_image, **overrides)
  params = state['params']
  shape = count.input_shape_for(model, batch)
  device = jax.devices()[0]

  t0 = time.perf_counter()
  train_c = jax.jit(train_step, donate_argnums=(0,)).lower(
      state, args, kwargs, task.targets).compile()
  compile_train = time.perf_counter() - t0
  t0 = time.perf_counter()
  infer_c = jax.jit(infer_step).lower(params, args, kwargs).compile()
  compile_infer = time.perf_counter() - t0

  # Inference first, so its device peak is not hidden by the train step's.
  infer_s = _time_steps(lambda: infer_c(state['params'], args, kwargs), steps)
  peak_infer = device_peak_bytes(device)

  holder = {'state': state}
  del state, params

  def one_train_step():
    holder['state'], loss = train_c(holder['state'], args, kwargs, task.targets)
    return loss
  train_s = _time_steps(one_train_step, steps)
  peak_train = device_peak_bytes(device)

  return dict(
      name=name, backend=jax.default_backend(), device_kind=device.device_kind,
      num_devices=jax.device_count(), input_shape=shape, dtype=dtype, steps=steps,
      loss=task.loss_name, params=count.count_params({'params': holder['state']['params']}),
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
      f'params {r["params"] / 1e6:.2f} M  steps {r["steps"]}  loss {r["loss"]}',
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


def parse_model_args(items: Optional[Sequence[str]]) -> Dict[str, Any]:
  """``['depths=(1,1)', 'fast_cpu=True']`` -> {'depths': (1, 1), 'fast_cpu': True}
  (swin_jax.cli.parse_model_args; img_size and dtype have their own flags here)."""
  return cli.parse_model_args(items, _OWN_FLAGS)


def check_model_args(name: str, model_args: Dict[str, Any]) -> None:
  """Raises ValueError naming --model-arg for a key that is no field of model ``name``.

  Checked here rather than left to ``create_model``, whose message names config.model.*.
  """
  if not model_args:
    return
  fields = sorted(k for k in create_model(name).__dataclass_fields__
                  if k not in ('parent', 'name') and k not in _OWN_FLAGS)
  bad = sorted(set(model_args) - set(fields))
  if bad:
    raise ValueError(f'--model-arg {", ".join(bad)}: not a field of {name}; its fields: '
                     f'{", ".join(fields)}')


def main(argv: Optional[Sequence[str]] = None) -> int:
  cli.quiet_startup()
  try:
    host_memory.reuse_freed_memory()  # as swin_jax.main does: the steps timed are the trainer's
  except ValueError as e:  # a bad SWIN_JAX_HOST_MEMORY
    print(f'error: {e}', file=sys.stderr)
    return 2
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
  parser.add_argument('--model-arg', action='append', metavar='KEY=VALUE', default=[],
                      help='create_model override, repeatable, VALUE a Python literal or a '
                           'string: --model-arg drop_path_rate=0.1 --model-arg depths=(1,1)')
  parser.add_argument('--boxes', type=int, default=DEFAULT_BOXES,
                      help='DETR: random target boxes per image for the set loss, padded '
                           f'to num_queries slots (default {DEFAULT_BOXES}, about COCO\'s '
                           'mean)')
  args = parser.parse_args(argv)
  if args.batch < 1 or args.steps < 1:
    parser.error('--batch and --steps must be >= 1')
  img_size = count.parse_img_size(args.img_size, parser)
  try:
    model_args = parse_model_args(args.model_arg)
    check_model_args(args.model, model_args)
    report = benchmark(args.model, args.batch, img_size, steps=args.steps, dtype=args.dtype,
                       boxes_per_image=args.boxes, **model_args)
  except (ValueError, TypeError) as e:
    print(f'error: {count.one_line_error(e)}', file=sys.stderr)
    return 2
  print(format_report(report))
  return 0


if __name__ == '__main__':
  sys.exit(main())
