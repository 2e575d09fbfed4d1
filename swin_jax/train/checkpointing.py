"""Orbax checkpoints: auto-resume, async saves, keep-last-N, and weights-only init_from.

Layout: ``<workdir>/checkpoints/<step>/{state,meta}``. ``meta`` records the model name and
the shapes of its params, so resuming a workdir that holds another model fails with a clear
message before anything is written. Orbax finalises a step directory atomically, so a run
killed mid-save leaves the previous checkpoint intact and the partial one is ignored.

A finished checkpoint can still be damaged afterwards (a disk error, a bad copy, a file cut
short or edited). ``Checkpointer.restore_latest`` then resumes from the newest step that
restores, warns which step it skipped and why, and moves the damaged step directories to
``<workdir>/checkpoints_damaged/<step>-<time>``: kept for inspection, never deleted, and out
of Orbax's sight (keep-last-N and the new saves of those steps never meet them). If no step
restores it raises ``NoIntactCheckpointError`` and moves nothing: an unreachable bucket must
not look like damage, and starting over from step 0 is the user's decision.

Workdirs may be local or remote (``gs://bucket/run``): every workdir access in the trainer
goes through the path helpers below (``etils.epath``, which reaches GCS through
``tf.io.gfile``); Orbax takes gs:// directories as they are. Local paths are made absolute;
remote ones are never passed to ``os.path.abspath`` or ``os.makedirs``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import time
from typing import IO, Any, Iterator, List, Optional, Tuple

from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from swin_jax import convert
from swin_jax.models import detr, scan
from swin_jax.models.registry import model_family


log = logging.getLogger('swin_jax')

DAMAGED_DIR = 'checkpoints_damaged'  # <workdir>/checkpoints_damaged/<step>-<time>


class CheckpointMismatchError(ValueError):
  """The workdir's checkpoint does not belong to the configured model."""


class NoIntactCheckpointError(ValueError):
  """The workdir holds checkpoints, and none of them restores."""


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


def native_path(path) -> str:
  """The path as a string for libraries that open files themselves (tf.io.TFRecordWriter,
  jax.profiler), resolved through ``as_path`` so that a test's gs:// mapping reaches them."""
  return os.fspath(as_path(path))


def makedirs(path) -> None:
  """``os.makedirs(path, exist_ok=True)`` for local and remote paths (on GCS a directory
  is only a name prefix; creating it is harmless and idempotent across hosts)."""
  as_path(path).mkdir(parents=True, exist_ok=True)


