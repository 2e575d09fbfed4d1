"""swin_jax.convert for ViT: timm state_dicts and original-JAX .npz files against timm goldens.

The goldens in tests/data/ were made with real timm from random-weight models (see
tests/data/README.md); these tests need no timm, only torch for the .pth / interpolate checks.
"""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from swin_jax.convert import (load_torch_checkpoint, load_vit_npz, read_state_dict,
                              resample_pos_embed, torch_bicubic_resize, torch_resize)
from swin_jax.convert import vit as vit_convert
from swin_jax.models import create_model

DATA = os.path.join(os.path.dirname(__file__), 'data')
# The timm VisionTransformer the goldens were made with, as vit_demo overrides.
CFG = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=4.0,
           num_classes=10)
POOL = {'token': {}, 'avg': {'global_pool': 'avg'}}


@pytest.fixture(scope='module')
def gold():
  with np.load(os.path.join(DATA, 'vit_goldens.npz')) as f:
    return {k: f[k] for k in f.files}


def _ckpt(pool):
  return os.path.join(DATA, f'timm_vit_{pool}.safetensors')


def _rel_err(out, ref):
  out = np.asarray(out, np.float64)
  return float(np.abs(out - ref).max() / np.abs(ref).max())


_APPLY = {}


def _logits(variables, x, **overrides):
  """vit_demo(**overrides) logits, one jitted apply per config (faster than op-by-op)."""
  key = tuple(sorted(overrides.items()))
  if key not in _APPLY:
    _APPLY[key] = jax.jit(create_model('vit_demo', **overrides).apply)
  return _APPLY[key](variables, x)


def _assert_like_init(params, model):
  """params has exactly the tree structure, shapes and dtypes of model.init(...)['params']."""
  want = {p: (tuple(s.shape), s.dtype) for p, s in vit_convert.param_shapes(model).items()}
  got = {p: (a.shape, a.dtype) for p, a in traverse_util.flatten_dict(params).items()}
  assert got == want


# ---------------------------------------------------------------------------------------------
# timm state_dicts.


@pytest.mark.parametrize('pool', ['token', 'avg'])
def test_safetensors_matches_timm(gold, pool):
  variables = load_torch_checkpoint('vit_demo', _ckpt(pool), **CFG, **POOL[pool])
  _assert_like_init(variables['params'], create_model('vit_demo', **CFG, **POOL[pool]))
  err = _rel_err(_logits(variables, gold['x32'], **CFG, **POOL[pool]), gold[f'logits_{pool}'])
  assert err <= 1e-4, err


@pytest.mark.parametrize('wrap', [None, 'model', 'state_dict'])
def test_pth_matches_timm(gold, tmp_path, wrap):
  torch = pytest.importorskip('torch')
  from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
  sd = load_file(_ckpt('token'))
  obj = sd if wrap is None else {wrap: sd, 'epoch': 3}
  path = tmp_path / 'vit.pth'
  torch.save(obj, path)
  variables = load_torch_checkpoint('vit_demo', str(path), **CFG)
  err = _rel_err(_logits(variables, gold['x32'], **CFG), gold['logits_token'])
  assert err <= 1e-4, err


def test_pth_with_pickled_objects_explains_weights_only(tmp_path):
  torch = pytest.importorskip('torch')
  import argparse  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'deit_style.pth'
  torch.save({'model': {'cls_token': torch.zeros(1, 1, 32)}, 'args': argparse.Namespace(a=1)},
             path)
  with pytest.raises(ValueError, match='weights_only=False'):
    load_torch_checkpoint('vit_demo', str(path), **CFG)


def test_in_memory_state_dicts(gold):
  torch = pytest.importorskip('torch')
  sd = read_state_dict(_ckpt('token'))
  assert all(isinstance(v, np.ndarray) for v in sd.values())
  for source in (sd, {'model': {k: torch.from_numpy(v) for k, v in sd.items()}},
                 {f'module.{k}': v for k, v in sd.items()}):  # DDP prefix
    variables = load_torch_checkpoint('vit_demo', source, **CFG)
    assert _rel_err(_logits(variables, gold['x32'], **CFG), gold['logits_token']) <= 1e-4


