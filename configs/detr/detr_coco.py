"""DETR on COCO 2017 (Carion et al., ECCV 2020): one variant per row of Table 1.

  python -m swin_jax.main --config=configs/detr/detr_coco.py:R50 --workdir=gs://bucket/detr_r50 \
      --config.input.data_dir=gs://bucket/tensorflow_datasets \
      --config.init_from=/path/to/resnet50-0676ba61.pth   # torchvision ImageNet weights
  python -m swin_jax.main --mode=evaluate --config=configs/detr/detr_coco.py:R50 \
      --workdir=/tmp/eval --config.init_from=/path/to/detr-r50-e632da11.pth \
      --config.eval.annotation_file=/path/to/annotations/instances_val2017.json

Table 1 of the paper (val2017; 500 epochs, lr drop at 400), AP AP50 AP75 APs APm APl,
parameters and GFLOPs as the paper gives them (tests/test_detr.py checks our counts):

  R50        detr_resnet50        42.0  62.4  44.2  20.5  45.8  61.1    41M    86
  DC5-R50    detr_resnet50_dc5    43.3  63.1  45.9  22.5  47.3  61.1    41M   187
  R101       detr_resnet101       43.5  63.8  46.4  21.9  48.0  61.8    60M   152
  DC5-R101   detr_resnet101_dc5   44.9  64.7  47.7  23.7  49.5  62.3    60M   253

Shorter schedules as variants ('R50-300ep', 'DC5-R101-150ep', ...): 300 epochs with the lr
drop at 200 (the paper's ablation schedule, Sec. 4.2: R50 40.6 AP; "the 500-epoch schedule
adds 1.5 AP"), and 150 epochs with the drop at 100 (not in the paper; mmdetection's R50
150-epoch reproduction reports 40.1 AP).

Recipe (paper Sec. 4 / facebookresearch/detr main.py): AdamW lr 1e-4, backbone lr 1e-5, weight
decay 1e-4, gradient clipping 0.1, batch 64 (the paper: 16 GPUs x 4; here any mesh, e.g. 8 hosts
x 8), dropout 0.1, 6 + 6 layers, 100 queries, aux losses, ImageNet-pretrained backbone with
frozen BatchNorm, stem and layer1 not trained; DETR's augmentation (flip, multi-scale 480..800
max 1333, random resize + crop with p 0.5). Images are padded to a static 1344x1344 (jit).
"""
from configs import common

# row: (model name, paper AP (500 epochs))
_ROWS = {
    'R50': ('detr_resnet50', 42.0),
    'DC5-R50': ('detr_resnet50_dc5', 43.3),
    'R101': ('detr_resnet101', 43.5),
    'DC5-R101': ('detr_resnet101_dc5', 44.9),
}
# epochs: lr drop epoch
_SCHEDULES = {500: 400, 300: 200, 150: 100}


def get_config(arg='R50'):
  row, sched = arg.rsplit('-', 1) if arg.endswith('ep') else (arg, '')
  epochs = int(sched[:-2]) if sched else 500
  if row not in _ROWS or epochs not in _SCHEDULES:
    raise ValueError(f'unknown variant {arg!r} for configs/detr/detr_coco.py: use one of '
                     f'{list(_ROWS)}, optionally with -300ep or -150ep (e.g. R50-300ep)')
  c = common.detection_config()
  c.model.name = _ROWS[row][0]
  c.num_epochs = float(epochs)
  c.schedule.decay_epochs = (_SCHEDULES[epochs],)
  # Weights to start from: torchvision's ImageNet ResNet (resnet50-0676ba61.pth /
  # resnet101-63fe2227.pth, as the official code) or an official DETR checkpoint.
  c.init_from = ''
  c.eval_every_steps = 18_500  # ~10 epochs at batch 64 (118,287 images)
  return c
