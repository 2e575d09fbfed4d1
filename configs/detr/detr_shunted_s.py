"""DETR with a Shunted-S backbone on COCO 2017 (not in the DETR or Shunted papers).

  python -m swin_jax.main --config=configs/detr/detr_shunted_s.py --workdir=gs://bucket/detr_sh_s \
      --config.input.data_dir=gs://bucket/tensorflow_datasets \
      --config.init_from=/path/to/ckpt_S.pth

The DETR recipe of configs/detr/detr_coco.py:R50 (500 epochs, lr drop at 400, AdamW 1e-4,
backbone 1e-5, wd 1e-4, clip 0.1, batch 64) with the ResNet-50 replaced by shunted_s
(swin_jax/models/shunted.py, exact to OliverRensu/Shunted-Transformer): its last stage
(stride 32, 512 channels, after norm4) feeds DETR's input projection; return_features gives
all four maps for a multi-scale head. The stem's BatchNorms are frozen (frozen_bn: running
averages from the ImageNet checkpoint, never updated), as DETR freezes its ResNet's
BatchNorm; frozen_bn=False trains them with the statistics of the global batch (synchronised).
init_from the official ImageNet-1k checkpoint (ckpt_S.pth of the Shunted release): the
backbone (weights and BatchNorm statistics) loads, the transformer and heads start fresh.
Shunted needs H and W multiples of 32: the 1344x1344 padded canvas is, and the padding mask
is not used inside Shunted (its attention is global; a backbone of mmdet sees padding so
too). No paper reports this combination, so there is no reference AP; the Shunted paper's
detection results use Mask R-CNN / RetinaNet.
"""
from configs import common


def get_config(arg=None):
  if arg:
    raise ValueError(f'unknown variant {arg!r} for configs/detr/detr_shunted_s.py: it has none')
  c = common.detection_config()
  c.model.name = 'detr_resnet50'  # the DETR head; the backbone field replaces the ResNet
  c.model.backbone = 'shunted_s'
  c.model.backbone_kwargs = {'frozen_bn': True}  # drop_path_rate: shunted_s's 0.2
  c.init_from = ''
  c.eval_every_steps = 18_500
  return c
