"""Device mesh and shardings: batch split on the 'data' axis, params replicated or FSDP.

The same code runs on 1 CPU, 8 GPUs or a multi-host TPU pod: the mesh spans
``jax.devices()`` (all processes), each process feeds its local slice of the global batch,
and ``jax.make_array_from_process_local_data`` assembles the global array.
"""
from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from swin_jax.parallel import DATA, per_device  # pylint: disable=unused-import


def _is_loopback(address: str) -> bool:
  host = address.rsplit(':', 1)[0].strip('[]')
  return host in ('localhost', '::1') or host.startswith('127.')


def _gloo_on_loopback() -> None:
  """Makes JAX's CPU collectives (gloo) listen on 127.0.0.1 instead of the address
  the host name resolves to: local multi-process runs (tests, a laptop) then open no
  port beyond the loopback interface. JAX has no public option for the gloo host name,
  so this wraps its factory; if that private name moves, the default is kept."""
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    make = xla_bridge._jax.make_gloo_tcp_collectives  # pylint: disable=protected-access
  except AttributeError:
    return
  if getattr(make, '_swin_jax_loopback', False):
    return

  def loopback(*args, **kwargs):
    kwargs.setdefault('hostname', '127.0.0.1')
    return make(*args, **kwargs)
  loopback._swin_jax_loopback = True  # pylint: disable=protected-access
  xla_bridge._jax.make_gloo_tcp_collectives = loopback  # pylint: disable=protected-access


def maybe_initialize_distributed(config) -> None:
  """Calls jax.distributed.initialize when config.distributed.initialize is set.

  On TPU VMs and SLURM the coordinator and process ids are discovered automatically;
  elsewhere set config.distributed.{coordinator_address, num_processes, process_id}.
  CPU devices get gloo collectives (XLA's CPU client has none across processes
  otherwise). A loopback coordinator (127.0.0.1:PORT, localhost:PORT: processes on one
  machine) is served on that address only, and the gloo collectives listen there too.
  """
  d = config.get('distributed')
  if not d or not d.get('initialize'):
    return
  if jax.distributed.is_initialized():  # e.g. a pretrain run in the same process
    return
  if jax.config.jax_cpu_collectives_implementation in (None, 'none', ''):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kwargs = {}
  if d.get('coordinator_address'):
    address = d.coordinator_address
    kwargs = dict(coordinator_address=address, num_processes=d.num_processes,
                  process_id=d.process_id)
    if _is_loopback(address):
      kwargs['coordinator_bind_address'] = address
      _gloo_on_loopback()
  if d.get('initialization_timeout'):
    kwargs['initialization_timeout'] = int(d.initialization_timeout)
  jax.distributed.initialize(**kwargs)


def create_mesh() -> Mesh:
  """A 1-D 'data' mesh of every device, each process's devices next to each other, so
  that process p holds rows [p * b, (p + 1) * b) of every global batch (the rows its
  input pipeline reads; checked by ``check_process_rows``)."""
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices), (DATA,))


def process_rows(mesh: Mesh, global_batch_size: int):
  """(start, stop): the rows of a [global_batch_size, ...] batch this process's devices
  hold under ``batch_sharding(mesh)``."""
  index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
  starts = [idx[0].start or 0 for idx in index_map.values()]
  stops = [global_batch_size if idx[0].stop is None else idx[0].stop
           for idx in index_map.values()]
  return min(starts), max(stops)


def check_process_rows(mesh: Mesh, global_batch_size: int) -> None:
  """Raises unless this process's devices hold rows [p * b, (p + 1) * b), the rows the
  input pipelines give process p (b = global_batch_size / process count)."""
  n, p = jax.process_count(), jax.process_index()
  b = global_batch_size // n
  got = process_rows(mesh, global_batch_size)
  if got != (p * b, (p + 1) * b):
    raise RuntimeError(
        f'process {p} of {n} holds rows {got} of the global batch of {global_batch_size} '
        f'but reads rows {(p * b, (p + 1) * b)}: each process needs the same number of '
        f'devices, next to each other in the mesh (jax.local_device_count() = '
        f'{jax.local_device_count()}).')


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


def host_readable(tree, mesh: Mesh):
  """``tree`` with every leaf readable by jax.device_get on this process: as it is when all
  its shards are on this process's devices or it is replicated; else (FSDP over several
  processes) all-gathered to a replicated copy. A collective: every process calls it."""
  if all(x.is_fully_addressable or x.is_fully_replicated for x in jax.tree.leaves(tree)):
    return tree
  return _gather_to_replicated(mesh)(tree)


@functools.lru_cache(maxsize=None)
def _gather_to_replicated(mesh: Mesh):
  """One jitted identity per mesh into replicated copies: compiled once, not per call."""
  return jax.jit(lambda t: t, out_shardings=replicated(mesh))


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
