"""Every config file loads, its variants resolve, and its model and fields are valid."""
import glob
import os

import pytest

from conftest import ROOT, load_config

CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'), recursive=True)
                 if not os.path.basename(p).startswith('_') and os.path.basename(p) != 'common.py')


def _variants(path):
  if path.endswith('deit_i1k.py'):
    return ['Ti/16', 'S/16', 'B/16']
  if path.endswith('vit_digits.py') or path.endswith('swin_digits.py'):
    return [None, 'quick']
  if path.endswith('swin_i1k.py'):
    return ['T', 'S', 'B', 'B-384-ft', 'B-22k-ft', 'B-384-22k-ft', 'L-22k-ft', 'L-384-22k-ft']
  if path.endswith('shunted_i1k.py'):
    return ['T', 'S', 'B']
  if path.endswith('shunted_digits.py'):
    return [None, 'quick']
  return [None]


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_loads_and_builds_model(path):
  from swin_jax.train import loop
  for arg in _variants(path):
    c = load_config(os.path.relpath(path, ROOT), arg)
    model = loop.model_from_config(c)
    assert model.num_classes == c.input.num_classes
    assert c.batch_size % 8 == 0  # splits over 8 devices and typical TPU slices
    assert c.input.image_size == model.img_size
  with pytest.raises(ValueError, match='unknown variant'):
    load_config(os.path.relpath(path, ROOT), 'no-such-variant')


def test_common_defaults_are_complete():
  c = load_config('configs/common.py')
  for field in ('seed', 'input', 'model', 'batch_size', 'optimizer', 'schedule', 'checkpoint',
                'init_from', 'sharding', 'distributed'):
    assert field in c
