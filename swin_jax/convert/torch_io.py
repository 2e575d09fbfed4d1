"""Reading PyTorch-style state_dicts (files or in-memory dicts) into flat NumPy dicts.

torch is optional: it is imported only for ``.pth``/``.pt``/``.bin``/``.ckpt`` files or when
the given dict holds torch tensors. ``.safetensors`` files are read with ``safetensors``
(NumPy; bfloat16 tensors through its Flax reader, then cast to float32).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Union

import numpy as np

StateDict = Dict[str, np.ndarray]
Source = Union[str, os.PathLike, Mapping[str, Any]]

TORCH_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt')
SAFETENSORS_SUFFIXES = ('.safetensors',)
# Keys under which training scripts (timm, DeiT, MMCV, Lightning) nest the weights.
WRAPPER_KEYS = ('model', 'state_dict')


def _import_torch(why: str):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f'{why} needs PyTorch, which is not installed. Install torch (CPU build is enough), '
        f'or convert the checkpoint to .safetensors elsewhere and load that.') from e
  return torch


def require_file(path: Union[str, os.PathLike], what: str = 'checkpoint file') -> str:
  """``path`` as a str, or FileNotFoundError naming it (and the cwd a relative path is from)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{what} not found: {path!r} (cwd: {os.getcwd()})')
  return path


def _is_torch_tensor(v) -> bool:
  mod = type(v).__module__
  return mod.startswith('torch') and hasattr(v, 'detach')


def to_numpy(v) -> np.ndarray:
  """A torch tensor / jax array / array-like -> np.ndarray (bfloat16 -> float32)."""
  if _is_torch_tensor(v):
    torch = _import_torch('reading torch tensors')
    v = v.detach().cpu()
    if v.dtype == torch.bfloat16:
      v = v.float()
    return v.numpy()
  a = np.asarray(v)
  if a.dtype.name == 'bfloat16':  # ml_dtypes bfloat16 from jax / safetensors.flax
    a = a.astype(np.float32)
  return a


def _is_array(v) -> bool:
  return isinstance(v, np.ndarray) or _is_torch_tensor(v) or (
      hasattr(v, 'shape') and hasattr(v, 'dtype') and not isinstance(v, Mapping))


def unwrap_state_dict(sd: Mapping[str, Any]) -> Mapping[str, Any]:
  """Returns the weights of a checkpoint that nests them under 'model' or 'state_dict'.

  Nesting is unwrapped repeatedly (e.g. Lightning's {'state_dict': {...}}) and a common
  'module.' prefix (DistributedDataParallel) is stripped.
  """
  while True:
    for key in WRAPPER_KEYS:
      if key in sd and isinstance(sd[key], Mapping):
        sd = sd[key]
        break
    else:
      break
  keys = list(sd)
  if keys and all(isinstance(k, str) and k.startswith('module.') for k in keys):
    sd = {k[len('module.'):]: v for k, v in sd.items()}
  return sd


def _load_safetensors(path: str) -> Dict[str, Any]:
  import safetensors  # pylint: disable=g-import-not-at-top
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  try:
    try:
      return dict(safetensors.numpy.load_file(path))
    except TypeError:
      # NumPy has no bfloat16: read through the Flax (jax/ml_dtypes) backend instead.
      import safetensors.flax  # pylint: disable=g-import-not-at-top
      return dict(safetensors.flax.load_file(path))
  except safetensors.SafetensorError as e:  # e.g. 'incomplete metadata, file not fully covered'
    raise ValueError(f'{path} is not a readable .safetensors file ({e}): it is truncated or '
                     f'damaged; download or convert it again.') from None


def _load_torch_file(path: str) -> Any:
  torch = _import_torch(f'reading {path}')
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pickle.UnpicklingError, or RuntimeError wrapping it
    if 'weights_only' not in str(e) and 'Unpickl' not in type(e).__name__:
      if isinstance(e, (RuntimeError, EOFError)):  # e.g. 'failed finding central directory'
        raise ValueError(f'{path} is not a readable PyTorch checkpoint ({str(e).split(". ")[0]}'
                         f'): it is truncated or damaged; download it again.') from None
      raise
    raise ValueError(
        f'{path} holds pickled Python objects besides tensors (e.g. an argparse Namespace '
        f'under "args"), which torch.load(weights_only=True) refuses. If you trust the file, '
        f'load it yourself with torch.load(path, map_location="cpu", weights_only=False) and '
        f'pass the resulting dict (or its ["model"]) as the source.') from e


def read_state_dict(source: Source) -> StateDict:
  """Reads a checkpoint into {key: np.ndarray}.

  Args:
    source: a path to a ``.pth``/``.pt``/``.bin``/``.ckpt`` (torch.load, weights only) or
      ``.safetensors`` file, or an in-memory state_dict (values: numpy arrays, torch tensors
      or jax arrays). Weights nested under 'model' / 'state_dict' are unwrapped; a 'module.'
      prefix is stripped.

  Returns:
    A flat dict of NumPy arrays (bfloat16 converted to float32); non-array entries dropped.

  Raises:
    FileNotFoundError: the path does not exist.
    ValueError: unsupported file type or not a state_dict.
  """
  if isinstance(source, (str, os.PathLike)):
    path = require_file(source)
    suffix = os.path.splitext(path)[1].lower()
    if suffix in SAFETENSORS_SUFFIXES:
      raw = _load_safetensors(path)
    elif suffix in TORCH_SUFFIXES:
      raw = _load_torch_file(path)
    elif suffix == '.npz':
      raise ValueError(f'{path} is a .npz file: original JAX ViT checkpoints load with '
                       f'swin_jax.convert.load_vit_npz(name, path).')
    else:
      raise ValueError(f'{path}: unsupported checkpoint suffix {suffix!r}; expected one of '
                       f'{TORCH_SUFFIXES + SAFETENSORS_SUFFIXES}.')
  else:
    raw = source
  if not isinstance(raw, Mapping):
    raise ValueError(f'expected a state_dict (a mapping of name -> tensor), got '
                     f'{type(raw).__name__}')
  sd = unwrap_state_dict(raw)
  out = {str(k): to_numpy(v) for k, v in sd.items() if _is_array(v)}
  if not out:
    raise ValueError(f'no tensors found in the checkpoint; its top-level keys are '
                     f'{list(raw)[:10]}')
  return out
