"""Shunted Transformer: sizes and FLOPs of the released models, input-size rule, stage
features, BatchNorm train / eval behaviour and drop-path.

Full-size models are only traced (jax.eval_shape / make_jaxpr); everything that runs is tiny.
Exactness against the official code: tests/test_convert_shunted.py.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import jaxpr_eqns
from swin_jax.models import create_model, list_models, model_family
from swin_jax.models import shunted
from swin_jax.tools import count

# The official SSA.py models (OliverRensu/Shunted-Transformer 6861101), num_classes=1000,
# sum(p.numel() for p in model.parameters()); README: 11.5M / 22.4M / 39.6M.
OFFICIAL_PARAMS = {'shunted_t': 11_553_576, 'shunted_s': 22_401_256, 'shunted_b': 39_614_376}
# Paper (CVPR 2022, Table 2): FLOPs (multiply-adds) at 224.
PAPER_GFLOPS = {'shunted_t': 2.1, 'shunted_s': 4.9, 'shunted_b': 8.1}
# A tiny model exercising sr 8 / 4 / 2 / 1 and a stem with one extra 3x3 block.
TINY = dict(img_size=64, num_classes=5, embed_dims=(16, 8, 8, 16), num_heads=(2, 2, 2, 4),
            mlp_ratios=(2, 2, 2, 2), depths=(1, 1, 1, 1), sr_ratios=(2, 8, 4, 1), num_conv=1,
            drop_path_rate=0.0, fast_cpu=True)  # same model (test_fast_cpu_is_the_same_model), faster XLA compile on CPU


@functools.lru_cache(maxsize=None)
def _stats(name):
  return count.model_stats(name)


def _tiny(**kw):
  return create_model('shunted_t', **dict(TINY, **kw))


def _images(key, *shape):
  return jax.random.normal(jax.random.PRNGKey(key), shape)


def test_registered():
  assert list_models('shunted') == ['shunted_b', 'shunted_s', 'shunted_t']
  assert model_family('shunted_s') == 'shunted'
  m = create_model('shunted_b')
  assert (m.depths, m.num_conv, m.sr_ratios, m.num_heads, m.mlp_ratios) == (
      (3, 4, 24, 2), 2, (8, 4, 2, 1), (2, 4, 8, 16), (8, 8, 4, 4))


@pytest.mark.parametrize('name', sorted(OFFICIAL_PARAMS))
def test_param_count_equals_official(name):
  assert _stats(name)['params'] == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize('name', sorted(PAPER_GFLOPS))
def test_flops_match_paper(name):
  gflops = _stats(name)['macs'] / 1e9
  assert abs(gflops - PAPER_GFLOPS[name]) / PAPER_GFLOPS[name] < 0.03, gflops


def test_variables_layout():
  """Official names, BatchNorm statistics in batch_stats, LayerNorm epsilons."""
  m = create_model('shunted_s')
  v = jax.eval_shape(lambda x: m.init(jax.random.PRNGKey(0), x), _sds(1, 224, 224, 3))
  assert sorted(v) == ['batch_stats', 'params']
  stem = v['params']['patch_embed1']
  assert sorted(stem) == ['conv_0', 'conv_1', 'conv_3', 'conv_4', 'conv_6', 'norm']
  assert sorted(v['batch_stats']['patch_embed1']) == ['conv_1', 'conv_4']
  assert stem['conv_0']['kernel'].shape == (7, 7, 3, 64) and 'bias' not in stem['conv_0']
  b1 = v['params']['block1_0']['attn']
  assert sorted(b1) == ['kv1', 'kv2', 'local_conv1', 'local_conv2', 'norm1', 'norm2', 'proj',
                        'q', 'sr1', 'sr2']
  assert b1['sr1']['kernel'].shape == (8, 8, 64, 64) and b1['sr2']['kernel'].shape == (4, 4, 64, 64)
  assert b1['local_conv1']['kernel'].shape == (3, 3, 1, 32)
  assert v['params']['block3_0']['attn']['sr2']['kernel'].shape == (1, 1, 256, 256)
  assert sorted(v['params']['block4_0']['attn']) == ['kv', 'local_conv', 'proj', 'q']
  assert v['params']['block4_0']['mlp']['dwconv']['dwconv']['kernel'].shape == (3, 3, 1, 2048)
  assert 'block3_11' in v['params'] and 'block3_12' not in v['params']


def _sds(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def test_layer_norm_epsilons():
  """1e-6 in blocks and stage norms, torch's default 1e-5 in patch embeds and the attention's
  token-aggregation norms, as the official code."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  m = _tiny()
  x = _sds(1, 64, 64, 3)
  v = jax.eval_shape(lambda x: m.init(jax.random.PRNGKey(0), x), x)
  eps = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.LayerNorm):
      eps['/'.join(context.module.path)] = context.module.epsilon
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(record):
    jax.eval_shape(m.apply, v, x)  # tracing is enough: nothing runs
  assert eps['block1_0/norm1'] == 1e-6 and eps['norm4'] == 1e-6
  assert eps['patch_embed1/norm'] == 1e-5 and eps['patch_embed2/norm'] == 1e-5
  assert eps['block1_0/attn/norm1'] == 1e-5 and eps['block2_0/attn/norm2'] == 1e-5