def test_bfloat16_torch_tensors_load_as_float32():
  torch = pytest.importorskip('torch')
  sd = {k: torch.from_numpy(v).bfloat16() for k, v in read_state_dict(_ckpt('token')).items()}
  params = load_torch_checkpoint('vit_demo', sd, **CFG)['params']
  assert params['blocks_0']['attn']['qkv']['kernel'].dtype == np.float32


def test_safetensors_needs_no_torch():
  code = ('import sys; from swin_jax.convert import load_torch_checkpoint; '
          f'load_torch_checkpoint("vit_demo", {_ckpt("token")!r}, **{CFG!r}); '
          'assert "torch" not in sys.modules, "torch was imported"')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  subprocess.run([sys.executable, '-c', code], check=True, env=env,
                 cwd=os.path.dirname(DATA) + '/..')


def test_roundtrip_to_timm_layout():
  sd = read_state_dict(_ckpt('avg'))
  params = load_torch_checkpoint('vit_demo', sd, **CFG, global_pool='avg')['params']
  back = vit_convert.vit_params_to_timm(params)
  assert sorted(back) == sorted(sd)
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k])


# ---------------------------------------------------------------------------------------------
# Position embedding resampling.


@pytest.mark.parametrize('pool', ['token', 'avg'])
def test_pos_embed_resampled_to_larger_model(gold, pool):
  """A 32x32 (4x4 grid) checkpoint into a 48x48 (6x6 grid) model: same as timm's load."""
  overrides = dict(CFG, img_size=48, **POOL[pool])
  variables = load_torch_checkpoint('vit_demo', _ckpt(pool), **overrides)
  pos = variables['params']['pos_embed']
  ckpt_pos = read_state_dict(_ckpt(pool))['pos_embed']
  assert pos.shape == (1, 1 + 36, 32)
  np.testing.assert_array_equal(pos[:, 0], ckpt_pos[:, 0])  # class-token slot kept
  np.testing.assert_allclose(pos, gold[f'pos_embed48_{pool}'], rtol=0, atol=1e-6)
  err = _rel_err(_logits(variables, gold['x48'], **overrides), gold[f'logits48_{pool}'])
  assert err <= 1e-4, err


def test_resample_pos_embed_equals_torch_interpolate():
  torch = pytest.importorskip('torch')
  F = torch.nn.functional
  rng = np.random.default_rng(0)
  posemb = rng.standard_normal((1, 1 + 7 * 7, 16)).astype(np.float32)
  for new_hw, antialias in (((10, 12), False), ((4, 5), False), ((10, 12), True), ((3, 3), True)):
    out = resample_pos_embed(posemb, new_hw, antialias=antialias)
    grid = torch.from_numpy(posemb[:, 1:]).reshape(1, 7, 7, 16).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=new_hw, mode='bicubic', align_corners=False,
                        antialias=antialias).permute(0, 2, 3, 1).reshape(1, -1, 16).numpy()
    np.testing.assert_array_equal(out[:, :1], posemb[:, :1])
    np.testing.assert_allclose(out[:, 1:], ref, rtol=0, atol=1e-5)
  assert resample_pos_embed(posemb, (7, 7)) is posemb


@pytest.mark.parametrize('mode', ['bicubic', 'bilinear'])
@pytest.mark.parametrize('antialias', [False, True])
def test_resize_equals_torch_interpolate(mode, antialias):
  torch = pytest.importorskip('torch')
  F = torch.nn.functional
  rng = np.random.default_rng(1)
  for (h, w), (oh, ow) in [((4, 4), (6, 6)), ((14, 14), (24, 24)), ((24, 24), (14, 14)),
                           ((7, 5), (12, 3)), ((16, 9), (5, 20)), ((1, 3), (4, 1)),
                           ((3, 3), (3, 3)), ((13, 7), (1, 1))]:
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x), size=(oh, ow), mode=mode, align_corners=False,
                        antialias=antialias).numpy()
    out = torch_resize(x, (oh, ow), mode, antialias)
    assert out.shape == ref.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5, err_msg=f'{(h, w)}->{(oh, ow)}')
    if mode == 'bicubic':
      np.testing.assert_array_equal(torch_bicubic_resize(x, (oh, ow), antialias), out)


