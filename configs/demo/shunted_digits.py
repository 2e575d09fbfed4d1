"""Quickstart: a small 2-stage Shunted Transformer on the embedded digits dataset
(scikit-learn's 1,797 real 8x8 handwritten digits, upsampled to 32x32), on CPU in a few
minutes.

  python -m swin_jax.main --config=configs/demo/shunted_digits.py --workdir=runs/shunted_demo

The model is `shunted_t`'s code with small overrides: the convolutional stem (7x7/2 + BN +
ReLU, 2x2/2, LayerNorm) gives an 8x8 token map of dim 48; stage 1 (2 blocks, 2 heads) uses
shunted self-attention with sr 4 (one head over the 2x2 coarse tokens, one over the 4x4 fine
ones), an overlapping 3x3/2 patch embedding takes it to 4x4 x 96 for stage 2 (2 blocks, 4
heads, sr 1). Inputs must be multiples of 16 at these sr ratios (32 at the released models'
(8, 4, 2, 1)), so the digits go in at 32x32 rather than the ViT demo's 16x16. The stem's
BatchNorm statistics train along (the `batch_stats` collection of the checkpoints).

Variants: `:quick` (a few steps, for tests).
"""
from ml_collections import config_dict

from configs import common


def get_config(arg=None):
  c = common.digits_config(image_size=32)  # multiples of 32 at these sr ratios
  c.model.name = 'shunted_t'
  c.model.embed_dims = (48, 96)
  c.model.num_heads = (2, 4)
  c.model.mlp_ratios = (4, 4)
  c.model.depths = (2, 2)
  c.model.sr_ratios = (4, 1)
  c.model.num_conv = 0
  # None: the model's default, the backend's fastest (on CPU depthwise convs as shifted
  # multiply-adds, kernel = stride convs as matmuls: the same model, ~5x faster there);
  # --config.model.fast_cpu=True / False forces one.
  c.model.fast_cpu = config_dict.placeholder(bool)
  c.num_epochs = 30.0  # 660 steps
  return common.demo_variant(c, arg, 'configs/demo/shunted_digits.py')
