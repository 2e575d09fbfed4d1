"""swin_jax.convert for Swin: timm and official layouts against goldens of the reference code.

The goldens in tests/data/ were made from random-weight models with real timm and the official
microsoft/Swin-Transformer code (see tests/data/README.md); these tests need neither, only
torch for the .pth / F.interpolate checks.
"""
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from swin_jax.convert import adapt_param, load_torch_checkpoint, read_state_dict
from swin_jax.convert import resize_relative_position_bias_table
from swin_jax.convert import swin as swin_convert
from swin_jax.convert import vit as vit_convert
from swin_jax.models import create_model
from swin_jax.models.swin import relative_position_index, shifted_window_mask

DATA = os.path.join(os.path.dirname(__file__), 'data')
TIMM_CKPT = os.path.join(DATA, 'timm_swin.safetensors')
OFFICIAL_CKPT = os.path.join(DATA, 'official_swin.safetensors')
# The models the goldens were made with, as swin_demo overrides. timm: 16x16 then 8x8 maps,
# window 4, so both stages shift with a real mask. Official: 3 stages, the last 4x4 map is
# one unshifted window.
TIMM_CFG = dict(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
                window_size=4, mlp_ratio=4.0, num_classes=10)
OFFICIAL_CFG = dict(img_size=32, patch_size=2, embed_dim=8, depths=(2, 2, 2),
                    num_heads=(2, 2, 4), window_size=4, mlp_ratio=4.0, num_classes=10)
TABLE = 'relative_position_bias_table'


@pytest.fixture(scope='module')
def gold():
  with np.load(os.path.join(DATA, 'swin_goldens.npz')) as f:
    return {k: f[k] for k in f.files}


def _rel_err(out, ref):
  out = np.asarray(out, np.float64)
  return float(np.abs(out - ref).max() / np.abs(ref).max())


# XLA's cheap CPU pipeline: compiles in half the time; float32 results agree to ~1e-7.
_FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def _logits(variables, x, **overrides):
  """swin_demo(**overrides) logits, compiled once (the configs here are all different)."""
  apply = jax.jit(create_model('swin_demo', **overrides).apply)
  try:
    compiled = apply.lower(variables, x).compile(_FAST_COMPILE)
  except Exception:  # pylint: disable=broad-except  # an XLA without these options
    compiled = apply.lower(variables, x).compile()
  return compiled(variables, x)


def _flat(params):
  return traverse_util.flatten_dict(params)


def _assert_same_params(a, b):
  fa, fb = _flat(a), _flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=str(k))


def _assert_like_init(params, model):
  want = {p: (tuple(s.shape), s.dtype) for p, s in vit_convert.param_shapes(model).items()}
  got = {p: (a.shape, a.dtype) for p, a in _flat(params).items()}
  assert got == want


def _with_buffers(sd):
  """sd plus relative_position_index / attn_mask entries, as older timm files store."""
  out = dict(sd)
  for k, v in sd.items():
    if k.endswith(TABLE):
      out[k[:-len(TABLE)] + 'relative_position_index'] = np.zeros((16, 16), np.int64)
      out[k[:-len(TABLE) - len('attn.')] + 'attn_mask'] = np.zeros((4, 16, 16), np.float32)
  return out


# ---------------------------------------------------------------------------------------------
# Both layouts against the reference models.


def test_timm_layout_matches_timm(gold):
  variables = load_torch_checkpoint('swin_demo', TIMM_CKPT, **TIMM_CFG)
  _assert_like_init(variables['params'], create_model('swin_demo', **TIMM_CFG))
  err = _rel_err(_logits(variables, gold['x'], **TIMM_CFG), gold['logits_timm'])
  assert err <= 1e-4, err


def test_official_layout_matches_official_model(gold):
  variables = load_torch_checkpoint('swin_demo', OFFICIAL_CKPT, **OFFICIAL_CFG)
  _assert_like_init(variables['params'], create_model('swin_demo', **OFFICIAL_CFG))
  err = _rel_err(_logits(variables, gold['x'], **OFFICIAL_CFG), gold['logits_official'])
  assert err <= 1e-4, err