# ---------------------------------------------------------------------------------------------
# Original JAX ViT .npz.


def test_npz_matches_timm(gold):
  variables = load_vit_npz('vit_demo', os.path.join(DATA, 'jax_vit.npz'), **CFG)
  _assert_like_init(variables['params'], create_model('vit_demo', **CFG))
  err = _rel_err(_logits(variables, gold['x32'], **CFG), gold['logits_npz'])
  assert err <= 1e-4, err


def test_npz_pos_embed_resampled_like_timm(gold):
  overrides = dict(CFG, img_size=48)
  variables = load_vit_npz('vit_demo', os.path.join(DATA, 'jax_vit.npz'), **overrides)
  err = _rel_err(_logits(variables, gold['x48'], **overrides), gold['logits48_npz'])
  assert err <= 1e-4, err


def _npz_dict():
  with np.load(os.path.join(DATA, 'jax_vit.npz')) as f:
    return {k: f[k] for k in f.files}


def test_npz_big_vision_layout_and_pre_logits(tmp_path):
  w = _npz_dict()
  ref = load_vit_npz('vit_demo', os.path.join(DATA, 'jax_vit.npz'), **CFG)['params']
  # big_vision: params/ prefix, top-level pos_embedding, scanned blocks, other submodule ids.
  bv = {'params/pos_embedding': w['Transformer/posembed_input/pos_embedding']}
  rename = {'MultiHeadDotProductAttention_1': 'MultiHeadDotProductAttention_0',
            'LayerNorm_2': 'LayerNorm_1', 'MlpBlock_3': 'MlpBlock_0'}
  for k, v in w.items():
    if k.startswith('Transformer/encoderblock_0/'):
      sub = k[len('Transformer/encoderblock_0/'):]
      stacked = np.stack([w[f'Transformer/encoderblock_{i}/{sub}'] for i in range(2)])
      for a, b in rename.items():
        sub = sub.replace(a, b)
      bv[f'params/Transformer/encoderblock/{sub}'] = stacked
    elif not k.startswith('Transformer/encoderblock_') and 'posembed' not in k:
      bv[f'params/{k}'] = v
  np.savez(tmp_path / 'bv.npz', **bv)
  got = load_vit_npz('vit_demo', str(tmp_path / 'bv.npz'), **CFG)['params']
  jax.tree_util.tree_map(np.testing.assert_array_equal, got, ref)

  # A representation layer (pre_logits, Dense + tanh) loads into representation_size models.
  rng = np.random.default_rng(0)
  w['pre_logits/kernel'] = rng.standard_normal((32, 24)).astype(np.float32)
  w['pre_logits/bias'] = rng.standard_normal((24,)).astype(np.float32)
  w['head/kernel'] = rng.standard_normal((24, 10)).astype(np.float32)
  np.savez(tmp_path / 'pre.npz', **w)
  params = load_vit_npz('vit_demo', str(tmp_path / 'pre.npz'), **CFG,
                        representation_size=24)['params']
  np.testing.assert_array_equal(params['pre_logits']['kernel'], w['pre_logits/kernel'])
  np.testing.assert_array_equal(params['head']['kernel'], w['head/kernel'])
  with pytest.raises(ValueError, match='representation_size=24'):
    load_vit_npz('vit_demo', str(tmp_path / 'pre.npz'), **CFG)


# ---------------------------------------------------------------------------------------------
# User mistakes.


