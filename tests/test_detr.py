"""DETR: parameter counts, FLOPs, equality with facebookresearch/detr, padding masks.

Goldens (``tests/data/detr_goldens.npz``) come from the official code run on tiny configs
(a [1, 1, 1, 1]-block ResNet with the real widths, hidden 32, 2 + 2 layers, 10 queries)
whose weights are drawn here from a seed in the official state_dict layout
(``source_weights``), so only inputs, key shapes and outputs are stored.
"""
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from swin_jax.convert import load_torch_checkpoint
from swin_jax.models import build
from swin_jax.models import create_model
from swin_jax.models import detr as detr_lib
from swin_jax.tools import count

DATA = os.path.join(os.path.dirname(__file__), 'data', 'detr_goldens.npz')

TINY = dict(backbone_depths=(1, 1, 1, 1), hidden_dim=32, nheads=8, enc_layers=2,
            dec_layers=2, dim_feedforward=64, num_queries=10, num_classes=5)
# golden name -> (registered model, overrides)
CONFIGS = {
    'post': ('detr_resnet50', TINY),
    'dc5_pre': ('detr_resnet50_dc5', dict(TINY, pre_norm=True)),
}

# (total params, trainable params) of the official models (91 classes), counted with the
# official code: sum(p.numel()) and requires_grad only (stem + layer1 frozen).
OFFICIAL_COUNTS = {
    'detr_resnet50': (41_524_768, 41_302_368),
    'detr_resnet101': (60_464_672, 60_242_272),
    'detr_resnet50_dc5': (41_524_768, 41_302_368),
    'detr_resnet101_dc5': (60_464_672, 60_242_272),
}


def source_weights(shapes, seed):
  """Deterministic random weights in the official state_dict layout.

  shapes: list of [key, shape]. Scales keep activations O(1) through the ResNet.
  """
  out = {}
  for i, (key, shape) in enumerate(shapes):
    rng = np.random.default_rng([seed, i])
    leaf = key.rsplit('.', 1)[-1]
    shape = tuple(shape)
    if leaf == 'running_var' or (leaf == 'weight' and len(shape) == 1):
      v = rng.uniform(0.5, 1.5, shape)  # BN / LayerNorm scales
    elif len(shape) == 1 or leaf == 'running_mean':
      v = rng.normal(0.0, 0.1, shape)
    elif key.startswith('query_embed'):
      v = rng.normal(0.0, 1.0, shape)
    else:
      fan_in = math.prod(shape[1:])
      v = rng.normal(0.0, 1.0 / math.sqrt(fan_in), shape)
    out[key] = v.astype(np.float32)
  return out


@pytest.fixture(scope='module')
def goldens():
  return np.load(DATA)


def _rel_err(a, b):
  return float(np.max(np.abs(np.asarray(a) - b)) / (np.max(np.abs(b)) + 1e-12))


@pytest.mark.parametrize('name', sorted(OFFICIAL_COUNTS))
def test_param_counts(name):
  model = create_model(name)
  v = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 64, 64, 3))), jax.random.key(0))
  total = count.count_params(v)
  mask = detr_lib.trainable_mask(v['params'])
  trained = sum(math.prod(x.shape) for x, t in
                zip(jax.tree.leaves(v['params']), jax.tree.leaves(mask)) if t)
  assert (total, trained) == OFFICIAL_COUNTS[name]
  assert set(v) == {'params', 'frozen'}  # frozen BN vectors are not parameters


@pytest.mark.parametrize('cfg', sorted(CONFIGS))
def test_matches_official(goldens, cfg):
  name, overrides = CONFIGS[cfg]
  shapes = json.loads(str(goldens[f'{cfg}/shapes']))
  sd = source_weights(shapes, seed=int(goldens[f'{cfg}/seed']))
  variables = load_torch_checkpoint(name, sd, **overrides)
  model = create_model(name, **overrides)
  out = jax.jit(lambda v, x, m: model.apply(v, x, mask=m))(
      variables, goldens['images'], goldens['mask'])
  assert _rel_err(out['pred_logits'], goldens[f'{cfg}/pred_logits']) <= 1e-4
  assert _rel_err(out['pred_boxes'], goldens[f'{cfg}/pred_boxes']) <= 1e-4
  assert len(out['aux_outputs']) == overrides['dec_layers'] - 1
  assert _rel_err(out['aux_outputs'][0]['pred_logits'],
                  goldens[f'{cfg}/aux_logits']) <= 1e-4
  assert _rel_err(out['aux_outputs'][0]['pred_boxes'], goldens[f'{cfg}/aux_boxes']) <= 1e-4


def test_feature_mask_is_torch_nearest():
  # F.interpolate(mask[None].float(), size=(3, 5)).bool() on a 7x11 mask with 4x6 valid.
  mask = np.ones((1, 7, 11), bool)
  mask[0, :4, :6] = False
  got = np.asarray(detr_lib.interpolate_mask(jnp.asarray(mask), (3, 5)))
  rows = np.floor(np.arange(3) * np.float32(7 / 3)).astype(int)
  cols = np.floor(np.arange(5) * np.float32(11 / 5)).astype(int)
  np.testing.assert_array_equal(got, mask[:, rows][:, :, cols])


