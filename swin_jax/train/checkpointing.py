"""Orbax checkpoints: auto-resume, async saves, keep-last-N, and weights-only init_from.

Layout: ``<workdir>/checkpoints/<step>/{state,meta}``. ``meta`` records the model name and
the shapes of its params, so resuming a workdir that holds another model fails with a clear
message before anything is written. Orbax finalises a step directory atomically, so a run
killed mid-save leaves the previous checkpoint intact and the partial one is ignored.

Workdirs may be local or remote (``gs://bucket/run``): every workdir access in the trainer
goes through the path helpers below (``etils.epath``, which reaches GCS through
``tf.io.gfile``); Orbax takes gs:// directories as they are. Local paths are made absolute;
remote ones are never passed to ``os.path.abspath`` or ``os.makedirs``.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Any, Iterator, Optional

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
  """The workdir's checkpoint does not belong to the configured model."""


# ------------------------------------------------------------------ paths (local or gs://)
def is_remote(path) -> bool:
  """True for a URL-like path (``gs://bucket/run``, ``s3://...``), False for a local one."""
  return '://' in os.fspath(path)


def resolve_path(path, expanduser: bool = False) -> str:
  """The path as the trainer keeps it: local paths absolute (``~`` expanded if asked),
  remote ones (gs://) unchanged, since ``os.path.abspath('gs://b/x')`` is '<cwd>/gs:/b/x'."""
  path = os.fspath(path)
  if is_remote(path):
    return path
  return os.path.abspath(os.path.expanduser(path) if expanduser else path)


def as_path(path) -> epath.Path:
  """``etils.epath.Path`` of a local or remote path: exists / is_dir / read_text / mkdir /
  rename work on both (tests replace this function to map gs:// onto a local dir)."""
  return epath.Path(path)


def makedirs(path) -> None:
  """``os.makedirs(path, exist_ok=True)`` for local and remote paths (on GCS a directory
  is only a name prefix; creating it is harmless and idempotent across hosts)."""
  as_path(path).mkdir(parents=True, exist_ok=True)


def open_file(path, mode: str = 'r') -> IO:
  """A file object that stays open (metrics.jsonl, TensorBoard events): the builtin
  ``open`` for local paths, ``tf.io.gfile.GFile`` for remote ones (epath's remote ``open``
  is a context manager only). On GCS each ``flush()`` uploads the whole file, and 'a' mode
  rewrites the object with the appended lines: fine for logs of a few MB."""
  if not is_remote(path):
    return open(path, mode)  # pylint: disable=unspecified-encoding
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile.GFile(os.fspath(path), mode)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
  """Yields a local path with the file's contents: ``path`` itself when local, a temporary
  copy (removed afterwards) when remote, for readers that need a real file (torch.load)."""
  if not is_remote(path):
    yield path
    return
  with tempfile.TemporaryDirectory(prefix='swin_jax_') as tmp:
    dst = os.path.join(tmp, os.path.basename(os.fspath(path).rstrip('/')))
    as_path(path).copy(dst)
    yield dst


def _shapes(tree) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): list(np.shape(x)) for p, x in flat}


def model_meta(model_name: str, params) -> dict:
  return {'model': model_name, 'param_shapes': _shapes(params)}


def describe_mismatch(saved: dict, current: dict, limit: int = 5) -> str:
  s, c = saved.get('param_shapes', {}), current['param_shapes']
  missing = [k for k in c if k not in s][:limit]
  unexpected = [k for k in s if k not in c][:limit]
  shape = [f'{k}: checkpoint {s[k]} vs model {c[k]}' for k in c if k in s and s[k] != c[k]]
  parts = []
  if missing:
    parts.append(f'missing in checkpoint: {missing}')
  if unexpected:
    parts.append(f'not in model: {unexpected}')
  if shape:
    parts.append(f'shape differences: {shape[:limit]}')
  return '; '.join(parts)