def test_official_release_wrapper_and_buffers(tmp_path):
  """{'model': state_dict} with the stored buffers, in memory (torch tensors) and as .pth."""
  torch = pytest.importorskip('torch')
  sd = read_state_dict(OFFICIAL_CKPT)
  assert any('attn_mask' in k for k in sd) and any('relative_position_index' in k for k in sd)
  want = load_torch_checkpoint('swin_demo', sd, **OFFICIAL_CFG)['params']
  release = {'model': {k: torch.from_numpy(v) for k, v in sd.items()}, 'epoch': 299}
  _assert_same_params(load_torch_checkpoint('swin_demo', release, **OFFICIAL_CFG)['params'],
                      want)
  path = tmp_path / 'swin_official.pth'
  torch.save(release, path)
  _assert_same_params(load_torch_checkpoint('swin_demo', str(path), **OFFICIAL_CFG)['params'],
                      want)


def test_layouts_renamed_into_each_other_load_the_same():
  """timm renamed to the official layout (and back) gives the same params: downsample moves
  to the end of the previous stage, head.fc -> head."""
  for ckpt, cfg in ((TIMM_CKPT, TIMM_CFG), (OFFICIAL_CKPT, OFFICIAL_CFG)):
    sd = read_state_dict(ckpt)
    layout = swin_convert.detect_layout(sd)
    want = load_torch_checkpoint('swin_demo', sd, **cfg)['params']
    if layout == 'timm':
      other = {'model': {swin_convert.timm_to_official_key(k): v for k, v in sd.items()}}
      assert 'layers.0.downsample.reduction.weight' in other['model']
      assert 'head.weight' in other['model']
      assert swin_convert.detect_layout(other['model']) == 'official'
    else:
      other = {swin_convert.official_to_timm_key(k): v for k, v in sd.items()}
      assert 'layers.2.downsample.reduction.weight' in other and 'head.fc.weight' in other
      assert swin_convert.detect_layout(other) == 'timm'
    _assert_same_params(load_torch_checkpoint('swin_demo', other, **cfg)['params'], want)
    # Stored buffers are ignored in either layout.
    _assert_same_params(load_torch_checkpoint('swin_demo', _with_buffers(sd), **cfg)['params'],
                        want)


def test_detect_layout():
  assert swin_convert.detect_layout(read_state_dict(TIMM_CKPT)) == 'timm'
  assert swin_convert.detect_layout(read_state_dict(OFFICIAL_CKPT)) == 'official'
  # Headless: the downsample position still tells.
  assert swin_convert.detect_layout({'layers.0.downsample.norm.weight': 0}) == 'official'
  assert swin_convert.detect_layout({'layers.1.downsample.norm.weight': 0}) == 'timm'


@pytest.mark.parametrize('layout', ['official', 'timm'])
def test_roundtrip_to_torch_layout(layout):
  sd = read_state_dict(TIMM_CKPT if layout == 'timm' else OFFICIAL_CKPT)
  sd = {k: v for k, v in sd.items() if 'relative_position_index' not in k and 'attn_mask' not in k}
  cfg = TIMM_CFG if layout == 'timm' else OFFICIAL_CFG
  params = load_torch_checkpoint('swin_demo', sd, **cfg)['params']
  back = swin_convert.swin_params_to_torch(params, layout)
  assert sorted(back) == sorted(sd)
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k])


# ---------------------------------------------------------------------------------------------
# Window size change.


