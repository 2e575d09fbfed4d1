"""Device mesh and shardings: batch split on the 'data' axis, params replicated or FSDP.

The same code runs on 1 CPU, 8 GPUs or a multi-host TPU pod: the mesh spans
``jax.devices()`` (all processes), each process feeds its local slice of the global batch,
and ``jax.make_array_from_process_local_data`` assembles the global array.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = 'data'


def maybe_initialize_distributed(config) -> None:
  """Calls jax.distributed.initialize when config.distributed.initialize is set.

  On TPU VMs the coordinator and process ids are discovered automatically; on GPU clusters
  set config.distributed.{coordinator_address, num_processes, process_id}.
  """
  d = config.get('distributed')
  if not d or not d.get('initialize'):
    return
  kwargs = {}
  if d.get('coordinator_address'):
    kwargs = dict(coordinator_address=d.coordinator_address,
                  num_processes=d.num_processes, process_id=d.process_id)
  jax.distributed.initialize(**kwargs)


def create_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), (DATA,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape, n: int, min_size: int = 2 ** 14) -> P:
  """Shards the largest dimension divisible by ``n`` (ZeRO-3 style); small arrays replicate."""
  if n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for axis in np.argsort(shape)[::-1]:
    if shape[axis] % n == 0:
      spec = [None] * len(shape)
      spec[axis] = DATA
      return P(*spec)
  return P()


def state_shardings(abstract_state, mesh: Mesh, fsdp: bool):
  """A NamedSharding per leaf of the (abstract) train state."""
  n = mesh.shape[DATA]
  def leaf(x):
    shape = getattr(x, 'shape', ())
    return NamedSharding(mesh, fsdp_spec(shape, n) if fsdp else P())
  return jax.tree.map(leaf, abstract_state)


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy arrays [b_local, ...] -> global jax.Arrays [b_global, ...] on 'data'."""
  sharding = batch_sharding(mesh)

  def put(x):
    x = np.asarray(x)
    if x.dtype == np.int64 and not jax.config.jax_enable_x64:
      # e.g. COCO image ids: int64 in tfds, int32 on device (jax's default without x64).
      if x.size and (x.min() < np.iinfo(np.int32).min or x.max() > np.iinfo(np.int32).max):
        raise ValueError(f'int64 batch values up to {x.max()} do not fit int32: enable '
                         f'jax_enable_x64 or map them to smaller ids.')
      x = x.astype(np.int32)
    return jax.make_array_from_process_local_data(sharding, x)
  return jax.tree.map(put, local_batch)