@pytest.mark.parametrize('size,nearest', [(200, '192 or 224'), (230, '224 or 256'),
                                          (16, '32')])
def test_input_size_not_multiple_of_32_is_refused(size, nearest):
  m = create_model('shunted_t')
  with pytest.raises(ValueError, match=rf'not a multiple of 32.*Nearest valid sizes: {nearest}'):
    jax.eval_shape(lambda x: m.init(jax.random.PRNGKey(0), x), _sds(1, size, 224, 3))
  assert shunted.valid_sizes(224, (8, 4, 2, 1)) == (224,)
  assert shunted.size_multiple((4, 2, 1, 1)) == 32 and shunted.size_multiple((2, 8, 4, 1)) == 64


def test_other_sizes_and_features():
  """Non-square multiples of the unit run; features have strides 4, 8, 16, 32."""
  m = create_model('shunted_t')
  out = jax.eval_shape(lambda x: m.init_with_output(jax.random.PRNGKey(0), x)[0],
                       _sds(2, 256, 320, 3))
  assert out.shape == (2, 1000)
  tiny = _tiny()
  x = _images(0, 2, 64, 128, 3)
  v = jax.jit(tiny.init)(jax.random.PRNGKey(0), x)
  feats = jax.jit(lambda v, x: tiny.apply(v, x, return_features=True))(v, x)
  assert [f.shape for f in feats] == [(2, 16, 32, 16), (2, 8, 16, 8), (2, 4, 8, 8),
                                      (2, 2, 4, 16)]
  assert all(f.dtype == jnp.float32 for f in feats)
  # The logits are the mean of the last (normed) stage map through the head.
  logits = jax.jit(tiny.apply)(v, x)
  want = feats[-1].mean((1, 2)) @ v['params']['head']['kernel'] + v['params']['head']['bias']
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-6)