class Checkpointer:
  """A thin wrapper around ocp.CheckpointManager for the train state."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(resolve_path(workdir), 'checkpoints')  # gs:// as is
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('state', 'meta'))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def read_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
        'meta']

  def check_compatible(self, step: int, meta: dict, workdir: str):
    saved = self.read_meta(step)
    if saved.get('model') != meta['model']:
      raise CheckpointMismatchError(
          f"--workdir={workdir} holds a checkpoint of model {saved.get('model')!r} (step "
          f"{step}), but config.model.name is {meta['model']!r}. Use a new --workdir for this "
          f"model, or set --config.model.name={saved.get('model')} to resume that run. "
          f'Nothing in the workdir was changed.')
    diff = describe_mismatch(saved, meta)
    if diff:
      raise CheckpointMismatchError(
          f'--workdir={workdir} holds a checkpoint (step {step}) of {meta["model"]} with other '
          f'parameter shapes than this config builds ({diff}). Restore the model fields it was '
          f'trained with (see {workdir}/config.json), or use a new --workdir. Nothing in the '
          f'workdir was changed.')

  def restore(self, step: int, abstract_state):
    return self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))['state']

  def save(self, step: int, state, meta: dict, force: bool = False) -> bool:
    return self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)), force=force)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def load_params_for_init(path: str, model_name: str, params_like,
                         model_overrides: Optional[dict] = None, model=None) -> Any:
  """Weights only, for fine-tuning (``config.init_from``): no step, no optimizer state.

  ``path`` is a workdir or its ``checkpoints`` dir (latest step), a step directory, or a
  PyTorch / safetensors / .npz file of the official releases (via swin_jax.convert).
  Leaves whose shape differs from the model's are adapted where the family knows how
  (``swin_jax.convert.adapt_param``: a ViT pos_embed is resampled to the new grid); others
  (e.g. a head with another number of classes) keep the model's fresh initialisation and
  are returned by name in ``skipped``. Returns (params, skipped).
  """
  variables, skipped = load_variables_for_init(path, model_name, {'params': params_like},
                                               model_overrides, model)
  return variables['params'], skipped


def load_variables_for_init(path: str, model_name: str, variables_like: dict,
                            model_overrides: Optional[dict] = None, model=None):
  """``load_params_for_init`` for every collection of ``variables_like`` the source has:
  'params' and e.g. BatchNorm 'batch_stats' (Shunted) or DETR's 'frozen' statistics, which
  an official checkpoint carries and a model without them would evaluate wrongly.

  Returns (variables, skipped): the collections of ``variables_like``, each merged with the
  source's where paths and shapes match; skipped lists the 'params' leaves kept fresh.
  """
  path = resolve_path(path, expanduser=True)
  if not as_path(path).exists():
    raise FileNotFoundError(f'config.init_from={path} does not exist: give a workdir, an '
                            f'Orbax step directory, or a .pth/.safetensors/.npz file.')
  if not as_path(path).is_dir():  # a file: the converters read a local copy of a gs:// one
    from swin_jax import convert  # pylint: disable=g-import-not-at-top
    load = convert.load_vit_npz if path.endswith('.npz') else convert.load_torch_checkpoint
    kw = dict(model_overrides or {})
    with local_copy(path) as local:
      try:
        loaded = load(model_name, local, **kw)
      except ValueError as e:
        if 'drop_head' not in str(e):
          raise
        # Another number of classes: fine-tuning keeps the model's freshly initialised head.
        loaded = load(model_name, local, drop_head=True, **kw)
  else:
    loaded = _restore_orbax_variables(path)
    if 'backbone_0' not in loaded['params']:
      from swin_jax.models.registry import model_family  # pylint: disable=g-import-not-at-top
      if model_family(model_name) == 'detr':  # a classification workdir -> the backbone
        from swin_jax.models import detr  # pylint: disable=g-import-not-at-top
        loaded = detr.backbone_variables_from_classifier(loaded)
  adapt = None
  if model is not None:
    from swin_jax import convert  # pylint: disable=g-import-not-at-top
    adapt = lambda k, v, shape: convert.adapt_param(model_name, model, k, v, shape)
  out = dict(variables_like)
  params, skipped = merge_params(variables_like['params'], loaded['params'], source=path,
                                 adapt=adapt)
  out['params'] = params
  for col, like in variables_like.items():
    if col != 'params' and loaded.get(col):
      out[col] = merge_params(like, loaded[col], source=path)[0]
  return out, skipped


def _restore_orbax_variables(path: str):
  """{'params', **model_state} of an Orbax workdir / checkpoints dir / step dir."""
  candidates = [path, os.path.join(path, 'checkpoints')]
  for d in candidates:
    if as_path(os.path.join(d, 'state')).is_dir():  # a step directory
      ckptr = ocp.StandardCheckpointer()
      state = ckptr.restore(os.path.join(d, 'state'))
      return {'params': state['params'], **(state.get('model_state') or {})}
    mngr = ocp.CheckpointManager(d, item_names=('state', 'meta'),
                                 options=ocp.CheckpointManagerOptions(read_only=True))
    step = mngr.latest_step()
    if step is not None:
      state = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore()))['state']
      return {'params': state['params'], **(state.get('model_state') or {})}
  raise FileNotFoundError(f'config.init_from={path} holds no Orbax checkpoint (looked in '
                          f'{candidates}).')


def merge_params(params_like, loaded, source: str = '', adapt=None):
  """Takes each leaf of ``loaded`` whose path and shape match ``params_like``.

  Returns (params, skipped): skipped lists paths kept at their fresh initialisation. If
  nothing matches at all the checkpoint is for another model: that raises.
  """
  flat_like = jax.tree_util.tree_flatten_with_path(params_like)
  loaded_by_path = {jax.tree_util.keystr(p): x
                    for p, x in jax.tree_util.tree_flatten_with_path(loaded)[0]}
  out, skipped = [], []
  for p, x in flat_like[0]:
    k = jax.tree_util.keystr(p)
    y = loaded_by_path.get(k)
    if y is not None and tuple(np.shape(y)) != tuple(np.shape(x)) and adapt is not None:
      y = adapt(k, np.asarray(y), np.shape(x))
    if y is not None and tuple(np.shape(y)) == tuple(np.shape(x)):
      out.append(np.asarray(y, dtype=np.asarray(x).dtype))
    else:
      out.append(x)
      skipped.append(k)
  if len(skipped) == len(flat_like[0]):
    raise CheckpointMismatchError(
        f'config.init_from={source}: no parameter matches the model (wrong model name?).')
  return jax.tree_util.tree_unflatten(flat_like[1], out), skipped


def load_variables(workdir: str, step: Optional[int] = None, use_ema: bool = True):
  """Model variables {'params', **model_state} of a workdir's checkpoint (latest by default).

  For inference (``swin_jax.predict``): no optimizer, no config needed to restore. The EMA
  params are returned when the run kept them (as ``evaluate`` uses them).

  Returns (variables, step).
  """
  directory = os.path.join(resolve_path(workdir, expanduser=True), 'checkpoints')
  if not as_path(directory).is_dir():
    raise FileNotFoundError(f'--workdir={workdir} holds no checkpoints/ directory: train there '
                            f'first (python -m swin_jax.main --config=... --workdir={workdir}).')
  mngr = ocp.CheckpointManager(directory, item_names=('state', 'meta'),
                               options=ocp.CheckpointManagerOptions(read_only=True))
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'--workdir={workdir}: {directory} holds no finished checkpoint.')
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
  params = state['params']
  if use_ema and state.get('ema_params') is not None:
    params = state['ema_params']
  return {'params': params, **(state.get('model_state') or {})}, step
