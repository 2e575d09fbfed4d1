"""Shunted Transformer as DETR's backbone (configs/detr/detr_shunted_s.py, in small): the
official checkpoint's conversion into backbone_0/body, and the maps DETR takes equal to the
classifier's stage maps (its norm1..norm4 outputs on the logits path), BatchNorm frozen.
"""
import os

import jax
import numpy as np

from swin_jax.convert import load_torch_checkpoint
from swin_jax.models import create_model
from swin_jax.models import detr as detr_lib

DATA = os.path.join(os.path.dirname(__file__), 'data')
CKPT = os.path.join(DATA, 'shunted_official_tiny.safetensors')
# The official tiny Shunted (test_convert_shunted.CFG) as the backbone.
BODY = dict(embed_dims=(64, 8, 8, 16), num_heads=(2, 2, 2, 4), mlp_ratios=(1, 2, 2, 2),
            depths=(1, 1, 2, 2), sr_ratios=(2, 8, 4, 1), num_conv=1, drop_path_rate=0.0)
# img_size: where the converter traces the body (a multiple of 64 for these sr ratios).
DETR = dict(backbone='shunted_t', backbone_kwargs=dict(BODY, img_size=64, frozen_bn=True),
            num_classes=3, num_queries=4, hidden_dim=16, nheads=2, enc_layers=1, dec_layers=1,
            dim_feedforward=32, dropout=0.0)
STAGE_NORMS = ('norm1', 'norm2', 'norm3', 'norm4')


def _random_like(abstract, seed):
  """numpy values for an abstract variables tree (no XLA compile)."""
  rng = np.random.default_rng(seed)

  def draw(leaf):
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    return noise / np.sqrt(np.prod(leaf.shape[:-1])) if leaf.ndim >= 2 else 0.1 * noise
  return jax.tree.map(draw, abstract)


def test_shunted_checkpoint_initialises_the_detr_backbone():
  """config.init_from=<official Shunted .pth> for a DETR: backbone_0/body gets exactly the
  classifier's conversion without its head, BatchNorm statistics included."""
  variables = load_torch_checkpoint('detr_resnet50', CKPT, **DETR)
  cls = load_torch_checkpoint('shunted_t', CKPT, img_size=64, num_classes=10, **BODY)
  assert set(variables) == {'params', 'batch_stats'}
  for col in variables:
    assert set(variables[col]) == {'backbone_0'}
    want = {k: v for k, v in cls[col].items() if k != 'head'}
    jax.tree.map(np.testing.assert_array_equal, variables[col]['backbone_0']['body'], want)


def test_detr_backbone_maps_equal_the_classifier_stages():
  """One compile of two forwards on random weights and BatchNorm statistics: the classifier
  (eval, its stage norms captured on the logits path) and the DETR in training with
  frozen_bn and a padding mask (its backbone's stage norms and output captured). The DETR's
  backbone maps are the classifier's four stages (return_features, multi-scale use), its
  input is the last; frozen BatchNorm normalises with the running statistics in training
  and leaves them unchanged; the mask is accepted and not used."""
  tiny = dict(embed_dims=(16, 8, 8, 16), num_heads=(2, 2, 2, 4), mlp_ratios=(2, 2, 2, 2),
              depths=(1, 1, 1, 1), sr_ratios=(2, 8, 4, 1), num_conv=1, drop_path_rate=0.0,
              fast_cpu=True, img_size=64)
  cfg = dict(DETR, backbone_kwargs=dict(tiny, frozen_bn=True))
  model = create_model('detr_resnet50', **cfg)
  cls_model = create_model('shunted_t', num_classes=10, **tiny)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 64, 128, 3)).astype(np.float32)
  mask = np.zeros((2, 64, 128), bool)
  mask[1, :, 96:] = True
  detr_vars = _random_like(jax.eval_shape(model.init, jax.random.PRNGKey(0), x, mask), 1)
  stats = detr_vars['batch_stats']['backbone_0']['body']['patch_embed1']
  for bn in stats.values():  # running statistics unlike any batch's: frozen BN shows
    bn['mean'] = 0.5 + bn['mean']
    bn['var'] = 0.5 + np.abs(bn['var'])
  cls_vars = {col: dict(tree['backbone_0']['body']) for col, tree in detr_vars.items()}
  cls_vars['params']['head'] = {'kernel': np.zeros((16, 10), np.float32),
                                'bias': np.zeros(10, np.float32)}
  is_norm = lambda m, _: m.name in STAGE_NORMS and m.parent.name in ('body', None)

  @jax.jit
  def run(cls_vars, detr_vars, x, mask):
    _, ref = cls_model.apply(cls_vars, x, capture_intermediates=is_norm,
                             mutable=['intermediates'])
    out, state = model.apply(
        detr_vars, x, mask=mask, train=True, mutable=['batch_stats', 'intermediates'],
        capture_intermediates=lambda m, _: is_norm(m, _) or isinstance(m, detr_lib.Backbone))
    return ref['intermediates'], out, state

  ref, out, state = run(cls_vars, detr_vars, x, mask)
  ref = [ref[n]['__call__'][0] for n in STAGE_NORMS]
  assert [r.shape for r in ref] == [(2, 16, 32, 16), (2, 8, 16, 8), (2, 4, 8, 8), (2, 2, 4, 16)]
  backbone = state['intermediates']['backbone_0']
  # The same modules on the same weights: equal to float32 rounding of other fusions.
  for n, r in zip(STAGE_NORMS, ref):
    np.testing.assert_allclose(backbone['body'][n]['__call__'][0], r, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(backbone['__call__'][0], ref[-1], rtol=1e-5, atol=1e-5)
  jax.tree.map(np.testing.assert_array_equal, state['batch_stats'], detr_vars['batch_stats'])
  assert out['pred_logits'].shape == (2, 4, 4) and out['pred_boxes'].shape == (2, 4, 4)
  assert np.isfinite(out['pred_logits']).all() and np.isfinite(out['pred_boxes']).all()
