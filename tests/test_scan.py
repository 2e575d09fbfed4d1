"""scan_blocks / remat (swin_jax/models/scan.py): the scanned ViT, Swin and Shunted are the
unscanned functions with stacked parameters: official / timm checkpoints give the goldens'
logits, drop-path rates keep their per-block order, remat leaves gradients unchanged, the
converters, init_from and the count tool handle the stacked layout."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from conftest import jaxpr_eqns, load_config
from swin_jax.convert import load_torch_checkpoint
from swin_jax.models import create_model, model_family, scan
from swin_jax.tools import count

DATA = os.path.join(os.path.dirname(__file__), 'data')
# The configs the goldens were made with (tests/test_convert_{vit,swin,shunted}.py).
VIT_CFG = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=4.0,
               num_classes=10)
SWIN_CFG = dict(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
                window_size=4, mlp_ratio=4.0, num_classes=10)
SHUNTED_CFG = dict(img_size=64, num_classes=10, embed_dims=(64, 8, 8, 16),
                   num_heads=(2, 2, 2, 4), mlp_ratios=(1, 2, 2, 2), depths=(1, 1, 2, 2),
                   sr_ratios=(2, 8, 4, 1), num_conv=1, drop_path_rate=0.0)


def _gold(name):
  with np.load(os.path.join(DATA, name)) as f:
    return {k: f[k] for k in f.files}


def _rel_err(out, ref):
  out = np.asarray(out, np.float64)
  return float(np.abs(out - ref).max() / np.abs(ref).max())


def _leaves_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------------------------------------
# Checkpoints into scanned models: the goldens' logits.


def test_vit_timm_checkpoint_scanned_gives_the_unscanned_logits():
  gold = _gold('vit_goldens.npz')
  ckpt = os.path.join(DATA, 'timm_vit_token.safetensors')
  flat = load_torch_checkpoint('vit_demo', ckpt, **VIT_CFG)
  stacked = load_torch_checkpoint('vit_demo', ckpt, scan_blocks=True, **VIT_CFG)
  p, q = flat['params'], stacked['params']
  assert 'blocks_0' not in q and q['blocks']['attn']['qkv']['kernel'].shape == (2, 32, 96)
  for i in range(2):  # layer i of the stack is block i
    np.testing.assert_array_equal(q['blocks']['mlp']['fc1']['kernel'][i],
                                  p[f'blocks_{i}']['mlp']['fc1']['kernel'])
  _leaves_equal(scan.unstack(stacked, create_model('vit_demo', scan_blocks=True, **VIT_CFG)),
                flat)
  model = create_model('vit_demo', scan_blocks=True, **VIT_CFG)
  got = jax.jit(model.apply)(stacked, gold['x32'])
  want = jax.jit(create_model('vit_demo', **VIT_CFG).apply)(flat, gold['x32'])
  # The same float32 ops in the same order (a loop instead of unrolled): measured equal.
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * float(np.abs(want).max()))
  assert _rel_err(got, gold['logits_token']) <= 1e-4


def test_swin_timm_checkpoint_scanned_gives_the_golden_logits():
  """Both stages shift with a real mask (16x16 and 8x8 maps, window 4): the pairs must be
  (window, shifted window) in that order, each with its own stacked block."""
  gold = _gold('swin_goldens.npz')
  ckpt = os.path.join(DATA, 'timm_swin.safetensors')
  flat = load_torch_checkpoint('swin_demo', ckpt, **SWIN_CFG)['params']
  stacked = load_torch_checkpoint('swin_demo', ckpt, scan_blocks=True, **SWIN_CFG)['params']
  pair = stacked['layers_1']['pairs']
  assert set(stacked['layers_1']) == {'pairs'} and 'blocks_0' not in stacked['layers_0']
  np.testing.assert_array_equal(pair['blocks_1']['attn']['qkv']['kernel'][0],
                                flat['layers_1']['blocks_1']['attn']['qkv']['kernel'])
  model = create_model('swin_demo', scan_blocks=True, **SWIN_CFG)
  got = jax.jit(model.apply)({'params': stacked}, gold['x'])
  assert _rel_err(got, gold['logits_timm']) <= 1e-4


def test_shunted_official_checkpoint_scanned_gives_the_golden_logits():
  """Stages of 1 and 2 blocks; batch_stats of the stem pass through unstacked."""
  gold = _gold('shunted_goldens.npz')
  cfg = dict(SHUNTED_CFG, fast_cpu=True)  # the same function, without XLA:CPU's slow convs
  variables = load_torch_checkpoint('shunted_t', os.path.join(DATA,
                                                              'shunted_official_tiny.safetensors'),
                                    scan_blocks=True, **cfg)
  p = variables['params']
  assert p['block4']['attn']['q']['kernel'].shape == (2, 16, 16) and 'block4_0' not in p
  assert 'batch_stats' in variables and 'patch_embed1' in variables['batch_stats']
  got = jax.jit(create_model('shunted_t', scan_blocks=True, **cfg).apply)(variables, gold['x'])
  assert _rel_err(got, gold['logits']) <= 1e-4


# ---------------------------------------------------------------------------------------------
# Drop-path rates: per block, in order. With rates exactly 0 and 1 training is deterministic
# (a rate-1 block's branches are always dropped), so scanned and unscanned must agree.


@pytest.mark.parametrize('name, kw, size', [
    # dpr = [0, 1]: block 0 kept, block 1 dropped.
    ('vit_demo', dict(img_size=16, depth=2, embed_dim=24, num_heads=2), 16),
    # One stage, one pair: the window block at rate 0, the shifted one at rate 1.
    ('swin_demo', dict(depths=(2,), num_heads=(2,), embed_dim=16), 16),
    ('shunted_t', dict(img_size=16, embed_dims=(16,), num_heads=(2,), mlp_ratios=(2,),
                       depths=(2,), sr_ratios=(2,), fast_cpu=True), 16),
])
def test_drop_path_rates_keep_their_block_order(name, kw, size):
  kw = dict(kw, drop_path_rate=1.0, num_classes=0)  # pooled features: no zero-init head
  x = jax.random.normal(jax.random.PRNGKey(1), (4, size, size, 3))
  model, s_model = create_model(name, **kw), create_model(name, scan_blocks=True, **kw)

  @jax.jit
  def outputs(key):  # one compile: init and the three applies
    variables = model.init(key, x)
    rngs = {'dropout': jax.random.PRNGKey(3)}
    train = dict(train=True, rngs=rngs, mutable=['batch_stats'])  # Shunted's stem BN
    return (model.apply(variables, x, **train)[0],
            s_model.apply(scan.stack(variables, s_model, jnp), x, **train)[0],
            model.apply(variables, x))

  flat, scanned, evaluated = outputs(jax.random.PRNGKey(0))
  assert float(np.abs(np.asarray(flat) - np.asarray(evaluated)).max()) > 1e-3  # dropping
  np.testing.assert_allclose(scanned, flat, rtol=0, atol=1e-5 * float(np.abs(flat).max()))


@pytest.mark.parametrize('name, kw, size, stacks', [
    ('vit_demo', dict(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2), 16, 1),
    ('swin_demo', dict(depths=(2, 2), num_heads=(2, 2), embed_dim=16), 16, 2),
    ('shunted_t', dict(img_size=32, embed_dims=(16, 16), num_heads=(2, 2), mlp_ratios=(2, 2),
                       depths=(1, 2), sr_ratios=(2, 1), fast_cpu=True), 32, 2),
])
def test_drop_path_draws_once_per_stack_and_scan_draws_the_same_masks(name, kw, size, stacks):
  """layers.drop_path_noise: one uniform draw per stack of blocks (ViT: the model; Swin and
  Shunted: each stage), so the jaxpr holds ``stacks`` random_bits, not one per branch; and
  the scanned model, which slices the same draw, drops exactly the unscanned model's
  branches (rate 0.5: some samples dropped, some kept, in every block)."""
  kw = dict(kw, drop_path_rate=0.5, num_classes=0)
  x = jax.random.normal(jax.random.PRNGKey(1), (8, size, size, 3))
  model, s_model = create_model(name, **kw), create_model(name, scan_blocks=True, **kw)
  train = dict(train=True, rngs={'dropout': jax.random.PRNGKey(3)}, mutable=['batch_stats'])

  @jax.jit
  def outputs(key):
    variables = model.init(key, x)
    return (model.apply(variables, x, **train)[0],
            s_model.apply(scan.stack(variables, s_model, jnp), x, **train)[0],
            model.apply(variables, x))

  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  for m, v in ((model, variables), (s_model, jax.eval_shape(
      lambda v: scan.stack(v, s_model, jnp), variables))):
    jaxpr = jax.make_jaxpr(lambda v: m.apply(v, x, **train))(v).jaxpr
    draws = [e for e in jaxpr_eqns(jaxpr) if e.primitive.name == 'random_bits']
    assert len(draws) == stacks, m.scan_blocks
  flat, scanned, evaluated = outputs(jax.random.PRNGKey(0))
  assert float(np.abs(np.asarray(flat) - np.asarray(evaluated)).max()) > 1e-3  # dropping
  np.testing.assert_allclose(scanned, flat, rtol=0, atol=1e-5 * float(np.abs(flat).max()))


# ---------------------------------------------------------------------------------------------
# remat: the same gradients, recomputed.

GRAD_CFG = dict(img_size=16, depth=2, embed_dim=24, num_heads=2, num_classes=5,
                drop_path_rate=0.5, drop_rate=0.1)


_GRADS = {}


def _grads(scan_blocks, remat, params):
  """(gradient, jaxpr text) of a dropout / drop-path training loss, once per setting."""
  if (scan_blocks, remat) in _GRADS:
    return _GRADS[scan_blocks, remat]
  model = create_model('vit_demo', scan_blocks=scan_blocks, remat=remat, **GRAD_CFG)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
  labels = jnp.arange(4) % 5

  def loss(p):
    logits = model.apply({'params': p}, x, train=True, rngs={'dropout': jax.random.PRNGKey(2)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
  _GRADS[scan_blocks, remat] = jax.jit(jax.grad(loss))(params), jaxpr
  return _GRADS[scan_blocks, remat]


@pytest.fixture(scope='module')
def vit_params():
  model = create_model('vit_demo', **GRAD_CFG)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))['params']
  params = jax.tree.map(np.asarray, params)
  head = params['head']['kernel']  # timm's zero head would zero every other gradient
  params['head']['kernel'] = jax.random.normal(jax.random.PRNGKey(5), head.shape) * 0.1
  stacked = scan.stack({'params': params}, create_model('vit_demo', scan_blocks=True,
                                                        **GRAD_CFG))['params']
  return params, stacked


@pytest.mark.parametrize('remat', ['full'])  # a named policy: the same path (config test)
def test_remat_gives_the_same_gradients(vit_params, remat):
  """Scanned, dropout and drop-path on: the recomputed forward pass must draw the same
  masks. Measured: equal to float32 rounding (<= 1e-7 of each leaf's largest entry)."""
  want, plain_jaxpr = _grads(True, 'none', vit_params[1])
  got, jaxpr = _grads(True, remat, vit_params[1])
  assert 'checkpoint' in jaxpr or 'remat' in jaxpr  # remat is really applied
  assert 'checkpoint' not in plain_jaxpr and 'remat' not in plain_jaxpr
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert float(np.abs(w).max()) > 0
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-6 * float(np.abs(w).max()))


