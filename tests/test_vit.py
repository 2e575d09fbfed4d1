"""ViT behaviour on tiny configs; parameter counts of the full-size models (the 224 ViTs:
test_tools.py; the other resolutions and DeiT names: here)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swin_jax.models import create_model
from swin_jax.models import layers
from swin_jax.models.vit import posemb_sincos_2d


# sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters()), timm 1.0.31
# (num_classes=1000). The DeiT names are timm VisionTransformers, the same networks as the
# vit_* of their size; a 384 model differs from its 224 one only in pos_embed.
TIMM_PARAMS = {
    'vit_small_patch16_384': 22_196_584,
    'vit_base_patch16_384': 86_859_496,
    'vit_base_patch32_384': 88_297_192,
    'vit_large_patch16_384': 304_715_752,
    'deit_tiny_patch16_224': 5_717_416,
    'deit_small_patch16_224': 22_050_664,
    'deit_base_patch16_224': 86_567_656,
    'deit_base_patch16_384': 86_859_496,
}


def _init(model, size=32, batch=2):
  x = jax.random.normal(jax.random.PRNGKey(1), (batch, size, size, 3))
  return model.init(jax.random.PRNGKey(0), x), x


@pytest.mark.parametrize('kw', [dict(), dict(global_pool='avg'),
                                dict(pos_embed='sincos2d', global_pool='avg', class_token=False),
                                dict(representation_size=48)])
def test_forward_shapes_and_names(kw):
  model = create_model('vit_demo', num_classes=7, **kw)
  variables, x = _init(model)
  logits = model.apply(variables, x, train=False)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  p = variables['params']
  assert ('norm' in p) == (kw.get('global_pool', 'token') == 'token')
  assert ('fc_norm' in p) == (kw.get('global_pool') == 'avg')
  assert ('pos_embed' in p) == (kw.get('pos_embed', 'learn') == 'learn')
  assert ('pre_logits' in p) == ('representation_size' in kw)
  assert p['blocks_0']['attn']['qkv']['kernel'].shape == (96, 288)


def test_class_token_slot_in_pos_embed():
  model = create_model('vit_demo')
  variables, _ = _init(model)
  assert variables['params']['pos_embed'].shape == (1, 1 + 8 * 8, 96)


def test_sincos_matches_formula():
  pe = posemb_sincos_2d(3, 4, 8)
  # position (y=1, x=2) is row 1*4+2; omega = 1/10000**(i/(dim/4-1)), dim/4 = 2.
  omega = 1.0 / 10000.0 ** (np.arange(2) / 1.0)
  expect = np.concatenate([np.sin(2 * omega), np.cos(2 * omega), np.sin(1 * omega),
                           np.cos(1 * omega)])
  np.testing.assert_allclose(pe[0, 6], expect, rtol=1e-6)


def test_drop_path_and_dropout_active_only_in_training():
  model = create_model('vit_demo', drop_path_rate=0.5, drop_rate=0.1)
  variables, x = _init(model)
  a = model.apply(variables, x, train=False)
  b = model.apply(variables, x, train=False)
  np.testing.assert_array_equal(a, b)
  # The head starts at zero (logits all 0): perturb it so dropout shows in the logits.
  params = jax.tree.map(lambda v: v, variables['params'])
  params['head']['kernel'] = jax.random.normal(jax.random.PRNGKey(3), params['head']['kernel'].shape)
  t1 = model.apply({'params': params}, x, train=True, rngs={'dropout': jax.random.PRNGKey(1)})
  t2 = model.apply({'params': params}, x, train=True, rngs={'dropout': jax.random.PRNGKey(2)})
  e = model.apply({'params': params}, x, train=False)
  assert not np.allclose(t1, t2) and not np.allclose(t1, e)


def test_fused_attention_formulation_gives_the_same_outputs(monkeypatch):
  """ViT's attention through jax.nn.dot_product_attention (what TPU / GPU take) equals the
  CPU einsum formulation."""
  attn = layers.Attention(num_heads=3)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 17, 24))  # [B, 1 + 4x4 tokens, C]
  variables = jax.jit(attn.init)(jax.random.PRNGKey(0), x)
  run = lambda: jax.jit(lambda v: attn.apply(v, x))(variables)
  ref = run()
  monkeypatch.setattr(layers, 'attention_implementation', lambda *a, **k: 'xla')
  np.testing.assert_allclose(run(), ref, rtol=1e-5, atol=1e-5)


def test_image_size_errors_name_the_field():
  with pytest.raises(ValueError, match='img_size=30x30 is not divisible by patch_size=4'):
    _init(create_model('vit_demo', img_size=30), size=30)
  model = create_model('vit_demo')
  variables, _ = _init(model)
  with pytest.raises(ValueError, match='img_size'):
    model.apply(variables, jnp.zeros((1, 48, 48, 3)))


def test_unknown_model_and_override():
  with pytest.raises(ValueError, match='Did you mean vit_base_patch16_224'):
    create_model('vit_base_patch16_244')
  with pytest.raises(TypeError, match="unknown model override.*'num_clases'"):
    create_model('vit_demo', num_clases=3)


@pytest.mark.parametrize('name', sorted(TIMM_PARAMS))
def test_param_counts_match_timm(name):
  model = create_model(name)
  size = 384 if name.endswith('_384') else 224
  assert model.img_size == size  # the size timm's pretrained weights were trained at
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)['params']  # traced only
  assert sum(p.size for p in jax.tree.leaves(params)) == TIMM_PARAMS[name]
