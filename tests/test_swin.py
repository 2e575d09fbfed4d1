"""Swin Transformer: sizes and FLOPs of the released models, the shifted-window mask, any
input size (padding and pixel masks), features, the detection backbone against golden
outputs of the official detection code, memory scaling and input errors.

Full-size models are only traced (jax.eval_shape / make_jaxpr); everything that runs uses tiny
configs built from `swin_demo` with overrides.
"""
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swin_jax.convert import load_torch_checkpoint
from swin_jax.models import create_model
from swin_jax.models import swin
from swin_jax.tools import count

# timm 1.0.31 parameter counts, num_classes=1000.
TIMM_PARAMS = {
    'swin_tiny_patch4_window7_224': 28_288_354,
    'swin_small_patch4_window7_224': 49_606_258,
    'swin_base_patch4_window7_224': 87_768_224,
    'swin_base_patch4_window12_384': 87_903_584,
    'swin_large_patch4_window7_224': 196_532_476,
    'swin_large_patch4_window12_384': 196_735_516,
}

# FLOPs (multiply-adds) of the paper (Table 1) / the official README.
PAPER_GFLOPS = {
    'swin_tiny_patch4_window7_224': 4.5,
    'swin_small_patch4_window7_224': 8.7,
    'swin_base_patch4_window7_224': 15.4,
    'swin_base_patch4_window12_384': 47.1,
    'swin_large_patch4_window7_224': 34.5,
    'swin_large_patch4_window12_384': 103.9,
}


@functools.lru_cache(maxsize=None)
def _stats(name):
  """Params and MACs from one abstract trace per model (no XLA compile)."""
  return count.model_stats(name)


def _sds(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def _images(key, *shape):
  return np.random.default_rng(key).standard_normal(shape).astype(np.float32)


def _random_variables(model, shape, seed=0):
  """Variables of model.init for inputs `shape`, filled with numpy random values: no XLA
  compile (a jitted or eager init costs 10+ s on a busy 2-core CPU). Kernels ~ N(0, 1/fan_in)
  and LayerNorm scales ~ 1 keep activations O(1), so differences show in the outputs."""
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), _sds(*shape))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    name = path[-1].key
    if name == 'scale':
      return jnp.asarray(1.0 + 0.1 * noise)
    if name in ('bias', 'relative_position_bias_table'):
      return jnp.asarray(0.1 * noise)
    return jnp.asarray(noise / np.sqrt(np.prod(leaf.shape[:-1])))
  return jax.tree_util.tree_map_with_path(fill, abstract)


def _apply(model):
  """Jitted model.apply (train / return_features static)."""
  return jax.jit(model.apply, static_argnames=('train', 'return_features'))


@pytest.fixture(scope='module')
def demo():
  """swin_demo (2 stages, patch 2, window 4) and variables valid for 16x16 .. 100x130."""
  model = create_model('swin_demo')
  return model, _random_variables(model, (1, 16, 16, 3))


@pytest.fixture(scope='module')
def padded_runs():
  """A 4-stage Swin (patch 2, window 2 / shift 1, dims 8..64) on two images alone and padded
  together into one masked batch: {'a': solo, 'b': solo, 'batch': masked, 'nomask': the
  same batch with an all-False mask}, each (4 stage features, logits). One jitted function,
  three input shapes: three compiles in all."""
  model = create_model('swin_demo', patch_size=2, window_size=2, embed_dim=8,
                       depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), mlp_ratio=2.0,
                       num_classes=5)
  variables = _random_variables(model, (1, 48, 56, 3))

  @jax.jit
  def run(x, mask):
    return (model.apply(variables, x, mask=mask, return_features=True),
            model.apply(variables, x, mask=mask))

  # a: 37x45 pixels, tokens 19x23 -> 10x12 -> 5x6 -> 3x3; b: 34x40, 17x20 -> 9x10 -> 5x5
  # -> 3x3; the 48x56 canvas: 24x28 -> 12x14 -> 6x7 -> 3x4. Every map is larger than the
  # window (2), so the small-map rule is the same alone and padded. Odd sizes pad the patch
  # embedding, the windows and every merge.
  a, b = _images(1, 37, 45, 3), _images(2, 34, 40, 3)
  batch = np.zeros((2, 48, 56, 3), np.float32)
  mask = np.ones((2, 48, 56), bool)
  for i, img in enumerate((a, b)):
    h, w = img.shape[:2]
    batch[i, :h, :w] = img
    mask[i, :h, :w] = False
  solo_mask = lambda img: np.zeros((1, *img.shape[:2]), bool)
  return {'a': run(a[None], solo_mask(a)), 'b': run(b[None], solo_mask(b)),
          'batch': run(batch, mask), 'nomask': run(batch, np.zeros_like(mask))}


