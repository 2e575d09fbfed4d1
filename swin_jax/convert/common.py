"""The shared core of the PyTorch-layout converters (ViT, Swin, Shunted).

A family converter is a short mapping on top of this: a ``torch_key(collection, path)`` that
names each flax variable in the checkpoint, an optional ``fit`` for a leaf that may come at
another size (ViT's ``pos_embed``, Swin's bias tables), and what its error message should
suggest (``infer_*_config``, the key order of its model). This module does the rest:

* layouts: torch Linear ``weight`` [out, in] <-> flax Dense ``kernel`` [in, out], Conv2d
  ``weight`` OIHW <-> flax Conv ``kernel`` HWIO, LayerNorm / BatchNorm ``weight`` <-> ``scale``;
* ``variable_shapes``: what the model expects, by abstract init (no compute);
* ``map_state_dict``: checks every name and shape first, then converts;
* the mismatch message: the first few keys of each kind in the model's order, what the
  checkpoint looks like, and the fix (a registered model name, overrides, the head).
"""
from __future__ import annotations

import functools
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from swin_jax.convert.torch_io import StateDict
from swin_jax.models import create_model, list_models, scan

Path = Tuple[str, ...]
VariableKey = Tuple[str, Path]  # (collection, flax path), e.g. ('params', ('head', 'kernel'))
ShapeError = Tuple[str, tuple, tuple]  # (key, checkpoint shape, model shape in torch layout)

# Flax leaf -> torch name inside a module: Dense / Conv ``kernel`` and LayerNorm / BatchNorm
# ``scale`` are all torch's ``weight``.
PARAM_LEAVES = {'kernel': 'weight', 'scale': 'weight'}
_MAX_LISTED = 5  # keys named per category in error messages


def to_2tuple(x) -> tuple:
  return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


# ---------------------------------------------------------------------------------------------
# Names and layouts.


def torch_key(path: Path, indexed: str, leaves: Mapping[str, str] = PARAM_LEAVES,
              modules: Optional[Mapping[str, str]] = None) -> str:
  """Flax variable path -> torch state_dict key.

  A module ``name_N`` whose ``name`` fully matches the regex ``indexed`` is torch's list
  entry ``name.N`` (flax names cannot hold dots); ``modules`` renames whole modules; a leaf
  under a module is renamed by ``leaves`` (top-level leaves such as ``cls_token`` keep theirs).
  E.g. ``torch_key(('blocks_0', 'attn', 'qkv', 'kernel'), 'blocks')`` ->
  ``'blocks.0.attn.qkv.weight'``.
  """
  *mods, leaf = path
  parts = []
  for m in mods:
    mm = re.fullmatch(rf'({indexed})_(\d+)', m)
    parts += [mm.group(1), mm.group(2)] if mm else [(modules or {}).get(m, m)]
  parts.append(leaves.get(leaf, leaf) if mods else leaf)
  return '.'.join(parts)


def torch_to_flax(path: Path, v: np.ndarray) -> np.ndarray:
  """A checkpoint array in flax's layout (a view: kernels transposed, the rest as they are)."""
  if path[-1] == 'kernel':
    if v.ndim == 4:  # Conv2d OIHW -> HWIO
      return v.transpose(2, 3, 1, 0)
    if v.ndim == 2:  # Linear [out, in] -> Dense [in, out]
      return v.T
  return v


def flax_to_torch(path: Path, v: np.ndarray) -> np.ndarray:
  """The inverse of ``torch_to_flax``."""
  if path[-1] == 'kernel':
    return v.transpose(3, 2, 0, 1) if v.ndim == 4 else v.T
  return v


def flax_to_torch_shape(path: Path, shape: Sequence[int]) -> Tuple[int, ...]:
  """The torch shape of a flax variable of ``shape``: what the checkpoint must hold."""
  shape = tuple(shape)
  if path[-1] == 'kernel':
    if len(shape) == 4:
      return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:
      return shape[::-1]
  return shape


def to_state_dict(variables: Mapping[str, Any], key: Callable[[str, Path], str],
                  collections: Sequence[str] = ('params',)) -> StateDict:
  """Flax variables -> a torch-layout state_dict of contiguous numpy arrays.

  The inverse of ``map_state_dict``, with ``key(collection, path)`` naming each variable.
  """
  out: StateDict = {}
  for col in collections:
    for path, v in traverse_util.flatten_dict(dict(variables.get(col, {}))).items():
      out[key(col, path)] = np.ascontiguousarray(flax_to_torch(path, np.asarray(v)))
  return out


def scan_aware(convert: Callable[..., Any]) -> Callable[..., Any]:
  """A family converter ``convert(sd, model, **kw)`` that also takes a ``scan_blocks=True``
  model: it converts for the per-block model and stacks the result (swin_jax.models.scan),
  for converters returning params and those marked ``returns_variables`` alike."""
  @functools.wraps(convert)
  def wrapped(sd, model, *args, **kwargs):
    out = convert(sd, scan.unscanned(model), *args, **kwargs)
    if not scan.is_scanned(model):
      return out
    if getattr(wrapped, 'returns_variables', False):
      return scan.stack(out, model)
    return scan.stack({'params': out}, model)['params']
  return wrapped


