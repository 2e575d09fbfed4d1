"""The device-mesh vocabulary shared by the models' losses and the trainer.

``DATA`` names the mesh axis the batch is split over (train/sharding.py builds the mesh);
``per_device`` runs per-example-group work on each device's shard, so that it never turns
into cross-device collectives (it lives here, not in train/, because detection's criterion
uses it too).
"""
from __future__ import annotations

import jax

DATA = 'data'


def per_device(fn, in_specs, out_specs):
  """``fn`` run on each device's shard of the 'data' axis (``jax.shard_map``), when traced
  under a mesh context (``jax.set_mesh``, as ``steps.jit_train_step`` traces); ``fn``
  itself otherwise, or when the axis has one device (so 1-device programs are unchanged).

  For work that is per example group and must not become cross-device traffic: Mixup's
  pairing of a batch with its flip, DETR's matching loop. ``in_specs`` / ``out_specs``
  are PartitionSpec prefixes of the arguments / results, e.g. (P(DATA), P()) for a
  batch-sharded array and a replicated rng key.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or DATA not in mesh.axis_names or mesh.shape[DATA] == 1:
    return fn
  # check_vma=False: loops inside (the matcher's while_loop) start from constants that
  # the replication checker would want cast to 'varying'; every output here is per shard.
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                       check_vma=False)