# ----------------------------------------------------------------------------- sizes, FLOPs
@pytest.mark.parametrize('name', sorted(TIMM_PARAMS))
def test_param_counts_match_timm(name):
  assert _stats(name)['params'] == TIMM_PARAMS[name]


@pytest.mark.parametrize('name', sorted(PAPER_GFLOPS))
def test_flops_match_paper(name):
  stats = _stats(name)
  size = 384 if name.endswith('384') else 224
  assert stats['img_size'] == (size, size)
  gmacs = stats['macs'] / 1e9
  assert abs(gmacs - PAPER_GFLOPS[name]) / PAPER_GFLOPS[name] < 0.02, gmacs


def test_registry_lists_the_swin_family():
  from swin_jax.models.registry import list_models
  assert set(TIMM_PARAMS) | {'swin_demo'} == set(list_models('swin'))


# ----------------------------------------------------------------------------- shift mask
def test_shifted_window_mask_window2_shift1_by_hand():
  # Regions of a 4x4 map for window 2, shift 1: rows/cols split by slices (0, -2), (-2, -1),
  # (-1, None), i.e. {0, 1}, {2}, {3}; region id = 3 * row part + col part:
  #   0 0 1 2
  #   0 0 1 2
  #   3 3 4 5
  #   6 6 7 8
  # Windows (row-major), tokens row-major inside: [0 0 0 0], [1 2 1 2], [3 3 6 6], [4 5 7 8].
  m = -100.0
  expect = np.array([
      [[0, 0, 0, 0],
       [0, 0, 0, 0],
       [0, 0, 0, 0],
       [0, 0, 0, 0]],
      [[0, m, 0, m],
       [m, 0, m, 0],
       [0, m, 0, m],
       [m, 0, m, 0]],
      [[0, 0, m, m],
       [0, 0, m, m],
       [m, m, 0, 0],
       [m, m, 0, 0]],
      [[0, m, m, m],
       [m, 0, m, m],
       [m, m, 0, m],
       [m, m, m, 0]],
  ], np.float32)
  got = swin.shifted_window_mask(4, 4, 2, 1)
  assert got.shape == (4, 4, 4) and got.dtype == np.float32
  np.testing.assert_array_equal(got, expect)


def test_stage_window_rule():
  assert swin.stage_window(56, 56, 7) == (7, 3)
  assert swin.stage_window(7, 7, 7) == (7, 0)  # Swin-T stage 4 at 224: one window, no shift
  assert swin.stage_window(12, 5, 7) == (5, 0)  # the smaller side decides
  assert swin.stage_window(8, 8, 16) == (8, 0)