def test_padding_does_not_change_position_encoding_or_transformer():
  """An image padded into a larger canvas (with its mask) gets the same position codes and
  transformer outputs as alone, given the same backbone features. (The whole model cannot be
  exactly equal, in the official code neither: the backbone's convs see the canvas's zeros
  beyond the image's border, where an image alone gets conv padding after each BN.)"""
  h, w, H, W = 3, 4, 5, 7
  pad_mask = np.ones((1, H, W), bool)
  pad_mask[0, :h, :w] = False
  alone = detr_lib.sine_position_encoding(jnp.zeros((1, h, w), bool), 16)
  padded = detr_lib.sine_position_encoding(jnp.asarray(pad_mask), 16)
  np.testing.assert_allclose(padded[:, :h, :w], alone, rtol=1e-6, atol=1e-6)

  tr = detr_lib.Transformer(32, 4, 2, 2, 64, 0.1)
  rng = np.random.default_rng(0)
  src = rng.normal(size=(1, H, W, 32)).astype(np.float32)  # garbage in the padded part
  query = jnp.asarray(rng.normal(size=(6, 32)), jnp.float32)
  @jax.jit
  def run(s, m, p):
    B, hh, ww, d = s.shape
    return tr.apply(v, s.reshape(B, hh * ww, d), m.reshape(B, hh * ww), query,
                    p.reshape(B, hh * ww, d), deterministic=True)
  v = jax.jit(tr.init, static_argnames='deterministic')(jax.random.key(0), jnp.zeros((1, h * w, 32)), jnp.zeros((1, h * w), bool),
              query, jnp.zeros((1, h * w, 32)), deterministic=True)
  pe_a = detr_lib.sine_position_encoding(jnp.zeros((1, h, w), bool), 16)
  pe_p = detr_lib.sine_position_encoding(jnp.asarray(pad_mask), 16)
  out_a = run(jnp.asarray(src[:, :h, :w]), jnp.zeros((1, h, w), bool), pe_a)
  out_p = run(jnp.asarray(src), jnp.asarray(pad_mask), pe_p)
  np.testing.assert_allclose(out_p, out_a, rtol=1e-5, atol=1e-5)


def test_trainable_mask_and_gradients():
  model = create_model('detr_resnet50', **TINY)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 32, 32, 3)), jnp.float32)
  v = jax.jit(model.init)(jax.random.key(0), x)
  mask = detr_lib.trainable_mask(v['params'])
  body = mask['backbone_0']['body']
  assert not body['conv1']['kernel'] and not body['layer1_0']['conv2']['kernel']
  assert body['layer2_0']['conv2']['kernel'] and mask['transformer']['decoder']['norm']['scale']
  grads = jax.jit(jax.grad(
      lambda p: model.apply({**v, 'params': p}, x)['pred_logits'].sum()))(v['params'])
  gb = grads['backbone_0']['body']
  assert float(jnp.abs(gb['conv1']['kernel']).max()) == 0.0
  assert float(jnp.abs(gb['layer1_0']['conv1']['kernel']).max()) == 0.0
  assert float(jnp.abs(gb['layer2_0']['conv1']['kernel']).max()) > 0.0


def test_flops_r50_paper():
  # Paper Table 1: 86 GFLOPs for DETR-R50 (detectron2's flop_count = fvcore MACs), averaged
  # over the first 100 COCO val2017 images resized to shorter side 800 (longer <= 1333); no
  # single size is stated. The average must lie between the 4:3 size (800x1066: 81.2 G) and
  # 800x1200 (91.1 G), each within 7% of it.
  model = create_model('detr_resnet50')
  t = time.time()
  lo = count.count_flops(model, (1, 800, 1066, 3))
  hi = count.count_flops(model, (1, 800, 1200, 3))
  assert lo < 86e9 < hi, (lo, hi)
  assert abs(lo / 86e9 - 1) <= 0.07 and abs(hi / 86e9 - 1) <= 0.07, (lo, hi)
  assert time.time() - t < 60


