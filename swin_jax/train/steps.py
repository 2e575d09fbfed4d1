"""Train state and the jitted, sharded train / eval steps."""
from __future__ import annotations

from typing import Any, Callable, Dict

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from swin_jax.train import sharding as shd


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training, and nothing else.

  model_state: the model's mutable collections (e.g. {'batch_stats': ...}); {} for ViT.
  ema_params: exponential moving average of params, or None when EMA is off.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Dict[str, Any]
  ema_params: Any = None


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng, init_inputs,
                       use_ema: bool) -> TrainState:
  """init_inputs: (args, kwargs) of example inputs for model.init (task.init_inputs), or an
  NHWC input shape."""
  if not (isinstance(init_inputs, tuple) and len(init_inputs) == 2 and
          isinstance(init_inputs[1], dict)):
    init_inputs = ((jnp.zeros(init_inputs, jnp.float32),), {})
  args, kwargs = init_inputs
  variables = model.init({'params': rng, 'dropout': rng}, *args, train=False, **kwargs)
  variables = flax.core.unfreeze(variables)
  params = variables.pop('params')
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    model_state=variables,
                    ema_params=jax.tree.map(jnp.copy, params) if use_ema else None)


def make_train_step(model: nn.Module, task, tx: optax.GradientTransformation,
                    schedule: Callable, *, base_rng, grad_accum_steps: int = 1,
                    ema_decay: float = 0.0, gather_params: bool = False) -> Callable:
  """Returns train_step(state, batch) -> (state, metrics) (not yet jitted).

  gather_params (FSDP): the sharded params are gathered whole before the forward pass
  (ZeRO-3: all-gather the weights, compute on each device's rows, reduce-scatter the
  gradients back to the param shards). Without it XLA may instead split a layer's
  activations by the sharded weight dimension, moving activations between devices.

  With grad_accum_steps = k the global batch is split into k micro-batches (interleaved, so
  each stays spread over all devices); their gradients are averaged before one update, which
  equals one step on the whole batch for models without batch statistics.

  EMA (ema_decay = d, when state.ema_params is not None): after each update,
  ema = d * ema + (1 - d) * params with the updated params and a constant d (no warm-up).

  Randomness is a pure function of the step (resume stays exact): rng = fold_in(base_rng,
  step); micro-batch i's dropout key is fold_in(rng, i) (rng itself when k = 1), and a task
  with ``train_batch(batch, rng)`` (classification: Mixup / CutMix) augments the batch with
  rng before it is split: on each device's shard separately (``shd.per_device``: no batch
  crosses devices; every shard draws with the same rng), the whole batch on one device.
  """
  prepare = getattr(task, 'train_batch', None)

  def loss_fn(params, model_state, micro, rng):
    if gather_params:  # P(): replicated on the mesh of jit_train_step's set_mesh
      params = jax.lax.with_sharding_constraint(params, P())
    variables = {'params': params, **model_state}
    kwargs = task.model_kwargs(micro)
    if model_state:
      out, new_state = model.apply(variables, micro['image'], train=True,
                                   rngs={'dropout': rng}, mutable=list(model_state), **kwargs)
    else:
      out, new_state = model.apply(variables, micro['image'], train=True,
                                   rngs={'dropout': rng}, **kwargs), {}
    loss, metrics = task.loss(out, micro)
    return loss, (metrics, new_state)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(base_rng, state.step)
    if prepare is not None:  # per_device looks for the mesh at trace time: here
      batch = shd.per_device(prepare, in_specs=(P(shd.DATA), P()),
                             out_specs=P(shd.DATA))(batch, rng)
    k = grad_accum_steps
    if k == 1:
      (_, (metrics, model_state)), grads = grad_fn(state.params, state.model_state, batch, rng)
    else:
      def split(x):  # [B, ...] -> [k, B/k, ...], micro-batch i = rows i, i+k, ...
        return x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
      micro = jax.tree.map(split, batch)

      def body(carry, xs):
        grads_acc, model_state = carry
        i, mb = xs
        (_, (m, model_state)), g = grad_fn(state.params, model_state, mb,
                                           jax.random.fold_in(rng, i))
        return (jax.tree.map(jnp.add, grads_acc, g), model_state), m
      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grads, model_state), ms = jax.lax.scan(
          body, (zeros, state.model_state), (jnp.arange(k), micro))
      grads = jax.tree.map(lambda g: g / k, grads)
      metrics = jax.tree.map(jnp.mean, ms)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema is not None:
      ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
    metrics = dict(metrics, lr=schedule(state.step), grad_norm=optax.global_norm(grads),
                   param_norm=optax.global_norm(params))
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                        model_state=model_state, ema_params=ema)
    return new, metrics

  return train_step


def make_eval_step(model: nn.Module, task) -> Callable:
  """eval_step(params, model_state, batch) -> task.eval_outputs (e.g. metric sums over the
  real examples, or per-image detections)."""
  def eval_step(params, model_state, batch):
    out = model.apply({'params': params, **model_state}, batch['image'], train=False,
                      **task.model_kwargs(batch))
    return task.eval_outputs(out, batch)
  return eval_step


class _WithMesh:
  """A jitted function called (so traced and lowered) under ``jax.set_mesh(mesh)``, which
  lets ``shd.per_device`` find the mesh; ``lower`` too, for HLO inspection."""

  def __init__(self, jitted, mesh):
    self._jitted, self._mesh = jitted, mesh

  def __call__(self, *args):
    with jax.set_mesh(self._mesh):
      return self._jitted(*args)

  def lower(self, *args):
    with jax.set_mesh(self._mesh):
      return self._jitted.lower(*args)


def jit_train_step(train_step, state_sharding, mesh):
  return _WithMesh(jax.jit(train_step, in_shardings=(state_sharding, shd.batch_sharding(mesh)),
                           out_shardings=(state_sharding, shd.replicated(mesh)),
                           donate_argnums=(0,)), mesh)


def jit_eval_step(eval_step, params_sharding, model_state_sharding, mesh):
  return _WithMesh(jax.jit(
      eval_step, in_shardings=(params_sharding, model_state_sharding, shd.batch_sharding(mesh)),
      out_shardings=shd.replicated(mesh)), mesh)
