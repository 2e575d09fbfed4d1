"""Published numbers of the registered models: what ``swin_jax.tools.tables`` prints beside ours.

One ``PaperRow`` is one row of a paper's (or an official release's) results table: the
registered model that builds it, the input size its FLOPs and accuracy refer to, the
parameters, GFLOPs and top-1 / AP as the source prints them, where each number comes from
(a key of ``SOURCES``), the config that evaluates it (``python -m swin_jax.main
--mode=evaluate --config=...``) and the official checkpoint's file name.

A model may have several rows (Swin-B: ImageNet-1K from scratch, and ImageNet-22K
pre-trained then fine-tuned); every registered model but the demos has at least one
(``tests/test_tables.py``). Numbers are strings, exactly as printed by their source (so
``'28'`` for "28M" and ``'81.3'`` for "81.3%"); a number no source gives is ``None`` and
prints as '-', never a guess.

FLOPs are multiply-adds (the papers' and fvcore's convention, as ``swin_jax.tools.count``).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

# Registered models that exist for tests and CPU demos; they have no paper.
DEMO_MODELS = ('vit_demo', 'swin_demo')

# key -> full reference. Keys are what the tables print in their "sources" column.
SOURCES: Dict[str, str] = {
    'Swin T1': 'Liu et al., "Swin Transformer: Hierarchical Vision Transformer using '
               'Shifted Windows", ICCV 2021, Table 1 (ImageNet-1K classification).',
    'Swin README': 'microsoft/Swin-Transformer README, "Main Results on ImageNet with '
                   'Pretrained Models" (#params, FLOPs, checkpoint links).',
    'Shunted T2': 'Ren et al., "Shunted Self-Attention via Multi-Scale Token Aggregation", '
                  'CVPR 2022, Table 2 (ImageNet-1K, 224).',
    'Shunted README': 'OliverRensu/Shunted-Transformer README, "Model Zoo" (Acc@1, '
                      '#Params (M)).',
    'DeiT README': 'facebookresearch/deit README_deit.md, "Model Zoo" (acc@1, #params; '
                   'Touvron et al., ICML 2021).',
    'ViT T1': 'Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, Table 1 '
              '(model variants, params).',
    'timm results': 'huggingface/pytorch-image-models results/results-imagenet.csv (timm\'s '
                    'own evaluation: top1, param_count), row <name>.augreg_in21k_ft_in1k '
                    '(AugReg, Steiner et al., TMLR 2022: ImageNet-21k pre-trained, '
                    'fine-tuned on ImageNet-1k at the size in <name>, 224 or 384).',
    'timm bench': 'huggingface/pytorch-image-models results/'
                  'benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv (infer_gmacs, fvcore '
                  'MACs of timm\'s model at its infer_img_size, 224 or 384; no paper gives '
                  'these FLOPs).',
    'torchvision': 'torchvision.models docs, ResNet50_Weights.IMAGENET1K_V1 / '
                   'ResNet101_Weights.IMAGENET1K_V1 (acc@1, GFLOPS, num_params).',
    'DETR T1': 'Carion et al., "End-to-End Object Detection with Transformers", ECCV 2020, '
               'Table 1 (COCO val2017, 500-epoch models; GFLOPs averaged over the first '
               '100 val2017 images).',
}


@dataclasses.dataclass(frozen=True)
class Ref:
  """A published number, as printed by ``SOURCES[source]``."""
  value: str
  source: str


@dataclasses.dataclass(frozen=True)
class PaperRow:
  """One row of a paper's table, for the registered model ``model``.

  Attributes:
    model: registered name (``swin_jax.models.list_models()``).
    label: the row as the source names it, e.g. 'Swin-B (IN-22K)'.
    img_size: (H, W) pixels: the resolution of the row's accuracy and FLOPs; ours are
      counted at this size.
    metric: 'top-1' (ImageNet-1k validation, %) or 'AP' (COCO val2017 box AP, %).
    params_m: parameters in millions.
    gflops: multiply-adds, in G.
    score: the row's top-1 or AP.
    config: ``path[:variant]`` of the config that evaluates the row, or None.
    eval_flags: further ``--config.x=y`` overrides that evaluation needs.
    checkpoint: the official checkpoint's file name, or None when unknown.
    note: why a number is missing or what differs from the source.
  """
  model: str
  label: str
  img_size: Tuple[int, int]
  metric: str
  params_m: Optional[Ref]
  gflops: Optional[Ref]
  score: Optional[Ref]
  config: Optional[str]
  eval_flags: Tuple[str, ...] = ()
  checkpoint: Optional[str] = None
  note: str = ''


def _swin(model, label, size, params, gflops, top1, config, ckpt):
  # Params and FLOPs as the official README prints them (the numbers we can check there);
  # top-1 as the paper's Table 1 (configs/swin/swin_i1k.py pins the same).
  return PaperRow(model, label, (size, size), 'top-1', Ref(params, 'Swin README'),
                  Ref(gflops, 'Swin README'), Ref(top1, 'Swin T1'),
                  f'configs/swin/swin_i1k.py:{config}', checkpoint=ckpt)


def _shunted(model, label, params, gflops, top1, config):
  return PaperRow(model, label, (224, 224), 'top-1', Ref(params, 'Shunted README'),
                  Ref(gflops, 'Shunted T2'), Ref(top1, 'Shunted README'),
                  f'configs/shunted/shunted_i1k.py:{config}',
                  note='the official checkpoints (Google Drive / Baidu Pan) have no stable '
                       'file names: save them as <model>.pth')


def _deit(model, label, params, gflops, top1, config, ckpt, size=224):
  # configs/vit/deit_i1k.py builds the vit_* name of the same network; a deit_* row is
  # evaluated under its own name.
  flags = () if model.startswith('vit_') else (f'--config.model.name={model}',)
  return PaperRow(model, label, (size, size), 'top-1', Ref(params, 'DeiT README'),
                  Ref(gflops, 'timm bench'), Ref(top1, 'DeiT README'),
                  f'configs/vit/deit_i1k.py:{config}', eval_flags=flags, checkpoint=ckpt)


# AugReg checkpoints use mean = std = 0.5 (timm's pretrained_cfg for these tags); the DeiT
# config supplies everything else the evaluation needs.
_AUGREG_FLAGS = ('--config.input.mean=(0.5, 0.5, 0.5)', '--config.input.std=(0.5, 0.5, 0.5)')


def _augreg(model, label, params, gflops, top1, ckpt, size=224):
  # The 384 rows take the image size from the DeiT 384 fine-tune variant.
  config = 'configs/vit/deit_i1k.py:' + ('B/16' if size == 224 else 'B/16-384-ft')
  crop = '0.9' if size == 224 else '1.0'  # timm's pretrained_cfg crop_pct for these tags
  return PaperRow(model, label, (size, size), 'top-1', Ref(params, 'timm results'),
                  Ref(gflops, 'timm bench'), Ref(top1, 'timm results'), config,
                  eval_flags=(f'--config.model.name={model}',) + _AUGREG_FLAGS,
                  checkpoint=ckpt,
                  note=f'timm evaluates with crop {crop} bicubic; the pipeline here crops '
                       f'0.875 bilinear')


def _detr(model, label, params, gflops, ap, config, ckpt):
  return PaperRow(model, label, DETR_FLOPS_SIZE, 'AP', Ref(params, 'DETR T1'),
                  Ref(gflops, 'DETR T1'), Ref(ap, 'DETR T1'),
                  f'configs/detr/detr_coco.py:{config}', checkpoint=ckpt,
                  note='paper GFLOPs: mean over the first 100 val2017 images (shorter side '
                       '800, longer <= 1333); ours at one 800x1200 image')


# DETR's FLOPs are an average over images of different shapes (DETR Table 1); no single size
# is stated. 800x1200 is the default size of the DETR models for the tools (models/detr.py);
# tests/test_detr.py checks that the paper's 86 G lies between 800x1066 and 800x1200.
DETR_FLOPS_SIZE = (800, 1200)

PAPER_ROWS: Tuple[PaperRow, ...] = (
    # ViT family. DeiT (ImageNet-1k from scratch) for Ti/S/B-16, as configs/vit/deit_i1k.py.
    _deit('vit_tiny_patch16_224', 'DeiT-Ti', '5', '1.26', '72.2', 'Ti/16',
          'deit_tiny_patch16_224-a1311bcf.pth'),
    _deit('vit_small_patch16_224', 'DeiT-S', '22', '4.61', '79.9', 'S/16',
          'deit_small_patch16_224-cd65a155.pth'),
    _deit('vit_base_patch16_224', 'DeiT-B', '86', '17.58', '81.8', 'B/16',
          'deit_base_patch16_224-b5f2ef4d.pth'),
    # B/32 and L/16 at 224: timm's default weights, AugReg ImageNet-21k -> 1k.
    _augreg('vit_base_patch32_224', 'ViT-B/32 AugReg (IN-21k)', '88.22', '4.41', '80.732',
            'B_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.03-do_0.0-sd_0.0--imagenet2012-'
            'steps_20k-lr_0.03-res_224.npz'),
    _augreg('vit_large_patch16_224', 'ViT-L/16 AugReg (IN-21k)', '304.33', '61.6', '85.856',
            'L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-'
            'steps_20k-lr_0.01-res_224.npz'),
    PaperRow('vit_huge_patch14_224', 'ViT-H/14', (224, 224), 'top-1',
             Ref('632', 'ViT T1'), Ref('167.4', 'timm bench'), None, None,
             note='no ImageNet-1k classifier at 224 was released (ViT-H/14 weights: '
                  'ImageNet-21k / JFT, or fine-tuned at 518)'),
    # The 384 fine-tunes of AugReg (timm's default weights for these names).
    _augreg('vit_small_patch16_384', 'ViT-S/16 AugReg 384 (IN-21k)', '22.20', '15.52',
            '83.814', 'S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--'
            'imagenet2012-steps_20k-lr_0.03-res_384.npz', size=384),
    _augreg('vit_base_patch16_384', 'ViT-B/16 AugReg 384 (IN-21k)', '86.86', '55.54',
            '86.010', 'B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--'
            'imagenet2012-steps_20k-lr_0.01-res_384.npz', size=384),
    _augreg('vit_base_patch32_384', 'ViT-B/32 AugReg 384 (IN-21k)', '88.30', '13.06',
            '83.358', 'B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0--'
            'imagenet2012-steps_20k-lr_0.03-res_384.npz', size=384),
    _augreg('vit_large_patch16_384', 'ViT-L/16 AugReg 384 (IN-21k)', '304.72', '191.21',
            '87.096', 'L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--'
            'imagenet2012-steps_20k-lr_0.01-res_384.npz', size=384),
    # timm's deit_* names: the same DeiT rows as above, under the names timm loads them by.
    _deit('deit_tiny_patch16_224', 'DeiT-Ti', '5', '1.26', '72.2', 'Ti/16',
          'deit_tiny_patch16_224-a1311bcf.pth'),
    _deit('deit_small_patch16_224', 'DeiT-S', '22', '4.61', '79.9', 'S/16',
          'deit_small_patch16_224-cd65a155.pth'),
    _deit('deit_base_patch16_224', 'DeiT-B', '86', '17.58', '81.8', 'B/16',
          'deit_base_patch16_224-b5f2ef4d.pth'),
    _deit('deit_base_patch16_384', 'DeiT-B 384', '87', '55.54', '82.9', 'B/16-384-ft',
          'deit_base_patch16_384-8de9b5d1.pth', size=384),
    # Swin: one row per line of Table 1 (= one variant of configs/swin/swin_i1k.py).
    _swin('swin_tiny_patch4_window7_224', 'Swin-T', 224, '28', '4.5', '81.3', 'T',
          'swin_tiny_patch4_window7_224.pth'),
    _swin('swin_small_patch4_window7_224', 'Swin-S', 224, '50', '8.7', '83.0', 'S',
          'swin_small_patch4_window7_224.pth'),
    _swin('swin_base_patch4_window7_224', 'Swin-B', 224, '88', '15.4', '83.5', 'B',
          'swin_base_patch4_window7_224.pth'),
    _swin('swin_base_patch4_window12_384', 'Swin-B 384', 384, '88', '47.1', '84.5',
          'B-384-ft', 'swin_base_patch4_window12_384.pth'),
    _swin('swin_base_patch4_window7_224', 'Swin-B (IN-22K)', 224, '88', '15.4', '85.2',
          'B-22k-ft', 'swin_base_patch4_window7_224_22kto1k.pth'),
    _swin('swin_base_patch4_window12_384', 'Swin-B 384 (IN-22K)', 384, '88', '47.1', '86.4',
          'B-384-22k-ft', 'swin_base_patch4_window12_384_22kto1k.pth'),
    _swin('swin_large_patch4_window7_224', 'Swin-L (IN-22K)', 224, '197', '34.5', '86.3',
          'L-22k-ft', 'swin_large_patch4_window7_224_22kto1k.pth'),
    _swin('swin_large_patch4_window12_384', 'Swin-L 384 (IN-22K)', 384, '197', '103.9',
          '87.3', 'L-384-22k-ft', 'swin_large_patch4_window12_384_22kto1k.pth'),
    # Shunted Transformer (configs/shunted/shunted_i1k.py).
    _shunted('shunted_t', 'Shunted-T', '11.5', '2.1', '79.8', 'T'),
    _shunted('shunted_s', 'Shunted-S', '22.4', '4.9', '82.9', 'S'),
    _shunted('shunted_b', 'Shunted-B', '39.6', '8.1', '84.0', 'B'),
    # torchvision's ResNet classifiers (the V1 weights DETR starts from).
    PaperRow('resnet50', 'ResNet-50 (torchvision V1)', (224, 224), 'top-1',
             Ref('25.557032', 'torchvision'), Ref('4.09', 'torchvision'),
             Ref('76.13', 'torchvision'), None, checkpoint='resnet50-0676ba61.pth',
             note='no ImageNet config for the ResNet classifiers yet'),
    PaperRow('resnet101', 'ResNet-101 (torchvision V1)', (224, 224), 'top-1',
             Ref('44.549160', 'torchvision'), Ref('7.8', 'torchvision'),
             Ref('77.374', 'torchvision'), None, checkpoint='resnet101-63fe2227.pth',
             note='no ImageNet config for the ResNet classifiers yet'),
    # DETR Table 1, the 500-epoch rows (configs/detr/detr_coco.py).
    _detr('detr_resnet50', 'DETR-R50', '41', '86', '42.0', 'R50', 'detr-r50-e632da11.pth'),
    _detr('detr_resnet50_dc5', 'DETR-DC5-R50', '41', '187', '43.3', 'DC5-R50',
          'detr-r50-dc5-f0fb7ef5.pth'),
    _detr('detr_resnet101', 'DETR-R101', '60', '152', '43.5', 'R101',
          'detr-r101-2c7b67e5.pth'),
    _detr('detr_resnet101_dc5', 'DETR-DC5-R101', '60', '253', '44.9', 'DC5-R101',
          'detr-r101-dc5-a2e86def.pth'),
)


def rows_for(model: str) -> Tuple[PaperRow, ...]:
  """The rows of ``model`` (empty for a model no paper table has, e.g. a demo)."""
  return tuple(r for r in PAPER_ROWS if r.model == model)


def is_demo(model: str) -> bool:
  return model in DEMO_MODELS or model.endswith('_demo')
