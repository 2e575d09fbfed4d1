"""DETR with a Swin-T backbone on COCO 2017 (not in the DETR or Swin papers).

  python -m swin_jax.main --config=configs/detr/detr_swin_t.py --workdir=gs://bucket/detr_swin_t \
      --config.input.data_dir=gs://bucket/tensorflow_datasets \
      --config.init_from=/path/to/swin_tiny_patch4_window7_224.pth

The DETR recipe of configs/detr/detr_coco.py:R50 (500 epochs, lr drop at 400, AdamW 1e-4,
backbone 1e-5, wd 1e-4, clip 0.1, batch 64) with the ResNet-50 replaced by the official Swin
detection backbone (SwinTransformer/Swin-Transformer-Object-Detection,
mmdet/models/backbones/swin_transformer.py; `detection=True` in swin_jax/models/swin.py):
Swin-T with window 7 and a shift in every stage at the input's own size, the stage maps
padded to whole windows, and the stage-4 map (stride 32, 768 channels) through its norm3 into
DETR's input projection. drop_path_rate 0.2 as the official Swin-T detection configs
(configs/swin/mask_rcnn_swin_tiny_*.py). init_from the official ImageNet-1k classifier
(swin_tiny_patch4_window7_224.pth, as those configs' pretrained=): the backbone loads from it,
norm3 starts at scale 1 / bias 0 as there, the transformer and heads start fresh.

One departure from the official backbone, on purpose: mask_padding=True masks padded tokens
(window padding and DETR's batch padding, which here pads every image to 1344x1344) out of
Swin's attention and zeroes them before each merge, so detections do not depend on how much
an image is padded; mmdet feeds the padding through (mask_padding=False is that, exactly).
No paper reports this combination, so there is no reference AP; the Swin paper's detection
results use Mask R-CNN / Cascade Mask R-CNN, other detectors.
"""
from configs import common


def get_config(arg=None):
  if arg:
    raise ValueError(f'unknown variant {arg!r} for configs/detr/detr_swin_t.py: it has none')
  c = common.detection_config()
  c.model.name = 'detr_resnet50'  # the DETR head; the backbone field replaces the ResNet
  c.model.backbone = 'swin_tiny_patch4_window7_224'
  c.model.backbone_kwargs = {'drop_path_rate': 0.2, 'detection': True, 'mask_padding': True,
                             'out_indices': (3,)}
  c.init_from = ''
  c.eval_every_steps = 18_500
  return c
