"""DETR with a Swin-T backbone on COCO 2017 (not in the DETR or Swin papers).

  python -m swin_jax.main --config=configs/detr/detr_swin_t.py --workdir=gs://bucket/detr_swin_t \
      --config.input.data_dir=gs://bucket/tensorflow_datasets \
      --config.init_from=/path/to/swin_tiny_patch4_window7_224.pth

The DETR recipe of configs/detr/detr_coco.py:R50 (500 epochs, lr drop at 400, AdamW 1e-4,
backbone 1e-5, wd 1e-4, clip 0.1, batch 64) with the ResNet-50 replaced by
swin_tiny_patch4_window7_224 (ImageNet-1k weights from the official release through
init_from: the backbone_0/body/* leaves load, the transformer and heads start fresh): its last
stage (stride 32, 768 channels) feeds DETR's input projection; padded pixels are masked inside
Swin's attention too, so detections do not depend on how much an image is padded. No paper
reports this combination, so there is no reference AP; the Swin paper's detection results use
Cascade Mask R-CNN, a different detector.
"""
from configs import common


def get_config(arg=None):
  if arg:
    raise ValueError(f'unknown variant {arg!r} for configs/detr/detr_swin_t.py: it has none')
  c = common.detection_config()
  c.model.name = 'detr_resnet50'  # the DETR head; the backbone field replaces the ResNet
  c.model.backbone = 'swin_tiny_patch4_window7_224'
  c.model.backbone_kwargs = {'drop_path_rate': 0.2}
  c.init_from = ''
  c.eval_every_steps = 18_500
  return c