def test_window_change_matches_official_finetuning(gold):
  """The window-4 official checkpoint into a window-8 model, as the official load_pretrained:
  stages 0/1 tables 7x7 -> 15x15 bicubic; stage 2 (4x4 map) keeps its 7x7 table."""
  cfg = dict(OFFICIAL_CFG, window_size=8)
  variables = load_torch_checkpoint('swin_demo', OFFICIAL_CKPT, **cfg)
  params = variables['params']
  assert params['layers_0']['blocks_0']['attn'][TABLE].shape == (225, 2)
  assert params['layers_1']['blocks_1']['attn'][TABLE].shape == (225, 2)
  assert params['layers_2']['blocks_0']['attn'][TABLE].shape == (49, 4)
  assert _rel_err(params['layers_0']['blocks_1']['attn'][TABLE], gold['table_w8']) <= 1e-6
  err = _rel_err(_logits(variables, gold['x'], **cfg), gold['logits_official_w8'])
  assert err <= 1e-4, err


@pytest.mark.parametrize('old_ws, new_ws', [(4, 8), (7, 12), (12, 7), (4, 4)])
def test_resize_table_equals_torch_interpolate(old_ws, new_ws):
  """The official call: F.interpolate(table.permute(1, 0).view(1, nH, S1, S1), size=(S2, S2),
  mode='bicubic').view(nH, L2).permute(1, 0)."""
  torch = pytest.importorskip('torch')
  heads, s1, s2 = 3, 2 * old_ws - 1, 2 * new_ws - 1
  table = np.random.default_rng(old_ws * 100 + new_ws).standard_normal(
      (s1 * s1, heads)).astype(np.float32)
  t = torch.from_numpy(table)
  ref = torch.nn.functional.interpolate(t.permute(1, 0).view(1, heads, s1, s1), size=(s2, s2),
                                        mode='bicubic').view(heads, s2 * s2).permute(1, 0)
  out = resize_relative_position_bias_table(table, new_ws)
  assert out.shape == (s2 * s2, heads) and out.dtype == np.float32
  np.testing.assert_allclose(out, ref.numpy(), rtol=1e-5, atol=1e-5)


def test_adapter_resizes_bias_tables():
  """init_from of a run at another window: ADAPTERS['swin'] resizes the tables only."""
  model = create_model('swin_demo', window_size=8)
  table = np.random.default_rng(0).standard_normal((49, 3)).astype(np.float32)
  path = f"['layers_0']['blocks_1']['attn']['{TABLE}']"
  out = adapt_param('swin_demo', model, path, table, (225, 3))
  np.testing.assert_array_equal(out, resize_relative_position_bias_table(table, 8))
  assert adapt_param('swin_demo', model, path, table, (225, 6)) is None  # other heads
  assert adapt_param('swin_demo', model, "['head']['kernel']", np.zeros((48, 10)),
                     (48, 5)) is None


# ---------------------------------------------------------------------------------------------
# Head: drop it, or keep some of its rows.


def test_drop_head():
  full = load_torch_checkpoint('swin_demo', TIMM_CKPT, **TIMM_CFG)['params']
  cfg = dict(TIMM_CFG, num_classes=3)
  params = load_torch_checkpoint('swin_demo', TIMM_CKPT, drop_head=True, **cfg)['params']
  assert 'head' not in params
  _assert_same_params(params, {k: v for k, v in full.items() if k != 'head'})


@pytest.mark.parametrize('as_file', [False, True])
def test_head_class_map(tmp_path, as_file):
  """As the official load_pretrained for 22K -> 1K: head.weight[map], head.bias[map]."""
  sd = read_state_dict(TIMM_CKPT)
  class_map = [7, 2, 9, 0]
  source = class_map
  if as_file:
    source = tmp_path / 'map10to4.txt'
    source.write_text(''.join(f'{i}\n' for i in class_map) + '\n')
  cfg = dict(TIMM_CFG, num_classes=4)
  params = load_torch_checkpoint('swin_demo', TIMM_CKPT, head_class_map=source, **cfg)['params']
  np.testing.assert_array_equal(params['head']['kernel'], sd['head.fc.weight'][class_map].T)
  np.testing.assert_array_equal(params['head']['bias'], sd['head.fc.bias'][class_map])
  full = load_torch_checkpoint('swin_demo', TIMM_CKPT, **TIMM_CFG)['params']
  _assert_same_params({k: v for k, v in params.items() if k != 'head'},
                      {k: v for k, v in full.items() if k != 'head'})