def open_file(path, mode: str = 'r') -> IO:
  """A file object that stays open (metrics.jsonl): the builtin ``open`` for local paths,
  ``tf.io.gfile.GFile`` for remote ones (epath's remote ``open`` is a context manager only).
  On GCS each ``flush()`` uploads the whole file, and 'a' mode rewrites the object with the
  appended lines, which is why metric_writer flushes remote files on a timer."""
  if not is_remote(path):
    return open(path, mode)  # pylint: disable=unspecified-encoding
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # remote paths only
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
    self._check_meta(step, self.read_meta(step), meta, workdir)

  @staticmethod
  def _check_meta(step: int, saved: dict, meta: dict, workdir: str):
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

  def restore_latest(self, abstract_state, meta: dict, workdir: str,
                     set_aside: bool = True) -> Tuple[Any, Optional[int]]:
    """(state, step) of the newest checkpoint that restores; (None, None) if there is none.

    A step that does not restore (a missing or truncated array file, garbage in a metadata
    file, an unreadable meta item) is damaged: a warning names it and why, and the next
    older step is tried. Once one restores, the damaged newer ones are moved to
    <workdir>/checkpoints_damaged/ (``set_aside``; False, e.g. for evaluation, which only
    reads, leaves them where they are). A checkpoint of another model or train-state layout
    raises CheckpointMismatchError as before (the config changed; nothing is damaged). If
    no step restores, NoIntactCheckpointError names each with its reason; nothing is moved.
    """
    damaged: List[Tuple[int, str]] = []
    _quiet_failed_reads()
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        saved = self.read_meta(step)
        if not isinstance(saved, dict):
          raise ValueError(f'expected a JSON object, got {type(saved).__name__}')
      except Exception as e:  # pylint: disable=broad-except
        if not _is_damage(e):
          raise
        damaged.append((step, self._damage_reason(step, e, 'its meta item')))
        continue
      self._check_meta(step, saved, meta, workdir)
      try:
        state = self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        if not _is_damage(e):
          raise
        self._raise_if_layout_differs(step, abstract_state, workdir)
        damaged.append((step, self._damage_reason(step, e, 'its train state')))
        continue
      if damaged:
        self._report_damaged(damaged, step, set_aside)
      return state, step
    if damaged:
      listing = '; '.join(f'step {s}: {r}' for s, r in damaged)
      raise NoIntactCheckpointError(
          f'--workdir={workdir}: no checkpoint in {self.directory} restores ({listing}). '
          f'Nothing was moved or deleted. If the storage was unreachable, run again; if the '
          f'files are damaged, restore them from a copy, or move {self.directory} aside to '
          f'start over from step 0.')
    return None, None

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _damage_reason(self, step: int, err: BaseException, what: str) -> str:
    bad = _unreadable_json(self._step_dir(step))
    reason = f'{what} does not restore: {_root_message(err)}'
    return reason + (f' (not valid JSON: {", ".join(bad)})' if bad else '')

  def _report_damaged(self, damaged: List[Tuple[int, str]], good: int, set_aside: bool):
    aside = os.path.join(os.path.dirname(self.directory), DAMAGED_DIR)
    stamp = time.strftime('%Y%m%d-%H%M%S')
    for step, reason in damaged:
      dst = os.path.join(aside, f'{step}-{stamp}')
      if not set_aside:
        log.warning('Checkpoint step %d in %s is damaged (%s): using step %d (the damaged '
                    'one is left where it is).', step, self.directory, reason, good)
        continue
      if jax.process_index() == 0:
        makedirs(aside)
        as_path(self._step_dir(step)).rename(dst)
      log.warning('Checkpoint step %d in %s is damaged (%s): moved it to %s (kept, never '
                  'deleted); resuming from step %d.', step, self.directory, reason, dst, good)
    if set_aside:
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices('swin_jax: damaged checkpoints set aside')
      self.manager.reload()  # Orbax caches the step list

  def _raise_if_layout_differs(self, step: int, abstract_state, workdir: str):
    """After a failed restore: CheckpointMismatchError if the checkpoint's tree (its
    _METADATA) has other leaves than this config's train state, e.g. another optimizer
    or EMA on / off. An unreadable _METADATA is damage: nothing is raised here."""
    try:
      with ocp.StandardCheckpointer() as reader:
        tree = reader.metadata(os.path.join(self._step_dir(step), 'state')).item_metadata
      saved = _leaf_paths(getattr(tree, 'tree', tree))
    except Exception:  # pylint: disable=broad-except
      return
    want = _leaf_paths(abstract_state)
    if saved == want or not saved:
      return
    parts = []
    for group in sorted({p[0] for p in saved ^ want}):
      only_ckpt = sum(1 for p in saved - want if p[0] == group)
      only_cfg = sum(1 for p in want - saved if p[0] == group)
      parts.append(f'{group}: {only_ckpt} arrays only in the checkpoint, {only_cfg} only in '
                   f'this config')
    hints = {'opt_state': 'config.optimizer (name, clip_grad_norm, layer_decay, lr_mults, '
                          'frozen) or config.finetune.freeze',
             'ema_params': 'config.optimizer.ema_decay (0 = no EMA params)'}
    fields = ' / '.join(hints.get(g, 'the model fields') for g in
                        sorted({p[0] for p in saved ^ want}))
    raise CheckpointMismatchError(
        f'--workdir={workdir} holds a checkpoint (step {step}) whose train state has another '
        f'layout than this config builds ({"; ".join(parts)}): {fields} changed since it was '
        f'saved. Restore them from {workdir}/config.json to resume, or use a new --workdir '
        f'(config.init_from={workdir} starts from its weights). Nothing in the workdir was '
        f'changed.')

  def save(self, step: int, state, meta: dict, force: bool = False) -> bool:
    return self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)), force=force)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


# ------------------------------------------------------------------ damage diagnosis
# Errors that say the storage or the machine failed, not the files: never damage.
_NOT_DAMAGE = ('RESOURCE_EXHAUSTED', 'PERMISSION_DENIED', 'UNAUTHENTICATED', 'UNAVAILABLE',
               'DEADLINE_EXCEEDED', 'CANCELLED', 'Out of memory')


def _chain(err: BaseException) -> List[BaseException]:
  """err and the errors it was raised from, outermost first."""
  out = []
  while err is not None and err not in out and len(out) < 10:
    out.append(err)
    err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
  return out


def _is_damage(err: BaseException) -> bool:
  if isinstance(err, (CheckpointMismatchError, MemoryError, PermissionError)):
    return False
  return not any(code in str(e) for e in _chain(err) for code in _NOT_DAMAGE)


def _root_message(err: BaseException, limit: int = 300) -> str:
  """One line of the innermost error (Orbax wraps TensorStore's, which names the array)."""
  root = _chain(err)[-1]
  text = ' '.join(str(root).split()) or repr(root)
  text = text.split(' See full TensorStore details')[0]
  text = f'{type(root).__name__}: {text}'
  return text if len(text) <= limit else text[:limit - 3] + '...'