def test_remat_of_unscanned_blocks_checkpoints_each_block(vit_params):
  """Traced only (the gradient is the scanned case's function): one checkpoint per block."""
  model = create_model('vit_demo', remat='full', **GRAD_CFG)
  loss = lambda p: model.apply({'params': p}, jnp.zeros((1, 16, 16, 3))).sum()
  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(vit_params[0]))
  assert len(re.findall(r'\b(?:remat2|checkpoint)\[', jaxpr)) >= GRAD_CFG['depth']


# ---------------------------------------------------------------------------------------------
# Full-size layouts (traced only), the count tool, init_from.


@pytest.mark.parametrize('name, leaf, shape, n_params', [
    # Parameter counts: timm's (tests/test_tools.py, test_swin.py), the official Shunted's
    # (test_shunted.py): stacking adds and loses nothing.
    ('vit_large_patch16_224', ('blocks', 'attn', 'qkv', 'kernel'), (24, 1024, 3072),
     304_326_632),
    ('swin_base_patch4_window7_224',
     ('layers_2', 'pairs', 'blocks_1', 'attn', 'relative_position_bias_table'), (9, 169, 16),
     87_768_224),
    ('shunted_s', ('block3', 'mlp', 'dwconv', 'dwconv', 'kernel'), (12, 3, 3, 1, 1024),
     22_401_256),
])
def test_full_size_stacked_shapes_and_param_counts(name, leaf, shape, n_params):
  model = create_model(name, scan_blocks=True)
  stacked = count.abstract_variables(model, count.input_shape_for(model))  # traced only
  node = stacked['params']
  for k in leaf:
    node = node[k]
  assert tuple(node.shape) == shape
  assert count.count_params(stacked) == n_params


