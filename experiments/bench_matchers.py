"""Times the exact matchers on the current JAX backend (a script, not a test).

For batch 64 of 100x20 and 300x50 float32 costs (N predictions x M targets):

* ``hungarian``: ``swin_jax.detection.matchers.hungarian_matcher`` under jit
  (it vmaps over the batch itself);
* ``optax``: ``optax.assignment.hungarian_algorithm`` under jit(vmap);
* ``scipy``: ``scipy.optimize.linear_sum_assignment`` in a host loop, including
  the device-to-host copy ``np.asarray(jax_array)``.

Prints milliseconds per batch (median of --runs timed runs after a warm-up) and
the compile time (the first call, trace + compile + run), and checks that all
three give the same total costs.

  python experiments/bench_matchers.py [--batch 64] [--runs 20] [--kind uniform]

--kind uniform: costs uniform in [0, 1); --kind detr: a DETR-like cost (class
cost - 5 L1 - 2 GIoU on random boxes), which has far fewer conflicts.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

from swin_jax.detection import boxes as box_ops
from swin_jax.detection.matchers import hungarian_matcher


def make_costs(kind, batch, n, m, seed=0):
  """Float32 costs [batch, n, m]."""
  rng = np.random.default_rng(seed)
  if kind == 'uniform':
    return rng.random((batch, n, m), dtype=np.float32)
  # DETR matcher cost: -prob[class] + 5 * L1(cxcywh) - 2 * GIoU.
  def rand_boxes(shape):
    cxcy = rng.uniform(0.1, 0.9, shape + (2,))
    wh = rng.uniform(0.05, 0.3, shape + (2,))
    return np.concatenate([cxcy, wh], -1).astype(np.float32)
  pb, tb = rand_boxes((batch, n)), rand_boxes((batch, m))
  prob = rng.dirichlet(np.ones(92), (batch, n)).astype(np.float32)
  labels = rng.integers(0, 91, (batch, m))
  c_cls = -np.take_along_axis(prob, labels[:, None, :].repeat(n, 1), 2)
  c_l1 = np.abs(pb[:, :, None] - tb[:, None]).sum(-1)
  giou = np.asarray(box_ops.generalized_box_iou(
      box_ops.box_cxcywh_to_xyxy(pb), box_ops.box_cxcywh_to_xyxy(tb)))
  return (c_cls + 5 * c_l1 - 2 * giou).astype(np.float32)


def ours(c):
  return hungarian_matcher(c)


def optax_batched(c):
  return jax.vmap(optax.assignment.hungarian_algorithm)(c)


def scipy_loop(c):
  host = np.asarray(c)  # device -> host copy, counted in the timing
  out = [scipy.optimize.linear_sum_assignment(x) for x in host]
  return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


def totals(cost, rows, cols):
  cost = np.asarray(cost, np.float64)
  return cost[np.arange(cost.shape[0])[:, None], np.asarray(rows),
              np.asarray(cols)].sum(1)


def time_fn(fn, arg, runs, block):
  t0 = time.perf_counter()
  out = block(fn(arg))
  first = time.perf_counter() - t0
  block(fn(arg))  # warm-up
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    block(fn(arg))
    times.append(time.perf_counter() - t0)
  return out, first, 1e3 * float(np.median(times))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--runs', type=int, default=20)
  parser.add_argument('--kind', default='uniform', choices=['uniform', 'detr'])
  args = parser.parse_args()
  print(f'backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), '
        f'batch {args.batch}, costs: {args.kind}, float32, '
        f'median of {args.runs} runs after warm-up')
  header = (f'{"N x M":>9} | {"matcher":<34} | {"ms / batch":>10} | '
            f'{"first call (compile) s":>22} | {"max |total - scipy|":>19}')
  print(header)
  print('-' * len(header))
  block = lambda out: jax.tree.map(lambda x: np.asarray(jax.block_until_ready(x)), out)
  ok = True
  for n, m in [(100, 20), (300, 50)]:
    cost = jnp.asarray(make_costs(args.kind, args.batch, n, m))
    jax.block_until_ready(cost)
    res = {}
    for name, fn, b in [
        ('hungarian_matcher, jit', jax.jit(ours), block),
        ('optax hungarian_algorithm, jit+vmap', jax.jit(optax_batched), block),
        ('scipy loop (incl. device->host)', scipy_loop, lambda o: o),
    ]:
      out, first, ms = time_fn(fn, cost, args.runs, b)
      res[name] = (totals(cost, *out), first, ms)
    ref = res['scipy loop (incl. device->host)'][0]
    scale = float(np.abs(np.asarray(cost)).max()) * min(n, m)
    for name, (tot, first, ms) in res.items():
      err = float(np.abs(tot - ref).max())
      ok &= err <= 1e-5 * scale
      comp = f'{first:.2f}' if 'scipy' not in name else '-'
      print(f'{f"{n}x{m}":>9} | {name:<34} | {ms:>10.2f} | {comp:>22} | {err:>19.2e}')
  print('all total costs equal (to float32 tolerance):', ok)
  if not ok:
    raise SystemExit(1)


if __name__ == '__main__':
  main()