# ----------------------------------------------------------------------------- any input size
@pytest.mark.parametrize('hw', [(22, 26), (100, 130)])
def test_odd_input_sizes(demo, hw):
  # Values at odd sizes are checked elsewhere (padded_runs, the detection goldens); here the
  # shapes, and one run of the unmasked path (mask=None) on a padded input.
  model, variables = demo
  x = _images(0, 2, *hw, 3)
  if hw == (100, 130):
    logits = _apply(model)(variables, x)
    assert np.isfinite(np.asarray(logits)).all()
  else:
    logits = jax.eval_shape(model.apply, variables, x)
  assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
  feats = jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True), variables, x)
  h, w = -(-hw[0] // 2), -(-hw[1] // 2)
  assert [f.shape for f in feats] == [(2, h, w, 48), (2, -(-h // 2), -(-w // 2), 96)]


def test_pretrained_size_params_apply_at_other_sizes():
  """Windows are fixed from img_size, so 224 weights apply at detection-like sizes too."""
  model = create_model('swin_tiny_patch4_window7_224')
  variables = count.abstract_variables(model, (1, 224, 224, 3))
  out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, _sds(1, 100, 130, 3))
  assert out.shape == (1, 1000)


def _assert_same_at_real_tokens(solo, padded, index):
  (solo_feats, solo_logits), (feats, logits) = solo, padded
  for s, p in zip(solo_feats, feats):
    h, w = s.shape[1], s.shape[2]
    np.testing.assert_allclose(p[index, :h, :w], s[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits[index], solo_logits[0], rtol=1e-5, atol=1e-5)


def test_outputs_at_real_tokens_do_not_depend_on_padding(padded_runs):
  """Image a alone vs a in a larger zero canvas with mask= (True = padded)."""
  solo, padded = padded_runs['a'], padded_runs['batch']
  assert [f.shape[1:3] for f in solo[0]] == [(19, 23), (10, 12), (5, 6), (3, 3)]
  assert [f.shape[1:3] for f in padded[0]] == [(24, 28), (12, 14), (6, 7), (3, 4)]
  _assert_same_at_real_tokens(solo, padded, 0)
  # Without the mask the zero padding does change the outputs (the test can see a leak).
  leak = padded_runs['nomask']
  assert not np.allclose(leak[1][0], solo[1][0], rtol=1e-3, atol=1e-3)
  assert not np.allclose(leak[0][0][0, :19, :23], solo[0][0][0], rtol=1e-3, atol=1e-3)


def test_batch_of_different_sizes_padded_together(padded_runs):
  """a (37x45) and b (34x40) padded into one 48x56 batch: each gets its solo outputs."""
  _assert_same_at_real_tokens(padded_runs['a'], padded_runs['batch'], 0)
  _assert_same_at_real_tokens(padded_runs['b'], padded_runs['batch'], 1)


# ----------------------------------------------------------------------------- features
@pytest.mark.parametrize('hw, maps', [
    ((224, 224), [(56, 56), (28, 28), (14, 14), (7, 7)]),
    ((100, 130), [(25, 33), (13, 17), (7, 9), (4, 5)]),  # ceil at each stride
])
def test_features_strides_and_channels(hw, maps):
  model = create_model('swin_tiny_patch4_window7_224', img_size=hw)
  x = _sds(2, *hw, 3)
  variables = count.abstract_variables(model, x.shape)
  feats = jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True), variables, x)
  assert [f.shape for f in feats] == [(2, *m, c) for m, c in zip(maps, (96, 192, 384, 768))]
  assert all(f.dtype == jnp.float32 for f in feats)


# ----------------------------------------------------------------------------- detection
# Goldens of the official detection backbone (SwinTransformer/Swin-Transformer-Object-
# Detection, mmdet/models/backbones/swin_transformer.py at c7b2011), random weights, made by
# tests/data/generate/swin_detection.py (tests/data/README.md).
DATA = os.path.join(os.path.dirname(__file__), 'data')
# The golden backbone: window 7 on four stages; its maps on x_a (25x33 .. 4x5 tokens) and
# x_b (19x24 .. 3x3) all pad to whole windows, the merges pad odd sides, and the last stage
# (smaller than a window) shifts, which the classification rule would not do.
DET_CFG = dict(patch_size=2, embed_dim=4, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
               window_size=7, mlp_ratio=2.0, detection=True)


@pytest.fixture(scope='module')
def det_gold():
  with np.load(os.path.join(DATA, 'swin_detection_goldens.npz')) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope='module')
def det_variables():
  """The official detection checkpoint layout through our converter."""
  return load_torch_checkpoint(
      'swin_demo', os.path.join(DATA, 'swin_detection_official.safetensors'), **DET_CFG)


def _stages(cfg, variables, x):
  """swin_demo(**cfg) stage maps of x (numpy)."""
  return [np.asarray(f) for f in jax.jit(create_model('swin_demo', **cfg).apply)(variables, x)]


def _assert_stages_match(got, gold, name, n):
  # Float32 on both sides, as the reference: the measured error is <= 3e-6 of each stage's
  # largest value (summation order: LayerNorms, softmax, 8-16 wide dots), while an error of
  # the architecture (a window, a shift, a mask, the padding) moves the maps by O(1) (masking
  # the padded tokens alone: 0.4 .. 1.05).
  assert len(got) == n
  for i, g in enumerate(got):
    ref = gold[f'{name}_stage{i}']
    assert g.shape == ref.shape, (name, i)
    err = float(np.abs(g - ref).max() / np.abs(ref).max())
    assert err <= 1e-5, (name, i, err)


@pytest.mark.parametrize('name', ['x_a', 'x_b'])
def test_detection_backbone_matches_official(det_gold, det_variables, name):
  """The official detection checkpoint layout through our converter: all four stages of the
  official backbone (norm0 .. norm3 applied, padded tokens let into attention) on inputs
  2x50x66 and 1x37x47, whose maps all need padding."""
  variables = det_variables
  assert {f'norm{i}' for i in range(4)} <= set(variables['params'])
  assert 'norm' not in variables['params'] and 'head' not in variables['params']
  _assert_stages_match(_stages(DET_CFG, variables, det_gold[name]), det_gold, name, 4)


def test_detection_mode_windows_outputs_and_names():
  """Swin-T, detection=True, at a detection size (traced only): window 7 with a shift on
  every stage (stage 4 of 800x1333 is 25x42 tokens), the four maps through norm0..norm3,
  the same parameter shapes as the classifier but for norm / head -> norm{i}, so a
  classification checkpoint fits (out_indices: tests/test_convert_swin.py). The classifier's
  features_norm=True adds the same norm{i}."""
  name = 'swin_tiny_patch4_window7_224'
  x = _sds(1, 800, 1333, 3)
  # One abstract init per model gives both the outputs and the parameters.
  init = lambda m: jax.eval_shape(m.init_with_output, jax.random.PRNGKey(0), x)
  shape_tree = lambda t: jax.tree.map(jnp.shape, t)
  # The window / shift each block uses, read from the traced module tree.
  blocks = {}

  def spy(next_fun, args, kwargs, context):
    if isinstance(context.module, swin.SwinBlock) and context.method_name == '__call__':
      blocks[context.module.scope.path] = (context.module.window_size,
                                           context.module.shift_size)
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(spy):
    feats, dvars = init(create_model(name, detection=True))  # a list whatever return_features
  maps = [(200, 334), (100, 167), (50, 84), (25, 42)]
  assert [f.shape for f in feats] == [(1, *m, c) for m, c in zip(maps, (96, 192, 384, 768))]
  assert len(blocks) == 12
  assert blocks == {p: (7, 3 if int(p[-1].split('_')[1]) % 2 else 0) for p in blocks}
  dvars = dvars['params']
  cvars = count.abstract_variables(create_model(name), (1, 224, 224, 3))['params']
  assert set(dvars) == (set(cvars) - {'norm', 'head'}) | {f'norm{i}' for i in range(4)}
  for k in set(cvars) - {'norm', 'head'}:
    assert shape_tree(dvars[k]) == shape_tree(cvars[k]), k
  # The classifier's features_norm=True: the same norm{i} on its features path.
  fvars = jax.eval_shape(lambda k, x: create_model(name, features_norm=True).init(
      k, x, return_features=True), jax.random.key(0), _sds(1, 224, 224, 3))['params']
  assert set(fvars) - set(cvars) == {f'norm{i}' for i in range(4)}
  with pytest.raises(ValueError, match=r'out_indices=\(4,\): give stage indices in 0\.\.3'):
    jax.eval_shape(create_model(name, detection=True, out_indices=(4,)).init,
                   jax.random.PRNGKey(0), x)


# ----------------------------------------------------------------------------- memory
def test_inference_memory_is_linear_in_tokens():
  """Compiled temp memory at 4x the tokens grows ~4x (an [N, N] term would give ~16x)."""
  model = create_model('swin_demo', patch_size=4, window_size=4, embed_dim=16, depths=(2, 2),
                       num_heads=(1, 2), img_size=256)
  variables = count.abstract_variables(model, (1, 256, 256, 3))
  fn = jax.jit(lambda v, x: model.apply(v, x, return_features=True))
  temp = {}
  for s in (256, 512):
    ma = fn.lower(variables, _sds(1, s, s, 3)).compile().memory_analysis()
    if ma is None:
      pytest.skip('memory_analysis() unavailable on this backend')
    temp[s] = ma.temp_size_in_bytes
  ratio = temp[512] / temp[256]
  print(f'swin inference temp memory: 256x256 {temp[256]:,} B, 512x512 {temp[512]:,} B, '
        f'ratio {ratio:.2f} (4x the tokens)')
  assert 3.0 < ratio < 5.5, temp


# ----------------------------------------------------------------------------- bad input
def test_image_smaller_than_a_patch_names_the_patch_size():
  model = create_model('swin_tiny_patch4_window7_224')
  variables = count.abstract_variables(model, (1, 224, 224, 3))
  with pytest.raises(ValueError, match=r'smaller than one patch \(4x4\)'):
    jax.eval_shape(lambda v, x: model.apply(v, x), variables, _sds(1, 3, 32, 3))
  with pytest.raises(ValueError, match=r'smaller than one patch \(2x2\)'):
    jax.eval_shape(create_model('swin_demo').init, jax.random.PRNGKey(0), _sds(1, 16, 1, 3))
  # One patch is enough: a 1x1 token map, every stage a single 1x1 window.
  model = create_model('swin_demo', num_classes=3)
  x = _images(4, 1, 2, 2, 3)
  out = _apply(model)(_random_variables(model, x.shape), x)
  assert out.shape == (1, 3) and np.isfinite(np.asarray(out)).all()


def test_bad_shapes_and_fields_raise():
  init = lambda m, *shape: jax.eval_shape(m.init, jax.random.PRNGKey(0), _sds(*shape))
  with pytest.raises(ValueError, match='NHWC'):
    init(create_model('swin_demo'), 1, 16, 16)
  with pytest.raises(ValueError, match='NHWC'):
    init(create_model('swin_demo'), 1, 3, 16, 16)
  with pytest.raises(ValueError, match='same length'):
    init(create_model('swin_demo', depths=(2, 2, 2)), 1, 16, 16, 3)


def test_window_larger_than_the_map_follows_the_official_rule():
  """A window_size larger than a stage's map is shrunk to the map (no shift), as the
  official code does for small maps (stage_window): window 16 on swin_demo's 8x8 first stage
  is global attention, exactly the model with window_size=8 (same parameters, the same
  traced program: equal jaxprs, so equal outputs without compiling either)."""
  x = _images(5, 2, 16, 16, 3)
  big = create_model('swin_demo', window_size=16)
  exact = create_model('swin_demo', window_size=8)
  variables = _random_variables(big, x.shape)
  assert (variables['params']['layers_0']['blocks_1']['attn']
          ['relative_position_bias_table'].shape == (15 * 15, 3))
  shapes = lambda m: jax.tree.map(jnp.shape, jax.eval_shape(m.init, jax.random.PRNGKey(0), x))
  assert shapes(exact) == shapes(big)
  program = lambda m: str(jax.make_jaxpr(m.apply)(variables, x))
  assert program(big) == program(exact)
  # The comparison sees a constant change: another LayerNorm epsilon is another program.
  assert program(big) != program(create_model('swin_demo', window_size=16, norm_eps=1e-6))
  # A window one smaller than the map keeps its size and shifts: another parameter shape.
  v7 = shapes(create_model('swin_demo', window_size=7))
  assert v7['params']['layers_0']['blocks_1']['attn']['relative_position_bias_table'] == (
      13 * 13, 3)


# ----------------------------------------------------------------------------- train / dtype
def test_dropout_and_drop_path_active_only_in_training(demo):
  _, variables = demo
  model = create_model('swin_demo', drop_path_rate=0.5, drop_rate=0.1, attn_drop_rate=0.1)
  apply = _apply(model)
  x = _images(6, 2, 16, 16, 3)
  e1 = apply(variables, x, train=False)
  np.testing.assert_array_equal(apply(variables, x, train=False), e1)
  # 'rbg' keys: the same semantics, a much cheaper compile than threefry on CPU.
  key = lambda i: jax.random.key(i, impl='rbg')
  t1 = apply(variables, x, train=True, rngs={'dropout': key(1)})
  t2 = apply(variables, x, train=True, rngs={'dropout': key(2)})
  assert not np.allclose(t1, t2) and not np.allclose(t1, e1)


def test_bfloat16_compute_close_to_float32(demo):
  m32, variables = demo
  x = _images(7, 2, 16, 16, 3)
  a = _apply(m32)(variables, x)
  b = _apply(create_model('swin_demo', dtype=jnp.bfloat16))(variables, x)
  assert b.dtype == jnp.float32  # logits come back in float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  np.testing.assert_allclose(a, b, atol=0.05 * float(jnp.abs(a).max()) + 1e-3)
  assert not np.array_equal(a, b)  # the compute really ran in bfloat16


def test_fused_attention_formulation_gives_the_same_outputs(monkeypatch):
  """Window attention through jax.nn.dot_product_attention (the formulation TPU / GPU take:
  relative bias + shift mask + padded keys summed into one bias) equals the CPU einsum
  formulation."""
  B, ws, nh, C = 2, 4, 3, 24
  attn = swin.WindowAttention(ws, nh)
  x = _images(8, B, 4, ws * ws, C)  # [B, nW, N, C]: an 8x8 map in 4x4 windows
  region = jnp.asarray(swin.shifted_window_mask(8, 8, ws, 2))  # [nW, N, N]
  key_bias = np.zeros((B, 4, ws * ws), np.float32)
  key_bias[1, 3, -5:] = swin.PAD_VALUE  # image 1 padded in its last window
  variables = jax.jit(attn.init)(jax.random.PRNGKey(0), x, region, key_bias)
  variables = jax.tree.map(lambda t: t + 0.1 * _images(9, *t.shape), variables)  # a real table
  run = lambda: jax.jit(lambda v: attn.apply(v, x, region, key_bias))(variables)
  ref = run()
  monkeypatch.setattr(swin.layers, 'attention_implementation', lambda *a, **k: 'xla')
  np.testing.assert_allclose(run(), ref, rtol=1e-5, atol=1e-5)