def test_count_tool_macs_and_xla_flops_of_a_scanned_model():
  """MACs: the jaxpr walk multiplies the scan body by its length; XLA's flops (which count
  a loop body once) come from the unscanned equivalent."""
  kw = dict(img_size=16, depth=3, embed_dim=24, num_heads=2)
  a = count.model_stats('vit_demo', xla=True, **kw)
  b = count.model_stats('vit_demo', xla=True, scan_blocks=True, **kw)
  assert (a['params'], a['macs'], a['xla_flops']) == (b['params'], b['macs'], b['xla_flops'])


def test_init_from_a_per_block_workdir_into_a_scanned_model(monkeypatch, tmp_path):
  """An Orbax workdir of an unscanned run (per-block params) into a scanned run, and a
  checkpoint file (the converters) into one: both land stacked, values unchanged."""
  from swin_jax.train import checkpointing
  cfg = dict(SWIN_CFG)
  ckpt = os.path.join(DATA, 'timm_swin.safetensors')
  flat = load_torch_checkpoint('swin_demo', ckpt, **cfg)
  s_model = create_model('swin_demo', scan_blocks=True, **cfg)
  want = scan.stack(flat, s_model)
  like = jax.tree.map(np.zeros_like, want)
  monkeypatch.setattr(checkpointing, '_restore_orbax_variables', lambda path: flat)
  got, skipped = checkpointing.load_variables_for_init(
      str(tmp_path), 'swin_demo', like, model_overrides=dict(cfg, scan_blocks=True),
      model=s_model)
  assert not skipped
  _leaves_equal(got, want)
  got, _ = checkpointing.load_variables_for_init(
      ckpt, 'swin_demo', like, model_overrides=dict(cfg, scan_blocks=True), model=s_model)
  _leaves_equal(got, want)