def test_error_wrong_model_name_suggests_matching_name():
  tiny = create_model('vit_tiny_patch16_224')
  zero = np.float32(0)  # broadcast views: a 5.7M-parameter state_dict without the memory
  sd = {vit_convert.timm_key(p):
            np.broadcast_to(zero, vit_convert._flax_to_torch_shape(p, s.shape))
        for p, s in vit_convert.param_shapes(tiny).items()}
  with pytest.raises(ValueError) as e:
    load_torch_checkpoint('vit_small_patch16_224', sd)
  msg = str(e.value)
  assert 'patch_embed.proj.weight' in msg and "'vit_tiny_patch16_224'" in msg
  assert 'embed_dim=192' in msg


def test_error_checkpoint_of_other_config_names_keys_and_overrides():
  with pytest.raises(ValueError) as e:
    load_torch_checkpoint('vit_demo', _ckpt('token'))  # vit_demo's own config differs
  msg = str(e.value)
  assert 'cls_token checkpoint (1, 1, 32) vs model (1, 1, 96)' in msg
  assert 'embed_dim=32' in msg and 'patch_size=8' in msg and 'depth=2' in msg
  assert 'num_classes=10' in msg
  with pytest.raises(ValueError, match=r"missing in checkpoint: fc_norm.bias(.|\n)*"
                                       r"global_pool='token'"):
    load_torch_checkpoint('vit_demo', _ckpt('token'), **dict(CFG, global_pool='avg'))
  with pytest.raises(ValueError, match=r'missing in checkpoint: blocks\.2\.(.|\n)*depth=2'):
    load_torch_checkpoint('vit_demo', _ckpt('token'), **dict(CFG, depth=3))


def test_error_unknown_model_name():
  with pytest.raises(ValueError, match="unknown model name 'vit_dem'.*vit_demo"):
    load_torch_checkpoint('vit_dem', _ckpt('token'))


def test_error_num_classes_and_drop_head(gold):
  with pytest.raises(ValueError) as e:
    load_torch_checkpoint('vit_demo', _ckpt('token'), **dict(CFG, num_classes=5))
  msg = str(e.value)
  assert 'head.weight' in msg and 'num_classes=10' in msg and 'drop_head=True' in msg

  overrides = dict(CFG, num_classes=5)
  loaded = load_torch_checkpoint('vit_demo', _ckpt('token'), drop_head=True, **overrides)
  assert 'head' not in loaded['params']
  # The caller's own head (model.init(...)['params']['head'] in practice) merges back in.
  rng = np.random.default_rng(0)
  own_head = {'kernel': rng.standard_normal((32, 5)).astype(np.float32),
              'bias': np.zeros((5,), np.float32)}
  params = {**loaded['params'], 'head': own_head}
  _assert_like_init(params, create_model('vit_demo', **overrides))
  assert _logits({'params': params}, gold['x32'], **overrides).shape == (2, 5)
  np.testing.assert_array_equal(params['pos_embed'],
                                read_state_dict(_ckpt('token'))['pos_embed'])
  # A model without a head and a checkpoint with one: same advice.
  with pytest.raises(ValueError, match='unexpected in checkpoint: head.bias(.|\n)*num_classes=10'):
    load_torch_checkpoint('vit_demo', _ckpt('token'), **dict(CFG, num_classes=0))


def test_error_missing_file_and_bad_suffix(tmp_path):
  missing = str(tmp_path / 'nope' / 'vit.pth')
  with pytest.raises(FileNotFoundError, match='nope/vit.pth'):
    load_torch_checkpoint('vit_demo', missing, **CFG)
  with pytest.raises(FileNotFoundError, match='nope.npz'):
    load_vit_npz('vit_demo', str(tmp_path / 'nope.npz'), **CFG)
  bad = tmp_path / 'vit.onnx'
  bad.write_bytes(b'')
  with pytest.raises(ValueError, match="unsupported checkpoint suffix '.onnx'"):
    load_torch_checkpoint('vit_demo', str(bad), **CFG)
  with pytest.raises(ValueError, match='load_vit_npz'):
    load_torch_checkpoint('vit_demo', os.path.join(DATA, 'jax_vit.npz'), **CFG)