def test_head_class_map_errors(tmp_path):
  cfg = dict(TIMM_CFG, num_classes=4)
  with pytest.raises(ValueError, match='selects 3 classes.*num_classes=4.*num_classes=3'):
    load_torch_checkpoint('swin_demo', TIMM_CKPT, head_class_map=[1, 2, 3], **cfg)
  with pytest.raises(ValueError, match=r'outside the checkpoint head of 10 classes: \[10\]'):
    load_torch_checkpoint('swin_demo', TIMM_CKPT, head_class_map=[1, 2, 3, 10], **cfg)
  with pytest.raises(ValueError, match='not both'):
    load_torch_checkpoint('swin_demo', TIMM_CKPT, head_class_map=[1, 2, 3, 4], drop_head=True,
                          **cfg)
  bad = tmp_path / 'bad.txt'
  bad.write_text('1\n2\nthree\n4\n')
  with pytest.raises(ValueError, match='bad.txt:3'):
    load_torch_checkpoint('swin_demo', TIMM_CKPT, head_class_map=str(bad), **cfg)
  with pytest.raises(FileNotFoundError):
    load_torch_checkpoint('swin_demo', TIMM_CKPT, head_class_map=str(tmp_path / 'no.txt'), **cfg)
  with pytest.raises(ValueError, match="not supported for 'vit'"):
    load_torch_checkpoint('vit_demo', TIMM_CKPT, head_class_map=[0])


# ---------------------------------------------------------------------------------------------
# Errors.


def test_error_head_size_names_the_three_fixes():
  cfg = dict(TIMM_CFG, num_classes=5)
  with pytest.raises(ValueError) as e:
    load_torch_checkpoint('swin_demo', TIMM_CKPT, **cfg)
  msg = str(e.value)
  assert 'head.fc.weight checkpoint (10, 32) vs model (5, 32)' in msg  # the file's own names
  for fix in ('num_classes=10', 'drop_head=True', 'head_class_map='):
    assert fix in msg, msg


def test_error_22k_head_points_to_the_official_map():
  shapes = vit_convert.param_shapes(create_model('swin_demo', **TIMM_CFG))
  sd = {swin_convert.swin_key(p): np.zeros(vit_convert._flax_to_torch_shape(p, s.shape),
                                           np.float32) for p, s in shapes.items()}
  sd['head.weight'] = np.zeros((21841, 32), np.float32)
  sd['head.bias'] = np.zeros((21841,), np.float32)
  with pytest.raises(ValueError, match='map22kto1k.txt'):
    load_torch_checkpoint('swin_demo', sd, **dict(TIMM_CFG, num_classes=1000))


def _zero_state_dict(name):
  """An official-layout state_dict of model `name` in no memory: broadcast zeros."""
  shapes = vit_convert.param_shapes(create_model(name))
  return {swin_convert.swin_key(p): np.broadcast_to(
      np.float32(0), vit_convert._flax_to_torch_shape(p, s.shape)) for p, s in shapes.items()}


def test_error_other_variant_suggests_model_name():
  """Swin-S weights into swin_tiny: the extra stage-3 blocks are named and Swin-S suggested."""
  official = _zero_state_dict('swin_small_patch4_window7_224')
  timm = {swin_convert.official_to_timm_key(k): v for k, v in official.items()}
  for layout, sd in (('official', official), ('timm', timm)):
    with pytest.raises(ValueError) as e:
      load_torch_checkpoint('swin_tiny_patch4_window7_224', sd)
    msg = str(e.value)
    assert f'({layout} layout)' in msg
    assert 'unexpected in checkpoint: layers.2.blocks.6.norm1.weight, ' in msg, msg
    assert "'swin_small_patch4_window7_224'" in msg and 'depths=(2, 2, 18, 2)' in msg, msg
    assert 'drop_head' not in msg  # the heads agree


