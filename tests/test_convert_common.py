"""swin_jax.convert.common: the core every family converter maps through, on hand-made
targets (no model is built, so this runs in well under a second)."""
import jax
import numpy as np
import pytest

from swin_jax.convert import common


def _targets(**shapes):
  """{('params', path): ShapeDtypeStruct} from keyword 'a/b/kernel'-style names ('__' = '/')."""
  return {('params', tuple(k.split('__'))): jax.ShapeDtypeStruct(s, np.float32)
          for k, s in shapes.items()}


def test_torch_key_splits_only_indexed_modules():
  path = ('layers_0', 'blocks_1', 'attn', 'qkv', 'kernel')
  assert common.torch_key(path, 'layers|blocks') == 'layers.0.blocks.1.attn.qkv.weight'
  assert common.torch_key(path, 'blocks') == 'layers_0.blocks.1.attn.qkv.weight'
  assert common.torch_key(('norm', 'scale'), 'blocks') == 'norm.weight'
  assert common.torch_key(('cls_token',), 'blocks') == 'cls_token'  # top-level leaf kept
  assert common.torch_key(('pre_logits', 'bias'), 'blocks',
                          modules={'pre_logits': 'pre_logits.fc'}) == 'pre_logits.fc.bias'


def test_map_state_dict_transposes_and_round_trips():
  targets = _targets(conv__kernel=(3, 3, 2, 4), fc__kernel=(4, 5), fc__bias=(5,))
  rng = np.random.default_rng(0)
  sd = {'conv.weight': rng.normal(size=(4, 2, 3, 3)), 'fc.weight': rng.normal(size=(5, 4)),
        'fc.bias': rng.normal(size=(5,))}
  key = lambda _, path: common.torch_key(path, 'blocks')
  out = common.map_state_dict(sd, targets, key, error=AssertionError)
  kernel = out['params']['fc']['kernel']
  assert kernel.dtype == np.float32 and kernel.flags['C_CONTIGUOUS']
  np.testing.assert_allclose(kernel, sd['fc.weight'].T.astype(np.float32))
  back = common.to_state_dict(out, key)
  assert sorted(back) == sorted(sd)
  for k, v in sd.items():
    np.testing.assert_allclose(back[k], v.astype(np.float32))


def test_map_state_dict_fits_only_on_mismatch_and_reports_in_torch_layout():
  targets = _targets(table=(9, 2), fc__kernel=(4, 5))
  calls = []

  def fit(path, v, want):
    calls.append(path)
    return np.zeros(want) if path == ('table',) else None

  sd = {'table': np.ones((25, 2)), 'fc.weight': np.ones((5, 3)), 'extra': np.ones(1)}
  seen = {}

  def error(missing, unexpected, shape_errors):
    seen.update(missing=missing, unexpected=unexpected, shape_errors=shape_errors)
    return ValueError('does not fit')

  key = lambda _, path: common.torch_key(path, 'blocks')
  with pytest.raises(ValueError, match='does not fit'):
    common.map_state_dict(sd, targets, key, error=error, fit=fit)
  assert calls == [('table',), ('fc', 'kernel')]
  assert seen == dict(missing=[], unexpected=['extra'],
                      shape_errors=[('fc.weight', (5, 3), (5, 4))])
  del sd['extra'], sd['fc.weight']
  sd['fc.weight'] = np.ones((5, 4))
  out = common.map_state_dict(sd, targets, key, error=error, fit=fit)
  assert out['params']['table'].shape == (9, 2)


def test_mismatch_error_lists_keys_in_model_order_and_falls_back():
  order = lambda k: int(k.split('.')[1])
  err = common.mismatch_error(
      'header:', [f'b.{i}' for i in range(7, 0, -1)], [], [('b.9', (2,), (3,))], order=order,
      cfg={'depth': 2}, fixes=[None], fallback='check it')
  assert str(err).splitlines() == [
      'header:', '  missing in checkpoint: b.1, b.2, b.3, b.4, b.5, ... (7 in all)',
      '  shape mismatch: b.9 checkpoint (2,) vs model (3,)',
      'The checkpoint looks like: depth=2', 'Fix: check it.']
  assert common.head_fix(10, 10, drop_head=False) is None
  assert common.head_fix(10, 5, drop_head=True) is None
  assert common.head_fix(10, 5, drop_head=False, more=('c',)).endswith(
      'to load the head as it is, drop_head=True to leave the head out of the loaded params '
      '(keep your own initialised head, e.g. for fine-tuning), or c')
