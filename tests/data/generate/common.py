"""What the golden generators share: the weight-randomisation rule, the inputs, importing the
official code from a clone, and writing the files.

Every generator overwrites a PyTorch model's tensors with the same rule (tests/data/README.md,
"Weights"), draws its inputs with numpy, runs the reference code on CPU in float32 and writes
into --out; `compare.py` then checks the files against the committed ones.
"""
import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import math
import os
import subprocess
import sys
import types

import numpy as np
import torch


def parse_flags(doc, repo_flag=None, repo=None, marker=None, commit=None):
  """--out, and --<repo_flag>: the path of a copy of `repo`, checked with check_clone."""
  parser = argparse.ArgumentParser(description=doc.split('\n', 1)[0])
  if repo_flag:
    parser.add_argument(f'--{repo_flag}', required=True, help=f'copy of {repo} at {commit}')
  parser.add_argument('--out', required=True,
                      help='directory for the regenerated files (created; never tests/data)')
  args = parser.parse_args()
  if repo_flag:
    check_clone(getattr(args, repo_flag), marker, commit)
  return args


def out_path(out, name):
  os.makedirs(out, exist_ok=True)
  return os.path.join(out, name)


def check_clone(path, marker, commit):
  """Exits unless `path/marker` exists; warns when `path` is a git checkout of another commit.

  (A `git archive` export has no .git and is taken as it is.)
  """
  if not os.path.isfile(os.path.join(path, marker)):
    sys.exit(f'{path!r} is not a clone with {marker} (see tests/data/README.md)')
  if not os.path.exists(os.path.join(path, '.git')):
    return
  try:
    head = subprocess.run(['git', '-C', path, 'rev-parse', 'HEAD'], capture_output=True,
                          text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return
  if not head.startswith(commit):
    print(f'warning: {path} is at {head[:7]}, the goldens were made at {commit}',
          file=sys.stderr)


def load_module(name, path):
  """Imports the file `path` as a top-level module `name`, no package __init__ run."""
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def _placeholder_attribute(owner, name, module):
  if name.startswith('__'):
    raise AttributeError(name)
  value = _Placeholder(name, (), {'__module__': module})
  setattr(owner, name, value)
  return value


class _Placeholder(type):
  """A class whose every attribute is another placeholder class (InterpolationMode.BICUBIC)."""

  def __getattr__(cls, name):
    return _placeholder_attribute(cls, name, cls.__module__)


class _PlaceholderModule(types.ModuleType):

  def __getattr__(self, name):
    return _placeholder_attribute(self, name, self.__name__)


class _PlaceholderTorchvision(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Serves torchvision and its submodules as placeholder modules."""

  def find_spec(self, fullname, path=None, target=None):
    if fullname == 'torchvision' or fullname.startswith('torchvision.'):
      return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
    return None

  def create_module(self, spec):
    return _PlaceholderModule(spec.name)

  def exec_module(self, module):
    module.__path__ = []


def import_timm():
  """Imports timm, with a placeholder torchvision where the real one does not import.

  timm's data package imports torchvision (transforms, datasets, FrozenBatchNorm2d) when timm
  is imported; no generator uses timm.data, and the models and layers they use (ViT, Swin,
  DropPath, trunc_normal_, the checkpoint filters) need no torchvision. A CPU-only torch has
  no torchvision wheel to match on PyPI (the CUDA one fails to load its ops), hence this.
  """
  try:
    import torchvision  # pylint: disable=g-import-not-at-top,unused-import
  except Exception:  # pylint: disable=broad-except  # ImportError, or a build for another torch
    for name in [n for n in sys.modules if n == 'torchvision' or n.startswith('torchvision.')]:
      del sys.modules[name]
    sys.meta_path.insert(0, _PlaceholderTorchvision())
    print('note: torchvision does not import here; timm gets a placeholder (timm.data unused)',
          file=sys.stderr)
  import timm  # pylint: disable=g-import-not-at-top
  if timm.__version__ != '1.0.31':
    print(f'warning: timm {timm.__version__}, the goldens were made with 1.0.31',
          file=sys.stderr)
  return timm


def nhwc_normal(seed, nchw):
  """(NCHW float32 array, its NHWC copy): default_rng(seed) standard normal drawn NCHW."""
  x = np.random.default_rng(seed).standard_normal(nchw).astype(np.float32)
  return x, np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def norm_weights(model, kinds=(torch.nn.LayerNorm,)):
  """Names of the `.weight` of every module of `kinds` in `model` (they get 1 + 0.5 randn)."""
  return {f'{name}.weight' for name, m in model.named_modules() if isinstance(m, kinds)}


@torch.no_grad()
def randomize_(named_tensors, seed, norm_weight_names,
               unit_scale=('relative_position_bias_table',)):
  """Overwrites the tensors in place, in the given order, from torch.Generator(seed).

  Each float tensor takes one torch.randn draw of its shape, scaled by 1/sqrt(t[0].numel())
  for rank > 1 (the fan-in of Linear and Conv weights), 1.0 for the names ending in one of
  `unit_scale`, 0.5 for vectors; norm weights are 1 + 0.5 * randn. BatchNorm buffers (only
  when `named_tensors` is a state_dict): running_mean 0.5 * randn, running_var 0.5 + rand,
  num_batches_tracked 7 (no draw).
  """
  g = torch.Generator().manual_seed(seed)
  for name, t in named_tensors:
    leaf = name.rsplit('.', 1)[-1]
    if leaf == 'num_batches_tracked':
      t.fill_(7)
      continue
    if leaf == 'running_var':
      t.copy_(0.5 + torch.rand(t.shape, generator=g))
      continue
    r = torch.randn(t.shape, generator=g)
    if name in norm_weight_names:
      t.copy_(1 + 0.5 * r)
    elif leaf in unit_scale:
      t.copy_(r)
    elif t.ndim > 1:
      t.copy_(r * (1 / math.sqrt(t[0].numel())))  # float32 r times a Python float
    else:
      t.copy_(0.5 * r)


@torch.no_grad()
def logits(model, x_nchw):
  """Eval-mode model(x) as a float32 numpy array."""
  model.eval()
  return model(torch.from_numpy(x_nchw)).numpy()


def save_safetensors(state_dict, path):
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  save_file({k: v.detach().contiguous() for k, v in state_dict.items()}, path)
  print('wrote', path)


def save_npz(path, arrays, compressed=False):
  (np.savez_compressed if compressed else np.savez)(path, **arrays)
  print('wrote', path)
