"""A small ResNet classifier on the embedded digits (the DETR demo's backbone, alone).

  python -m swin_jax.main --config=configs/demo/resnet_digits.py --workdir=runs/resnet_demo

torchvision's ResNet-50 layout made CPU-sized (3 stages of one bottleneck, width 16,
GroupNorm), on scikit-learn's 8x8 digits upsampled to 24x24. configs/demo/detr_digits.py
runs this first (config.pretrain) and starts DETR's backbone from it.
"""
from configs import common


def get_config(arg=None):
  c = common.digits_resnet_config()
  return common.demo_variant(c, arg, 'configs/demo/resnet_digits.py')
