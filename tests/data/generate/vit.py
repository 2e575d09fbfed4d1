"""Regenerates the goldens of tests/test_convert_vit.py with real timm (no official clone).

Writes timm_vit_token.safetensors, timm_vit_avg.safetensors, jax_vit.npz and vit_goldens.npz
into --out (tests/data/README.md says what each holds):

  python tests/data/generate/vit.py --out=/tmp/goldens
  python tests/data/generate/compare.py --out=/tmp/goldens
"""
import math

import numpy as np

import common

# The timm VisionTransformer of every golden here (vit_demo overrides in the tests).
CFG = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=4.0,
           num_classes=10)
# golden name -> (VisionTransformer overrides, torch weight seed)
POOLS = {'token': ({}, 0), 'avg': ({'global_pool': 'avg'}, 1)}
NPZ_SEED = 2


def jax_npz_weights(seed=NPZ_SEED):
  """Random CFG weights in the google-research/vision_transformer .npz layout.

  One default_rng(seed) draw per array in this order: kernels scaled by 1/sqrt(fan_in),
  biases, class token and position embedding by 0.5, LayerNorm scales 1 + 0.5 * randn.
  """
  rng = np.random.default_rng(seed)
  d, heads, p = CFG['embed_dim'], CFG['num_heads'], CFG['patch_size']
  hidden = int(d * CFG['mlp_ratio'])
  tokens = 1 + (CFG['img_size'] // CFG['patch_size']) ** 2
  w = {}

  def kernel(name, shape, fan_in):
    w[name] = (rng.standard_normal(shape) / math.sqrt(fan_in)).astype(np.float32)

  def vector(name, shape):
    w[name] = (0.5 * rng.standard_normal(shape)).astype(np.float32)

  def layer_norm(prefix):
    w[f'{prefix}/scale'] = 1 + (0.5 * rng.standard_normal(d)).astype(np.float32)
    vector(f'{prefix}/bias', d)

  kernel('embedding/kernel', (p, p, 3, d), p * p * 3)
  vector('embedding/bias', d)
  vector('cls', (1, 1, d))
  vector('Transformer/posembed_input/pos_embedding', (1, tokens, d))
  layer_norm('Transformer/encoder_norm')
  kernel('head/kernel', (d, CFG['num_classes']), d)
  vector('head/bias', CFG['num_classes'])
  for i in range(CFG['depth']):
    block = f'Transformer/encoderblock_{i}'
    layer_norm(f'{block}/LayerNorm_0')
    layer_norm(f'{block}/LayerNorm_2')
    attn = f'{block}/MultiHeadDotProductAttention_1'
    for proj in ('query', 'key', 'value'):
      kernel(f'{attn}/{proj}/kernel', (d, heads, d // heads), d)
      vector(f'{attn}/{proj}/bias', (heads, d // heads))
    kernel(f'{attn}/out/kernel', (heads, d // heads, d), d)
    vector(f'{attn}/out/bias', d)
    kernel(f'{block}/MlpBlock_3/Dense_0/kernel', (d, hidden), d)
    vector(f'{block}/MlpBlock_3/Dense_0/bias', hidden)
    kernel(f'{block}/MlpBlock_3/Dense_1/kernel', (hidden, d), hidden)
    vector(f'{block}/MlpBlock_3/Dense_1/bias', d)
  return w


def main():
  args = common.parse_flags(__doc__)
  common.import_timm()
  from timm.models import vision_transformer as vt  # pylint: disable=g-import-not-at-top

  x32_nchw, x32 = common.nhwc_normal(0, (2, 3, 32, 32))
  x48_nchw, x48 = common.nhwc_normal(1, (2, 3, 48, 48))
  gold = {'x32': x32, 'x48': x48}
  for pool, (overrides, seed) in POOLS.items():
    model = vt.VisionTransformer(**CFG, **overrides)
    common.randomize_(model.named_parameters(), seed, common.norm_weights(model))
    common.save_safetensors(model.state_dict(),
                            common.out_path(args.out, f'timm_vit_{pool}.safetensors'))
    gold[f'logits_{pool}'] = common.logits(model, x32_nchw)
    # A 4x4-grid checkpoint into a 6x6-grid model, the way timm loads pretrained weights.
    model48 = vt.VisionTransformer(**dict(CFG, img_size=48), **overrides)
    model48.load_state_dict(vt.checkpoint_filter_fn(model.state_dict(), model48))
    gold[f'logits48_{pool}'] = common.logits(model48, x48_nchw)
    gold[f'pos_embed48_{pool}'] = model48.pos_embed.detach().numpy()

  npz_path = common.out_path(args.out, 'jax_vit.npz')
  common.save_npz(npz_path, jax_npz_weights())
  for size, x_nchw, key in ((32, x32_nchw, 'logits_npz'), (48, x48_nchw, 'logits48_npz')):
    model = vt.VisionTransformer(**dict(CFG, img_size=size))
    model.load_pretrained(npz_path)  # timm's .npz loader, _load_weights
    gold[key] = common.logits(model, x_nchw)
  common.save_npz(common.out_path(args.out, 'vit_goldens.npz'), gold)


if __name__ == '__main__':
  main()