def test_error_other_width_names_first_keys_and_overrides():
  """swin_demo weights into a wider swin_demo: shape errors in model order, overrides."""
  cfg = dict(TIMM_CFG, embed_dim=24, num_heads=(3, 6))
  with pytest.raises(ValueError) as e:
    load_torch_checkpoint('swin_demo', TIMM_CKPT, **cfg)
  msg = str(e.value)
  assert 'shape mismatch: patch_embed.proj.weight checkpoint (16, 3, 2, 2) vs model ' \
         '(24, 3, 2, 2)' in msg, msg
  assert 'embed_dim=16, num_heads=(2, 4)' in msg, msg


def test_error_missing_blocks_timm_layout():
  cfg = dict(TIMM_CFG, depths=(2, 4))
  with pytest.raises(ValueError, match=r'missing in checkpoint: layers\.1\.blocks\.2\.norm1'
                     r'\.weight.*\n(.*\n)*.*depths=\(2, 2\)'):
    load_torch_checkpoint('swin_demo', TIMM_CKPT, **cfg)


# ---------------------------------------------------------------------------------------------
# The detection backbone (detection=True): mmdet checkpoints and their errors. Its outputs
# against the official detection code are in tests/test_swin.py.

DET_CKPT = os.path.join(DATA, 'swin_detection_official.safetensors')
DET_CFG = dict(patch_size=2, embed_dim=4, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
               window_size=7, mlp_ratio=2.0, detection=True)