# ---------------------------------------------------------------------------------------------
# Config and errors.


def test_config_fields_reach_the_model_and_stay_out_when_unset():
  from swin_jax.models.build import model_from_config, model_overrides
  c = load_config('configs/demo/vit_digits.py', 'quick')
  assert 'scan_blocks' not in model_overrides(c) and 'remat' not in model_overrides(c)
  c.model.scan_blocks, c.model.remat = True, 'dots_saveable'
  model = model_from_config(c)
  assert model.scan_blocks and model.remat == 'dots_saveable'


def test_errors_name_the_field_and_the_fix():
  x = jnp.zeros((1, 16, 16, 3))
  with pytest.raises(ValueError, match=r'scan_blocks.*odd depth.*config.model.scan_blocks'):
    jax.eval_shape(create_model('swin_demo', depths=(2, 3), scan_blocks=True).init,
                   jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match=r"remat='half' \(config.model.remat\): use one of"):
    jax.eval_shape(create_model('vit_demo', img_size=16, remat='half').init,
                   jax.random.PRNGKey(0), x)


# ---------------------------------------------------------------------------------------------
# The optimizer over stacked leaves: each layer's slice is updated as its block would be
# unscanned (a stack of biases [L, D] gets no weight decay; layer-wise decay, lr_mults and
# frozen regexes over the per-block names act per slice; clipping sees the trained slices).