def test_batchnorm_train_updates_stats_and_eval_uses_them():
  m = _tiny()
  x = _images(1, 4, 64, 64, 3) * 2.0 + 1.0
  v = jax.jit(m.init)(jax.random.PRNGKey(0), x)
  stats0 = v['batch_stats']['patch_embed1']['conv_1']
  np.testing.assert_array_equal(stats0['mean'], 0.0)
  np.testing.assert_array_equal(stats0['var'], 1.0)
  train_out, new = jax.jit(lambda v, x: m.apply(v, x, train=True, mutable=['batch_stats']))(
      v, x)
  s = new['batch_stats']['patch_embed1']['conv_1']
  # torch momentum 0.1 == flax 0.9: new = 0.9 * old + 0.1 * batch statistic.
  h = _conv_stem0(v, x)
  np.testing.assert_allclose(s['mean'], 0.1 * h.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(s['var'], 0.9 + 0.1 * h.var((0, 1, 2)), rtol=1e-4)
  eval_out = jax.jit(m.apply)(v, x)
  assert not np.allclose(train_out, eval_out, atol=1e-3)  # eval uses the running averages
  with pytest.raises(Exception, match='batch_stats'):
    m.apply(v, x, train=True)  # train mode must be allowed to update the statistics


def _conv_stem0(v, x):
  """The stem's first conv (7x7 / 2, padding 3) output, the input of BatchNorm conv_1."""
  k = v['params']['patch_embed1']['conv_0']['kernel']
  return jax.lax.conv_general_dilated(x, k, (2, 2), ((3, 3), (3, 3)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def test_drop_path_and_dropout_only_in_training():
  m = _tiny(drop_path_rate=0.5, drop_rate=0.1, attn_drop_rate=0.1)
  x = _images(2, 2, 64, 64, 3)
  v = jax.jit(m.init)(jax.random.PRNGKey(0), x)
  a = jax.jit(m.apply)(v, x)
  np.testing.assert_array_equal(a, jax.jit(m.apply)(v, x))
  train = jax.jit(lambda key: m.apply(v, x, train=True, mutable=['batch_stats'],
                                      rngs={'dropout': key})[0])
  run = lambda seed: train(jax.random.PRNGKey(seed))
  np.testing.assert_array_equal(run(0), run(0))
  assert not np.allclose(run(0), run(1))


@pytest.mark.parametrize('sr', [4, 1])
def test_fused_attention_formulation_gives_the_same_outputs(monkeypatch, sr):
  """Shunted attention (sr 4: coarse / fine heads over fewer keys; sr 1: all keys) through
  jax.nn.dot_product_attention (what TPU / GPU take) equals the CPU einsum formulation."""
  attn = shunted.ShuntedAttention(num_heads=4, sr_ratio=sr, fast_cpu=True)
  x = _images(5, 2, 8, 8, 16)
  variables = jax.jit(attn.init)(jax.random.PRNGKey(0), x)
  run = lambda: jax.jit(lambda v: attn.apply(v, x))(variables)
  ref = run()
  monkeypatch.setattr(shunted.layers, 'attention_implementation', lambda *a, **k: 'xla')
  np.testing.assert_allclose(run(), ref, rtol=1e-5, atol=1e-5)


def test_bad_configs_are_refused():
  x = _sds(1, 64, 64, 3)
  with pytest.raises(ValueError, match='even sr ratio'):
    jax.eval_shape(lambda x: _tiny(sr_ratios=(3, 8, 4, 1)).init(jax.random.PRNGKey(0), x), x)
  with pytest.raises(ValueError, match='embed_dims'):
    jax.eval_shape(lambda x: _tiny(embed_dims=(16, 8, 8)).init(jax.random.PRNGKey(0), x), x)
  with pytest.raises(ValueError, match=r'expected NHWC images \[B, H, W, 3\]'):
    jax.eval_shape(lambda x: _tiny().init(jax.random.PRNGKey(0), x), _sds(1, 3, 64, 64))


def test_fast_cpu_is_the_same_model():
  """fast_cpu (shifted multiply-adds / patchify matmuls instead of grouped / strided convs)
  has the same parameters and outputs."""
  x = _images(4, 2, 64, 64, 3)
  slow = _tiny(fast_cpu=False)  # the reference path (grouped / strided convs)
  v = jax.jit(slow.init)(jax.random.PRNGKey(0), x)  # jitted: eager init takes ~10x longer
  fast = _tiny(fast_cpu=True)
  vf = jax.eval_shape(fast.init, jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, vf) == jax.tree.map(jnp.shape, v)
  train = lambda m: jax.jit(lambda v, x: m.apply(v, x, train=True, mutable=['batch_stats']))
  ref, st = train(slow)(v, x)
  out, stf = train(fast)(v, x)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), stf, st)


def test_default_formulation_is_the_backends_fastest_and_counts_the_convolutions():
  """fast_cpu unset (None): the fast formulation where jax runs on CPU (here), the
  convolutions elsewhere; the FLOPs tool counts the convolutions either way (the shifted
  multiply-adds are elementwise ops, which count as 0 MACs)."""
  from swin_jax.tools import count
  model = create_model('shunted_t')
  assert model.fast_cpu is None and jax.default_backend() == 'cpu'
  assert shunted.use_fast_cpu(None) and not shunted.use_fast_cpu(False)
  x = _sds(1, 64, 64, 3)
  # depthwise convs as shifted multiply-adds: no grouped conv runs by default on CPU
  tiny = _tiny(fast_cpu=None)
  convs = lambda m: [e for e in jaxpr_eqns(jax.make_jaxpr(lambda v, x: m.apply(v, x))(
      jax.eval_shape(m.init, jax.random.PRNGKey(0), x), x))
      if e.primitive.name == 'conv_general_dilated' and
      e.params['feature_group_count'] > 1]
  assert not convs(tiny) and convs(_tiny(fast_cpu=False))
  macs = count.count_flops(tiny, (1, 64, 64, 3))
  assert macs == count.count_flops(_tiny(fast_cpu=False), (1, 64, 64, 3))
  # without the counting twin the fast path would count fewer (its depthwise convs vanish)
  closed = jax.make_jaxpr(lambda v, x: tiny.apply(v, x))(
      jax.eval_shape(tiny.init, jax.random.PRNGKey(0), x), x)
  assert count.jaxpr_macs(closed) < macs