def unscanned_variables(variables: Mapping[str, Any], model: Optional[nn.Module]):
  """The per-block layout of ``variables`` for the exporters (a no-op without a scanned
  ``model``)."""
  return variables if model is None else scan.unstack(variables, model)


# ---------------------------------------------------------------------------------------------
# The mapping.


def variable_shapes(model: nn.Module, collections: Sequence[str] = ('params',),
                    image_hw: Optional[Sequence[int]] = None
                    ) -> Dict[VariableKey, jax.ShapeDtypeStruct]:
  """Flat {(collection, path): ShapeDtypeStruct} of ``model``'s variables, by abstract init.

  The model is traced on one image [1, H, W, in_chans] (3 channels for models without the
  field, e.g. ResNet), (H, W) = ``image_hw`` or else the model's ``img_size``.
  """
  h, w = (int(s) for s in to_2tuple(model.img_size if image_hw is None else image_hw))
  x = jax.ShapeDtypeStruct((1, h, w, getattr(model, 'in_chans', 3)), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
  return {(col, path): s for col in collections
          for path, s in traverse_util.flatten_dict(dict(shapes.get(col, {}))).items()}


def param_shapes(model: nn.Module) -> Dict[Path, jax.ShapeDtypeStruct]:
  """Flat {path: ShapeDtypeStruct} of ``model``'s params, by abstract init (no compute)."""
  return {path: s for (_, path), s in variable_shapes(model).items()}


def without_head(targets: Mapping[VariableKey, Any], sd: Mapping[str, Any],
                 prefixes: Tuple[str, ...] = ('head.',)) -> Tuple[Dict, Dict]:
  """(targets, state_dict) with the classifier left out (``drop_head=True``)."""
  return ({k: s for k, s in targets.items() if k[1][0] != 'head'},
          {k: v for k, v in sd.items() if not k.startswith(prefixes)})


def map_state_dict(sd: Mapping[str, np.ndarray],
                   targets: Mapping[VariableKey, jax.ShapeDtypeStruct],
                   key: Callable[[str, Path], str],
                   error: Callable[[List[str], List[str], List[ShapeError]], Exception],
                   fit: Optional[Callable[[Path, np.ndarray, tuple], Optional[np.ndarray]]]
                   = None) -> Dict[str, Dict[str, Any]]:
  """Checkpoint arrays -> the model's variables, every name and shape checked first.

  Args:
    sd: flat {torch key: np.ndarray} in torch layout.
    targets: what the model expects (``variable_shapes``).
    key: ``key(collection, path)`` -> the state_dict key of that variable.
    error: ``error(missing, unexpected, shape_errors)`` -> the exception raised when any
      key is missing, left over or of another shape (keys in the checkpoint's naming; shapes
      in torch layout).
    fit: ``fit(path, value, torch_shape)`` -> ``value`` brought to ``torch_shape`` (e.g. a
      position embedding resampled), or None where it cannot be; called only on a mismatch.

  Returns:
    {collection: nested dict of C-contiguous numpy arrays} with the dtypes of ``targets``;
    a collection without variables is left out.
  """
  # Check names and shapes first, convert after: a mismatch costs no array work.
  missing, shape_errors, used, todo = [], [], set(), []
  for (col, path), target in targets.items():
    k = key(col, path)
    if k not in sd:
      missing.append(k)
      continue
    used.add(k)
    v = sd[k]
    got, want = tuple(v.shape), flax_to_torch_shape(path, target.shape)
    if got != want:
      v = fit(path, v, want) if fit is not None else None
      if v is None or tuple(v.shape) != want:
        shape_errors.append((k, got, want))
        continue
    todo.append((col, path, v, target.dtype))
  unexpected = [k for k in sd if k not in used]
  if missing or unexpected or shape_errors:
    raise error(missing, unexpected, shape_errors)
  out: Dict[str, Dict[Path, np.ndarray]] = {}
  for col, path, v, dtype in todo:
    out.setdefault(col, {})[path] = np.array(torch_to_flax(path, v), dtype=dtype, order='C')
  return {col: traverse_util.unflatten_dict(flat) for col, flat in out.items()}


# ---------------------------------------------------------------------------------------------
# Diagnostics: what does the checkpoint look like, and how to fix a mismatch.


def key_indices(keys, pattern: str) -> set:
  """The integers that ``pattern``'s first group matches at the start of ``keys``, e.g. the
  block indices of ``r'blocks\\.(\\d+)\\.'``."""
  return {int(m.group(1)) for k in keys for m in [re.match(pattern, k)] if m}


def model_value(model: nn.Module, field: str):
  """``model.<field>`` as ``infer_*_config`` reports it: a sequence as a tuple, a square
  ``patch_size`` as one int."""
  v = getattr(model, field)
  if field == 'patch_size':
    a, b = to_2tuple(v)
    return a if a == b else (a, b)
  return tuple(v) if isinstance(v, (list, tuple)) else v


def config_diffs(model: nn.Module, cfg: Mapping[str, Any],
                 fields: Sequence[str]) -> Dict[str, Any]:
  """{field: checkpoint value} of the ``fields`` (in that order) where ``cfg`` and
  ``model`` differ; fields ``cfg`` lacks (unreadable from the checkpoint) count as equal."""
  return {k: cfg[k] for k in fields if k in cfg and model_value(model, k) != cfg[k]}


def matching_model_names(family: str, cfg: Mapping[str, Any], fields: Sequence[str],
                         prefer: Optional[Callable[[nn.Module], bool]] = None) -> List[str]:
  """Registered ``family`` names whose defaults agree with ``cfg`` on ``fields``.

  With ``prefer``, only the preferred models among them where there are any (Swin: those of
  the checkpoint's window).
  """
  preferred, others = [], []
  for name in list_models(family):
    m = create_model(name)
    if not config_diffs(m, cfg, fields):
      (preferred if prefer is None or prefer(m) else others).append(name)
  return preferred or others


def overrides_fix(diffs: Mapping[str, Any], notes: Optional[Mapping[str, str]] = None) -> str:
  """'pass the model overrides k=v, ...', plus ``notes[k]`` for each differing field k."""
  fix = 'pass the model overrides ' + ', '.join(f'{k}={v!r}' for k, v in diffs.items())
  return fix + ''.join(note for k, note in (notes or {}).items() if k in diffs)


def arch_fix(name: str, model: nn.Module, cfg: Mapping[str, Any], family: str,
             fields: Sequence[str], notes: Optional[Mapping[str, str]] = None,
             prefer: Optional[Callable[[nn.Module], bool]] = None) -> Optional[str]:
  """The fix for a checkpoint of another architecture: the registered names that fit it
  (other than ``name``), else the overrides; None when ``fields`` agree."""
  diffs = config_diffs(model, cfg, fields)
  if not diffs:
    return None
  fix = overrides_fix(diffs, notes)
  names = [n for n in matching_model_names(family, cfg, fields, prefer) if n != name]
  if names:
    fix = (f'this looks like a checkpoint of {" or ".join(repr(n) for n in names)}: use '
           f'that model name, or {fix}')
  return fix


def head_fix(n_ckpt: int, n_model: int, drop_head: bool,
             more: Sequence[str] = ()) -> Optional[str]:
  """The fix for a classifier of another size (None if the sizes agree or the head is
  dropped): load it with ``num_classes=``, drop it, or one of the family's ``more`` ways."""
  if n_ckpt == n_model or drop_head:
    return None
  ways = [f'pass num_classes={n_ckpt} to load the head' + (' as it is' if more else ''),
          'drop_head=True to leave the head out of the loaded params (keep your own '
          'initialised head, e.g. for fine-tuning)', *more]
  return (f'the checkpoint head has {n_ckpt} classes, the model {n_model}: '
          f'{", ".join(ways[:-1])}, or {ways[-1]}')


def _fmt_keys(keys: Sequence[str]) -> str:
  shown = ', '.join(keys[:_MAX_LISTED])
  more = f', ... ({len(keys)} in all)' if len(keys) > _MAX_LISTED else ''
  return shown + more


def mismatch_error(header: str, missing: Sequence[str], unexpected: Sequence[str],
                   shape_errors: Sequence[ShapeError], *, order: Callable[[str], Any],
                   cfg: Mapping[str, Any], fixes: Sequence[Optional[str]], fallback: str,
                   show: Callable[[str], str] = lambda k: k) -> ValueError:
  """The error for a checkpoint that does not fit the model.

  Args:
    header: the first line (names the model and the checkpoint's layout).
    missing / unexpected / shape_errors: from ``map_state_dict``; listed in the model's
      order (``order``: key -> sort key) and shown with ``show`` (e.g. in the checkpoint's
      own layout), the first few of each.
    cfg: what the checkpoint looks like (``infer_*_config``).
    fixes: 'Fix:' lines (None entries skipped); ``fallback`` where there are none.
  """
  lines = [header]
  for what, keys in (('missing in', missing), ('unexpected in', unexpected)):
    if keys:
      shown = [show(k) for k in sorted(keys, key=order)]
      lines.append(f'  {what} checkpoint: {_fmt_keys(shown)}')
  if shape_errors:
    shown = [f'{show(k)} checkpoint {c} vs model {m}'
             for k, c, m in sorted(shape_errors, key=lambda e: order(e[0]))]
    lines.append(f'  shape mismatch: {_fmt_keys(shown)}')
  lines.append('The checkpoint looks like: ' + ', '.join(f'{k}={v!r}' for k, v in cfg.items()))
  lines += [f'Fix: {f}.' for f in [f for f in fixes if f] or [fallback]]
  return ValueError('\n'.join(lines))
