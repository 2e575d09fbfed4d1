"""swin_jax.convert for Shunted: the official release layout against goldens of the official
code (OliverRensu/Shunted-Transformer SSA.py; how they were made: tests/data/README.md).

Needs neither the official code nor timm; torch only for the .pth check.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from swin_jax.convert import CONVERTERS, load_torch_checkpoint, read_state_dict
from swin_jax.convert import shunted as shunted_convert
from swin_jax.models import create_model

DATA = os.path.join(os.path.dirname(__file__), 'data')
CKPT = os.path.join(DATA, 'shunted_official_tiny.safetensors')
# The official ShuntedTransformer the goldens were made with, as shunted_t overrides: the
# stem with one extra 3x3 block (BatchNorms conv.1 and conv.4), sr 2 / 8 / 4 / 1 (every
# attention branch and kernel), two blocks in stages 3 and 4.
CFG = dict(img_size=64, num_classes=10, embed_dims=(64, 8, 8, 16), num_heads=(2, 2, 2, 4),
           mlp_ratios=(1, 2, 2, 2), depths=(1, 1, 2, 2), sr_ratios=(2, 8, 4, 1), num_conv=1,
           drop_path_rate=0.0)


@pytest.fixture(scope='module')
def gold():
  with np.load(os.path.join(DATA, 'shunted_goldens.npz')) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope='module')
def variables():
  return load_torch_checkpoint('shunted_t', CKPT, **CFG)


def _rel_err(out, ref):
  out = np.asarray(out, np.float64)
  return float(np.abs(out - ref).max() / np.abs(ref).max())


def _flat(tree):
  return traverse_util.flatten_dict(tree)


def test_registered():
  assert CONVERTERS['shunted'] is shunted_convert.convert_shunted


def test_variables_have_init_structure(variables):
  model = create_model('shunted_t', **CFG)
  want = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x),
                        jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  assert sorted(variables) == ['batch_stats', 'params']
  for col in ('params', 'batch_stats'):
    got = {p: (a.shape, a.dtype) for p, a in _flat(variables[col]).items()}
    assert got == {p: (tuple(s.shape), s.dtype) for p, s in _flat(want[col]).items()}
  sd = read_state_dict(CKPT)
  np.testing.assert_array_equal(variables['batch_stats']['patch_embed1']['conv_4']['var'],
                                sd['patch_embed1.conv.4.running_var'].astype(np.float32))
  np.testing.assert_array_equal(variables['params']['block1_0']['attn']['kv1']['kernel'],
                                sd['block1.0.attn.kv1.weight'].astype(np.float32).T)


def test_logits_and_features_equal_official(variables, gold):
  model = create_model('shunted_t', **CFG)
  apply = jax.jit(lambda v, x: (model.apply(v, x), model.apply(v, x, return_features=True)))
  logits, feats = apply(variables, gold['x'])
  assert _rel_err(logits, gold['logits']) <= 1e-4
  for i, f in enumerate(feats):
    assert f.shape[1] * f.shape[2] == int(gold[f'feature_tokens{i + 1}'])
    assert _rel_err(f.mean((1, 2)), gold[f'feature_mean{i + 1}']) <= 1e-4, i


def test_train_mode_batchnorm_equals_official(variables, gold):
  """Batch statistics in training; the running averages move with torch's momentum 0.1.

  torch updates running_var with the unbiased batch variance (x n/(n-1)), flax's BatchNorm
  with the biased one: with n = 2 x 32 x 32 values per channel here that is a 5e-4 relative
  difference of the update (1e-7 of the whole at ImageNet sizes); undone exactly below.
  """
  model = create_model('shunted_t', **CFG)
  out, new = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
      variables, gold['x'])
  assert _rel_err(out, gold['logits_train']) <= 1e-4
  n = 2 * 32 * 32
  for idx in (1, 4):
    old = variables['batch_stats']['patch_embed1'][f'conv_{idx}']
    got = new['batch_stats']['patch_embed1'][f'conv_{idx}']
    np.testing.assert_allclose(got['mean'], gold[f'bn{idx}_running_mean'], rtol=1e-5, atol=1e-6)
    torch_batch_var = (gold[f'bn{idx}_running_var'] - 0.9 * old['var']) / 0.1  # unbiased
    want = 0.9 * old['var'] + 0.1 * torch_batch_var * (n - 1) / n
    np.testing.assert_allclose(got['var'], want, rtol=1e-5)


def test_wrapped_and_pth_checkpoints(variables, tmp_path):
  torch = pytest.importorskip('torch')
  sd = read_state_dict(CKPT)
  model = create_model('shunted_t', **CFG)
  wrapped = shunted_convert.convert_shunted({'model': sd}, model)
  jax.tree.map(np.testing.assert_array_equal, wrapped, variables)
  path = str(tmp_path / 'ckpt.pth')
  torch.save({'model': {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()},
              'epoch': 3}, path)
  jax.tree.map(np.testing.assert_array_equal, load_torch_checkpoint('shunted_t', path, **CFG),
               variables)


def test_round_trip_to_official_layout(variables):
  sd = read_state_dict(CKPT)
  back = shunted_convert.shunted_variables_to_torch(variables)
  assert sorted(back) == sorted(k for k in sd if not k.endswith('num_batches_tracked'))
  for k, v in back.items():
    np.testing.assert_array_equal(v, sd[k].astype(np.float32), err_msg=k)


def test_head_mismatch_and_drop_head(variables):
  with pytest.raises(ValueError, match=r'head\.weight checkpoint \(10, 16\) vs model \(5, 16\)'
                     r'[\s\S]*num_classes=10[\s\S]*drop_head=True'):
    load_torch_checkpoint('shunted_t', CKPT, **dict(CFG, num_classes=5))
  loaded = load_torch_checkpoint('shunted_t', CKPT, drop_head=True, **dict(CFG, num_classes=5))
  assert 'head' not in loaded['params']
  assert sorted(loaded['batch_stats']) == ['patch_embed1']


def _zeros_state_dict(name):
  """An official-layout state_dict of ``name`` (zeros), without materialising the model."""
  m = create_model(name)
  shapes = jax.eval_shape(lambda x: m.init(jax.random.PRNGKey(0), x),
                          jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)
  return shunted_convert.shunted_variables_to_torch(zeros)


def test_checkpoint_of_another_variant_names_it():
  sd = _zeros_state_dict('shunted_s')
  with pytest.raises(ValueError) as e:
    load_torch_checkpoint('shunted_t', sd)
  msg = str(e.value)
  assert "does not fit model 'shunted_t'" in msg
  # shunted_s has a 3x3 block (conv.3, no bias) where shunted_t has its 2x2 conv (conv.3).
  assert 'missing in checkpoint: patch_embed1.conv.3.bias' in msg
  assert 'unexpected in checkpoint: patch_embed1.conv.4.bias' in msg
  assert ('shape mismatch: patch_embed1.conv.3.weight checkpoint (64, 64, 3, 3) vs model '
          '(64, 64, 2, 2)') in msg
  assert "this looks like a checkpoint of 'shunted_s'" in msg
  assert 'depths=(2, 4, 12, 1)' in msg and 'num_conv=1' in msg
  cfg = shunted_convert.infer_shunted_config(sd)
  assert cfg == dict(in_chans=3, num_conv=1, embed_dims=(64, 128, 256, 512),
                     depths=(2, 4, 12, 1), mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1),
                     qkv_bias=True, num_classes=1000)