def _random_variables(abstract, seed):
  """Random variables of the given shapes (ShapeDtypeStructs), drawn with numpy: jitting
  Flax's initialisers for DETR + Swin-T's 45M parameters costs ~25 s on 2 CPU cores.

  Kernels (rank >= 2) N(0, 1 / fan-in), fan-in = every axis but the last (Dense and Conv);
  query embeddings N(0, 1), as DETR's; norm scales 1 + N(0, 0.1^2); other vectors N(0, 0.1^2).
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = rng.standard_normal(leaf.shape, np.float32)
    name = path[-1].key
    if name == 'embedding':
      return noise
    if leaf.ndim >= 2:
      return noise * np.float32(1 / math.sqrt(math.prod(leaf.shape[:-1])))
    return (1 if name == 'scale' else 0) + np.float32(0.1) * noise

  return jax.tree_util.tree_map_with_path(draw, abstract)


def test_swin_backbone_config_runs_and_ignores_padding():
  """configs/detr/detr_swin_t.py as swin_jax.main builds it (Swin-T backbone with drop-path
  0.2, 6 + 6 layers, hidden 256, 100 queries, 91 classes; run with 1 + 2 layers), for real
  (eval mode) on two 128x160 images, image 1 padded (real top-left 96x112, mask True
  elsewhere): shapes, finite values, and the config's claim that detections do not depend
  on the padding: other values in image 1's padding leave both images' outputs unchanged."""
  full = build.model_from_config(load_config('configs/detr/detr_swin_t.py'))
  assert full.backbone == 'swin_tiny_patch4_window7_224'
  assert (full.enc_layers, full.dec_layers, full.hidden_dim, full.num_queries,
          full.num_classes, full.backbone_kwargs['drop_path_rate']) == (6, 6, 256, 100, 91, 0.2)
  # The real backbone under a 1 + 2 layer transformer: the padding claim is per layer, and
  # 10 more layers would only add compile time.
  model = full.clone(enc_layers=1, dec_layers=2)
  # Multiples of the 4-pixel patch, so no real token's patch holds a padded pixel; 112 = 7
  # tokens of the stride-16 stage, so its last merge pairs a real token with a padded one.
  h, w = 96, 112
  rng = np.random.default_rng(0)
  images = rng.standard_normal((2, 128, 160, 3)).astype(np.float32)
  mask = np.zeros((2, 128, 160), bool)
  mask[1, h:] = True
  mask[1, :, w:] = True
  variables = _random_variables(jax.eval_shape(model.init, jax.random.key(0), images, mask),
                                seed=0)
  assert set(variables) == {'params'}  # Swin has no frozen BatchNorm
  run = jax.jit(lambda v, x, m: model.apply(v, x, mask=m))
  out = run(variables, images, mask)

  layers = [out] + out['aux_outputs']
  assert len(layers) == 2  # the last decoder layer and 1 auxiliary one
  for o in layers:
    assert o['pred_logits'].shape == (2, 100, 92) and o['pred_boxes'].shape == (2, 100, 4)
    assert np.isfinite(o['pred_logits']).all() and np.isfinite(o['pred_boxes']).all()
  # The outputs depend on the image at all: the two images get different detections.
  assert np.abs(out['pred_logits'][0] - out['pred_logits'][1]).max() > 0.1

  repadded = images.copy()
  repadded[1][mask[1]] = 10 * rng.standard_normal((mask[1].sum(), 3))
  again = run(variables, repadded, mask)
  for o, a in zip(layers, [again] + again['aux_outputs']):
    for key in ('pred_logits', 'pred_boxes'):
      # Padded keys get exactly zero attention weight, in Swin's windows and in DETR's
      # transformer, and Swin zeroes padded tokens before each merge: no arithmetic on a
      # real token reads a padded value, so the outputs are equal bit for bit. (Image 1
      # alone at 96x112, without a mask, agrees to 5e-6: float32 sums at other shapes.)
      np.testing.assert_array_equal(a[key], o[key], err_msg=key)


def test_torchvision_resnet_converts_to_the_backbone(goldens):
  """An ImageNet ResNet in torchvision's layout (what DETR trains from) fills exactly the
  backbone leaves the full official checkpoint fills; fc is dropped, nothing else given."""
  name, overrides = CONFIGS['post']
  shapes = json.loads(str(goldens['post/shapes']))
  sd = source_weights(shapes, seed=int(goldens['post/seed']))
  full = load_torch_checkpoint(name, sd, **overrides)
  prefix = 'backbone.0.body.'
  tv = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
  tv['fc.weight'] = np.zeros((1000, 2048), np.float32)
  tv['fc.bias'] = np.zeros((1000,), np.float32)
  part = load_torch_checkpoint(name, tv, **overrides)
  assert set(part['params']) == {'backbone_0'}
  for col in ('params', 'frozen'):
    a = jax.tree_util.tree_leaves_with_path(part[col])
    b = dict(jax.tree_util.tree_leaves_with_path(full[col]))
    assert a and all(np.array_equal(v, b[p]) for p, v in a)


def test_group_norm_backbone_for_training_from_scratch():
  """backbone_norm='group' (the CPU demo) replaces FrozenBatchNorm by trainable GroupNorm:
  no 'frozen' collection, norm scales in params; a bad value names the field."""
  kw = dict(TINY, backbone_depths=(1, 1, 1), backbone_width=16, backbone_norm='group')
  shapes = jax.eval_shape(
      lambda: create_model('detr_resnet50', **kw).init(jax.random.key(0),
                                                       jnp.zeros((1, 64, 64, 3))))
  assert set(shapes) == {'params'}
  body = shapes['params']['backbone_0']['body']
  assert set(body['bn1']) == {'scale', 'bias'} and body['bn1']['scale'].shape == (16,)
  assert body['layer3_0']['downsample_1']['scale'].shape == (256,)
  with pytest.raises(ValueError, match='backbone_norm'):
    jax.eval_shape(lambda: create_model('detr_resnet50', **dict(kw, backbone_norm='bn')).init(
        jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