def _unreadable_json(step_dir: str) -> List[str]:
  """The JSON files of a step directory that do not parse, relative to it (a JSONDecodeError
  names no file)."""
  names = ['_CHECKPOINT_METADATA', 'meta/metadata', 'state/_METADATA', 'state/_sharding',
           'state/array_metadatas/process_0']
  bad = []
  for name in names:
    path = as_path(os.path.join(step_dir, name))
    try:
      if path.exists():
        json.loads(path.read_text())
    except (ValueError, OSError, UnicodeDecodeError):
      bad.append(name)
  return bad


def _key_name(k) -> str:
  for attr in ('key', 'idx', 'name'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _leaf_paths(tree) -> set:
  """{('opt_state', '1', '0', 'mu', ...), ...}: the same for a train state and Orbax's
  metadata tree of it (dataclass fields, named-tuple fields, dict keys and list indices
  all become strings)."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(_key_name(k) for k in path) for path, _ in flat}


def _from_orbax(err: Optional[BaseException]) -> bool:
  tb = getattr(err, '__traceback__', None)
  while tb is not None:
    if f'{os.sep}orbax{os.sep}' in tb.tb_frame.f_code.co_filename:
      return True
    tb = tb.tb_next
  return False


# asyncio's Future.__del__ words it '<class name> exception was never retrieved': 'Task' for
# one read, '_GatheringFuture' for the asyncio.gather over a tree's reads.
_NEVER_RETRIEVED = re.compile(r'\w+ exception was never retrieved')


class _UnretrievedOrbaxReads(logging.Filter):
  """asyncio's 'Task / _GatheringFuture exception was never retrieved' for Orbax's reads,
  and 'Task was destroyed but it is pending!' for a read of Orbax's (see below)."""

  def filter(self, record):
    msg = str(record.msg)
    if msg.startswith('Task was destroyed but it is pending'):  # no error: the coro's repr
      return f'{os.sep}orbax{os.sep}' not in record.getMessage()
    exc = record.exc_info[1] if record.exc_info else None
    return not (_NEVER_RETRIEVED.match(msg) and _from_orbax(exc))


def _quiet_failed_reads() -> None:
  """When a restore fails, Orbax's other array reads die with it: their coroutines' and
  tasks' errors are never retrieved, and TensorStore reads still in flight report to the
  closed event loop. They surface through sys.unraisablehook and asyncio's logger, now or
  at a later garbage collection (mid-training): dozens of tracebacks with TensorStore specs
  that bury the one warning that matters. Those, and only they, are dropped from then on."""
  asyncio_log = logging.getLogger('asyncio')
  if not any(isinstance(f, _UnretrievedOrbaxReads) for f in asyncio_log.filters):
    asyncio_log.addFilter(_UnretrievedOrbaxReads())
  previous = sys.unraisablehook
  if getattr(previous, '_swin_jax_quiet', False):
    return

  def hook(unraisable):
    value, obj = unraisable.exc_value, unraisable.object
    if isinstance(value, RuntimeError) and str(value) == 'Event loop is closed':
      return
    code = getattr(obj, 'cr_code', None)  # a coroutine of Orbax's
    if code is not None and f'{os.sep}orbax{os.sep}' in code.co_filename:
      return
    previous(unraisable)
  hook._swin_jax_quiet = True  # pylint: disable=protected-access
  sys.unraisablehook = hook


def load_variables_for_init(path: str, model_name: str, variables_like: dict,
                            model_overrides: Optional[dict] = None, model=None):
  """Weights only, for fine-tuning (``config.init_from``): no step, no optimizer state.

  ``path`` is a workdir or its ``checkpoints`` dir (latest step), a step directory, or a
  PyTorch / safetensors / .npz file of the official releases (via swin_jax.convert).
  Leaves whose shape differs from the model's are adapted where the family knows how
  (``swin_jax.convert.adapt_param``: a ViT pos_embed is resampled to the new grid); others
  (e.g. a head with another number of classes) keep the model's fresh initialisation and
  are returned by name in ``skipped``. Every collection of ``variables_like`` the source
  has is loaded: 'params' and e.g. BatchNorm 'batch_stats' (Shunted) or DETR's 'frozen'
  statistics, which an official checkpoint carries and a model without them would
  evaluate wrongly.

  Returns (variables, skipped): the collections of ``variables_like``, each merged with the
  source's where paths and shapes match; skipped lists the 'params' leaves kept fresh.
  """
  path = resolve_path(path, expanduser=True)
  if not as_path(path).exists():
    raise FileNotFoundError(f'config.init_from={path} does not exist: give a workdir, an '
                            f'Orbax step directory, or a .pth/.safetensors/.npz file.')
  if not as_path(path).is_dir():  # a file: the converters read a local copy of a gs:// one
    load = convert.load_vit_npz if path.endswith('.npz') else convert.load_torch_checkpoint
    kw = dict(model_overrides or {})
    with local_copy(path) as local:
      try:
        try:
          loaded = load(model_name, local, **kw)
        except ValueError as e:
          if 'drop_head' not in str(e):
            raise
          # Another number of classes: fine-tuning keeps the model's freshly initialised head.
          loaded = load(model_name, local, drop_head=True, **kw)
      except (ValueError, KeyError, OSError) as e:  # the converters name the file and why
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        raise ValueError(f'config.init_from={path}: {msg}') from e
  else:
    loaded = _restore_orbax_variables(path)
    if 'backbone_0' not in loaded['params']:
      if model_family(model_name) == 'detr':  # a classification workdir -> the backbone
        loaded = detr.backbone_variables_from_classifier(loaded)
  scanned = model
  if model is not None and hasattr(model, 'scan_layout'):
    # Merge per block whichever layout (scan_blocks) each side has: adapt_param resizes
    # per-block leaves; the result is stacked back for a scanned model.
    model = scan.unscanned(model)
    loaded, variables_like = scan.to_layout(loaded, model), scan.to_layout(variables_like, model)
  adapt = None
  if model is not None:
    adapt = lambda k, v, shape: convert.adapt_param(model_name, model, k, v, shape)
  out = dict(variables_like)
  params, skipped = merge_params(variables_like['params'], loaded['params'], source=path,
                                 adapt=adapt)
  out['params'] = params
  for col, like in variables_like.items():
    if col != 'params' and loaded.get(col):
      out[col] = merge_params(like, loaded[col], source=path)[0]
  return (out if scanned is None else scan.stack(out, scanned)), skipped


def _init_from_damaged(path: str, step_dir: str, err: Exception, others) -> None:
  """Raises the one-line error for a config.init_from checkpoint that does not restore
  (returns, for the caller to re-raise, when the error is not damage)."""
  if not _is_damage(err):
    return
  bad = _unreadable_json(step_dir)
  hint = f' (e.g. {others[-1]})' if others else ''
  raise ValueError(
      f'config.init_from={path}: the checkpoint {step_dir} does not restore '
      f'({_root_message(err)}{"; not valid JSON: " + ", ".join(bad) if bad else ""}): it is '
      f'damaged. Point config.init_from at an intact step directory{hint}.') from err


def _restore_orbax_variables(path: str):
  """{'params', **model_state} of an Orbax workdir / checkpoints dir / step dir."""
  candidates = [path, os.path.join(path, 'checkpoints')]
  _quiet_failed_reads()
  for d in candidates:
    if as_path(os.path.join(d, 'state')).is_dir():  # a step directory
      try:
        state = restore_on_host(os.path.join(d, 'state'))
      except Exception as e:  # pylint: disable=broad-except
        _init_from_damaged(path, d, e, [])
        raise
      return {'params': state['params'], **(state.get('model_state') or {})}
    mngr = read_only_manager(d)
    step = mngr.latest_step()
    if step is not None:
      try:
        state = restore_on_host(mngr, step)
      except Exception as e:  # pylint: disable=broad-except
        others = [os.path.join(d, str(s)) for s in sorted(mngr.all_steps()) if s != step]
        _init_from_damaged(path, os.path.join(d, str(step)), e, others)
        raise
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
  mngr = read_only_manager(directory)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'--workdir={workdir}: {directory} holds no finished checkpoint.')
  state = restore_on_host(mngr, step)
  params = state['params']
  if use_ema and state.get('ema_params') is not None:
    params = state['ema_params']
  return {'params': params, **(state.get('model_state') or {})}, step


def read_only_manager(directory: str) -> ocp.CheckpointManager:
  """A CheckpointManager that only reads ``<workdir>/checkpoints`` (its items' handlers
  named, so that ``item_metadata`` can describe the saved arrays)."""
  return ocp.CheckpointManager(
      directory, item_names=('state', 'meta'),
      options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'meta': ocp.JsonCheckpointHandler()})


def restore_on_host(source, step: Optional[int] = None):
  """The saved train state (a dict of arrays) on this process's first device, whatever
  topology saved it: a checkpoint of 2 processes x 4 devices restores in a 1-device
  process (Orbax refuses a restore without a target when the saved mesh is not this
  one's, "Topology mismatch"). ``source`` is a ``read_only_manager`` (with ``step``) or a
  step's ``state`` directory."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def target(metadata):
    return jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
  if isinstance(source, ocp.CheckpointManager):
    metadata = source.item_metadata(step)['state']
    return source.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target(metadata))))['state']
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(source, target(ckptr.metadata(source).item_metadata))