@pytest.mark.parametrize('name, kw, size, lr_mults, frozen', [
    ('vit_demo', dict(img_size=16, depth=2, embed_dim=24, num_heads=2), 16,
     (('^blocks_1/', 0.1),), ('^blocks_0/mlp/',)),
    ('swin_demo', dict(depths=(4, 2), num_heads=(2, 2), embed_dim=16), 32,  # 2 pairs in stage 0
     (('^layers_0/blocks_2/', 0.1),), ('^layers_0/blocks_1/attn/',)),
    ('shunted_t', dict(img_size=32, embed_dims=(16, 16), num_heads=(2, 2), mlp_ratios=(2, 2),
                       depths=(2, 2), sr_ratios=(2, 1), num_conv=0, fast_cpu=True), 32,
     (('^block1_1/', 0.1),), ('^block2_0/mlp/',)),
])
def test_optimizer_of_a_scanned_model_updates_as_per_block(name, kw, size, lr_mults, frozen):
  import ml_collections
  from swin_jax.train import optimizers
  layer_decay = 0.75
  kw = dict(kw, num_classes=5)
  model, s_model = create_model(name, **kw), create_model(name, scan_blocks=True, **kw)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
  rng = np.random.default_rng(0)
  params, grads = ({'params': jax.tree.map(
      lambda a: rng.standard_normal(a.shape).astype(np.float32), shapes['params'])}
      for _ in range(2))
  flat = traverse_util.flatten_dict(params['params'], sep='/')
  for pattern in [p for p, _ in lr_mults] + list(frozen):  # each names some of a block
    assert any(re.search(pattern, k) for k in flat), pattern

  def tx(scan_blocks):
    c = ml_collections.ConfigDict({
        'model': dict(name=name, scan_blocks=scan_blocks, **kw),
        'optimizer': dict(name='adamw', lr=1e-3, weight_decay=0.05, layer_decay=layer_decay,
                          lr_mults=lr_mults, frozen=frozen, clip_grad_norm=1.0)})
    return optimizers.make_optimizer(c, optax.constant_schedule(1e-3))

  def updates(t, p, g):
    return jax.jit(lambda p, g: t.update(g, t.init(p), p)[0])(p, g)

  want = updates(tx(False), params['params'], grads['params'])
  stacked = lambda tree: scan.stack({'params': tree}, s_model)['params']
  got = updates(tx(True), stacked(params['params']), stacked(grads['params']))
  want = stacked(jax.tree.map(np.asarray, want))
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)
  # The formula on one stacked leaf: slice k of the first scan is block k + 1 of L (Swin:
  # its pairs' first blocks, 1 + 2k).
  depths = (kw['depth'],) if name == 'vit_demo' else kw['depths']
  prefix, steps = s_model.scan_layout()[0]
  first = prefix + (('blocks_0',) if name == 'swin_demo' else ())
  stride = 2 if name == 'swin_demo' else 1
  mults = optimizers.layer_decay_mults(model_family(name), depths, 0.75, got, s_model)
  leaf = [v for k, v in traverse_util.flatten_dict(mults).items() if k[:len(first)] == first][0]
  top = sum(depths) + 1
  np.testing.assert_allclose(np.ravel(leaf),
                             [0.75 ** (top - 1 - stride * k) for k in range(len(steps))],
                             rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Dropout: the scan splits the 'dropout' RNG, so each layer draws its own masks.

@pytest.mark.parametrize('name, kw, size', [
    ('vit_demo', dict(img_size=16, depth=2, embed_dim=24, num_heads=2), 16),
    ('swin_demo', dict(depths=(4,), num_heads=(2,), embed_dim=16), 16),  # 2 scanned pairs
])
def test_scanned_layers_draw_their_own_dropout_masks(name, kw, size):
  import flax.linen as nn
  model = create_model(name, scan_blocks=True, drop_rate=0.5, num_classes=5, **kw)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, size, size, 3))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  _, state = jax.jit(lambda v: model.apply(
      v, x, train=True, rngs={'dropout': jax.random.PRNGKey(2)}, mutable=['intermediates'],
      capture_intermediates=lambda mdl, _: isinstance(mdl, nn.Dropout)))(variables)
  prefix, steps = model.scan_layout()[0]
  outs = {k: v[0] for k, v in traverse_util.flatten_dict(state['intermediates']).items()
          if k[:len(prefix)] == prefix}
  assert outs and all(v.shape[0] == len(steps) == 2 for v in outs.values()), outs.keys()
  for k, out in outs.items():
    dropped = np.asarray(out).reshape(2, -1) == 0  # [layer, elements]
    n = dropped.shape[1]
    tol = 5 * (0.25 / n) ** 0.5  # 5 sigma of a Bernoulli(0.5) mean over n draws
    np.testing.assert_allclose(dropped.mean(1), 0.5, atol=tol, err_msg='/'.join(k))
    # One mask for both layers would agree everywhere; independent ones on half the entries.
    assert abs((dropped[0] == dropped[1]).mean() - 0.5) < tol, '/'.join(k)
