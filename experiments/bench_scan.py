"""Compile time and XLA's memory estimate of a train step, scan_blocks off / on x remat.

    python experiments/bench_scan.py [--models vit_large_patch16_224 ...] [--batch 8]
        [--remat none full] [--scan False True] [--drop-path-rate R]

For each model and setting it lowers and compiles (never runs) one training step on
abstract inputs: ``jax.value_and_grad`` of the label-smoothed cross-entropy of
``model.apply(..., train=True)`` (dropout / drop-path on; the registry's drop_path_rate, 0
for these models, unless --drop-path-rate gives the paper's, e.g. 0.5 for Swin-B),
then an optax AdamW update, params and optimizer state donated as the trainer donates them.
Prints one row per setting: seconds to lower, seconds to compile, and
``compiled.memory_analysis()``: temp (activations and scratch), argument and output bytes.
Float32, 224x224, on the default backend (the README's table: CPU).
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax

from swin_jax.models import create_model

MODELS = ('vit_large_patch16_224', 'swin_base_patch4_window7_224',
          'swin_large_patch4_window7_224')


def train_step_fn(model, tx):
  def loss_fn(params, images, labels, rng):
    logits = model.apply({'params': params}, images, train=True, rngs={'dropout': rng})
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), 0.1)
    return optax.softmax_cross_entropy(logits, targets).mean()

  def step(params, opt_state, images, labels, rng):
    loss, grads = jax.value_and_grad(loss_fn)(params, images, labels, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


def measure(name: str, batch: int, scan_blocks: bool, remat: str, drop_path_rate=None):
  kw = {} if drop_path_rate is None else dict(drop_path_rate=drop_path_rate)
  model = create_model(name, scan_blocks=scan_blocks, remat=remat, **kw)
  images = jax.ShapeDtypeStruct((batch, 224, 224, 3), jnp.float32)
  labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
  rng = jax.eval_shape(lambda: jax.random.PRNGKey(0))
  params = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), images)['params']
  tx = optax.adamw(1e-3, weight_decay=0.05)
  opt_state = jax.eval_shape(tx.init, params)
  t0 = time.perf_counter()
  lowered = train_step_fn(model, tx).lower(params, opt_state, images, labels, rng)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  mem = compiled.memory_analysis()
  return dict(lower=t1 - t0, compile=t2 - t1, temp=mem.temp_size_in_bytes,
              args=mem.argument_size_in_bytes, out=mem.output_size_in_bytes)


def _gib(n) -> str:
  return f'{n / 2**30:.2f}'


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--models', nargs='+', default=list(MODELS))
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--remat', nargs='+', default=['none', 'full'])
  p.add_argument('--scan', nargs='+', default=['False', 'True'])
  p.add_argument('--drop-path-rate', type=float, default=None,
                 help="every model's drop_path_rate (default: the registry's)")
  args = p.parse_args()
  print(f'backend {jax.default_backend()}  jax {jax.__version__}  batch {args.batch}  '
        f'224x224 float32  drop_path_rate {args.drop_path_rate}', flush=True)
  print('| model | scan | remat | lower s | compile s | temp GiB | args GiB | out GiB |')
  print('|---|---|---|---|---|---|---|---|', flush=True)
  for name in args.models:
    for scan_blocks in (s.lower() == 'true' for s in args.scan):
      for remat in args.remat:
        r = measure(name, args.batch, scan_blocks, remat, args.drop_path_rate)
        print(f'| {name} | {"on" if scan_blocks else "off"} | {remat} | {r["lower"]:.1f} | '
              f'{r["compile"]:.1f} | {_gib(r["temp"])} | {_gib(r["args"])} | '
              f'{_gib(r["out"])} |', flush=True)


if __name__ == '__main__':
  main()