def test_mmdet_detector_checkpoint_loads_its_backbone():
  """A whole mmdet detector ({'state_dict': backbone.*, neck.*, heads}, 'meta') loads its
  backbone: backbone. stripped, the rest ignored; every tensor lands unchanged (norm0 ->
  norm0/{scale, bias}, Linear transposed), so the params map back to exactly the
  backbone's own state_dict."""
  sd = read_state_dict(DET_CKPT)
  assert {'norm0.weight', 'norm3.bias'} <= set(sd) and 'norm.weight' not in sd
  detector = {'meta': {'epoch': 12},
              'state_dict': {**{'backbone.' + k: v for k, v in sd.items()},
                             'neck.lateral_convs.0.conv.weight': np.zeros((4, 4, 1, 1)),
                             'rpn_head.rpn_cls.bias': np.zeros(3)}}
  params = load_torch_checkpoint('swin_demo', detector, **DET_CFG)['params']
  np.testing.assert_array_equal(params['norm2']['scale'], sd['norm2.weight'])
  np.testing.assert_array_equal(params['layers_3']['blocks_1']['attn']['qkv']['kernel'],
                                sd['layers.3.blocks.1.attn.qkv.weight'].T)
  # Back to torch names: exactly the backbone's state_dict, every tensor equal.
  back = swin_convert.swin_params_to_torch(params)
  assert sorted(back) == sorted(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_classification_checkpoint_initialises_detection_backbone():
  """The official classification checkpoint (microsoft/Swin-Transformer layout with head,
  norm and buffers) into detection=True gives what the official detection backbone holds
  after the detection configs' pretrained= start (init_weights, then load_state_dict with
  strict=False; tests/data/swin_detection_goldens.npz): the same keys, the classifier's
  tensors, and norm0..norm2 at their initialisation. The outputs of any such params are
  checked against the official code in tests/test_swin.py."""
  with np.load(os.path.join(DATA, 'swin_detection_goldens.npz')) as f:
    gold = {k: f[k] for k in f.files if k.startswith('cls_')}
  cfg = dict(patch_size=2, embed_dim=8, depths=(2, 2, 2), num_heads=(2, 2, 4), window_size=4,
             mlp_ratio=4.0, detection=True)
  params = load_torch_checkpoint('swin_demo', OFFICIAL_CKPT, **cfg)['params']
  back = swin_convert.swin_params_to_torch(params)
  assert sorted(back) == gold['cls_keys'].tolist()
  classifier = read_state_dict(OFFICIAL_CKPT)
  for k, v in back.items():
    np.testing.assert_array_equal(v, classifier[k] if k in classifier else gold['cls_' + k],
                                  err_msg=k)
  assert not any(k in classifier for k in back if k.startswith(('norm0', 'norm1', 'norm2')))


def test_detection_checkpoint_errors_name_the_fix():
  """Detection weights into a classifier point to detection=True; a head map into a
  detection backbone (which has no head) is refused."""
  cls_cfg = {k: v for k, v in DET_CFG.items() if k != 'detection'}
  with pytest.raises(ValueError, match=r'unexpected in checkpoint: norm0\.weight(.*\n)*.*'
                     r'pass detection=True'):
    load_torch_checkpoint('swin_demo', DET_CKPT, **cls_cfg)
  with pytest.raises(ValueError, match='detection=True backbone has no head'):
    load_torch_checkpoint('swin_demo', DET_CKPT, head_class_map=[0, 1], **DET_CFG)


def test_classification_checkpoint_initialises_detr_swin_backbone():
  """config.init_from=<official Swin classifier .pth> for a DETR with a detection=True Swin
  backbone (configs/detr/detr_swin_t.py, in small): backbone_0/body gets the classifier's
  tensors (norm / head left out) and norm2 at scale 1 / bias 0, the DETR's own leaves keep
  their initialisation (reported as kept fresh)."""
  from swin_jax.train import checkpointing  # pylint: disable=g-import-not-at-top  # orbax
  kw = dict(patch_size=2, embed_dim=8, depths=(2, 2, 2), num_heads=(2, 2, 4), window_size=4,
            mlp_ratio=4.0, detection=True, mask_padding=True, out_indices=(2,))
  overrides = dict(backbone='swin_demo', backbone_kwargs=kw, num_classes=3, num_queries=4,
                   hidden_dim=16, nheads=2, enc_layers=1, dec_layers=1, dim_feedforward=32)
  model = create_model('detr_resnet50', **overrides)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  like = jax.tree.map(lambda s: np.full(s.shape, 7, s.dtype), abstract)
  variables, skipped = checkpointing.load_variables_for_init(
      OFFICIAL_CKPT, 'detr_resnet50', like, model_overrides=overrides, model=model)
  sd = read_state_dict(OFFICIAL_CKPT)
  body = variables['params']['backbone_0']['body']
  assert set(body) == {'patch_embed', 'layers_0', 'layers_1', 'layers_2', 'norm2'}
  np.testing.assert_array_equal(body['layers_2']['blocks_1']['attn']['qkv']['kernel'],
                                sd['layers.2.blocks.1.attn.qkv.weight'].T)
  np.testing.assert_array_equal(body['patch_embed']['norm']['scale'],
                                sd['patch_embed.norm.weight'])
  np.testing.assert_array_equal(body['norm2']['scale'], np.ones(32, np.float32))
  np.testing.assert_array_equal(body['norm2']['bias'], np.zeros(32, np.float32))
  assert skipped and not any('backbone_0' in k for k in skipped)
  assert all(np.all(v == 7) for k, v in _flat(variables['params']).items()
             if k[0] != 'backbone_0')


# ---------------------------------------------------------------------------------------------
# Shifted-window masks and relative position indices against the official construction.


@pytest.fixture(scope='module')
def official_masks():
  with np.load(os.path.join(DATA, 'swin_official_masks.npz')) as f:
    return {k: f[k] for k in f.files}


@pytest.mark.parametrize('size, ws, shift', [(4, 2, 1), (56, 7, 3)])
def test_shifted_window_mask_equals_official(official_masks, size, ws, shift):
  ref = official_masks[f'mask_h{size}_ws{ws}_s{shift}'].astype(np.float32)  # 0 / -100
  out = shifted_window_mask(size, size, ws, shift)
  assert out.shape == ref.shape == ((size // ws) ** 2, ws * ws, ws * ws)
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize('ws', [2, 4, 7, 12])
def test_relative_position_index_equals_official(official_masks, ws):
  ref = official_masks[f'index_ws{ws}']
  out = relative_position_index(ws)
  assert out.shape == ref.shape == (ws * ws, ws * ws)
  np.testing.assert_array_equal(out, ref)
