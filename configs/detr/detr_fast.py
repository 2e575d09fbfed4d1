"""DETR with the fast-convergence options, on COCO 2017: one variant per option set.

  python -m swin_jax.main --config=configs/detr/detr_fast.py:focal --workdir=gs://b/detr_focal \
      --config.input.data_dir=gs://bucket/tensorflow_datasets \
      --config.init_from=/path/to/resnet50-0676ba61.pth   # torchvision ImageNet weights

Variants (the same DETR as configs/detr/detr_coco.py, 50 epochs with the lr drop at 40, as
Deformable DETR / DN-DETR train; total batch 32 as theirs):

  focal      DETR-DC5-R50, 300 queries, Deformable DETR's sigmoid focal loss and focal
             matching cost (alpha 0.25, gamma 2; weights class 2, L1 5, GIoU 2), the
             class bias started at -log(99) (prior 0.01), as Deformable DETR's.
             Published: "DETR-DC5+" (DETR-DC5 with focal loss and 300 queries), 50 epochs:
             36.2 AP (fundamentalvision/Deformable-DETR README, main results table; the same
             table: DETR-DC5 50 epochs 35.3, 500 epochs 43.3).
  dn         DETR-R50 with DN-DETR's denoising queries (5 groups, label noise 0.2, box noise
             0.4), softmax loss. No published number for this model: DN-DETR's
             "DN-DETR-R50" (50 epochs, 44.1 AP in the paper's Table 1, 44.4 in the
             IDEA-Research/DN-DETR README after code changes) is DAB-DETR (4-D anchor-box
             queries, 300 queries, focal loss) + denoising, another decoder than DETR's.
  focal+dn   both, on DETR-R50 with 300 queries. No published number (as dn).
  group      DETR-R50 with Group DETR (Chen et al., ICCV 2023): 11 groups of the 100
             queries in training (Atten4Vis/ConditionalDETR GroupDETR branch,
             scripts/conddetr_r50_epoch12_groupdetr11.sh: --group_detr 11), each matched
             one-to-one on its own; inference keeps one group (the same model as DETR).
             No published number for this model: the paper applies Group DETR to
             Conditional DETR, DAB-DETR, DN-DETR and DINO, never to plain DETR. The
             nearest published number: Conditional DETR-R50 + Group DETR (conditional
             cross-attention, 300 queries, focal loss), 12 epochs: 37.8 AP (the official
             weights converted, IDEA-Research/detrex projects/group_detr/README.md,
             "Converted Models" table; detrex's Conditional DETR-R50 alone, 50 epochs:
             41.0-41.6 AP, projects/conditional_detr/README.md).
  focal+group  Group DETR on the focal setting (DETR-R50, 300 queries, focal loss, 11
             groups): Conditional DETR + Group DETR's recipe, DETR's cross-attention. No
             published number (as group). Note: the block-diagonal self-attention runs
             over all K * Q = 3,300 queries (K times the FLOPs of K separate Q x Q
             attentions, which the official code gets by moving the groups to the batch).
  group+dn   Group DETR (11 groups of 100) + DN-DETR's denoising queries, which see group 0
             only (swin_jax.models.detr.dn_attention_mask). No published number.
  hybrid     DETR-R50 with H-DETR's hybrid matching (Jia et al., CVPR 2023): 500
             one-to-many queries beside the 100 (H-DETR's 1500 : 300), matched to every
             target repeated 6 times, weight 1 (HDETR/H-Deformable-DETR configs
             r50_hybrid_branch_lambda1_group6_t1500_*: --num_queries_one2many 1500
             --k_one2many 6 --lambda_one2many 1.0), dropped at inference. No published
             number for plain DETR: H-DETR is built on Deformable DETR. The nearest
             published numbers (H-Deformable-DETR README, R50, "+ tricks", 12 epochs): 47.0
             AP without the hybrid branch, 48.7 with it; 36 epochs: 49.0 and 50.0.
  focal+hybrid  H-DETR's query counts and loss on DETR's decoder: DETR-R50, 300 queries +
             1500 one-to-many, the focal setting above. No published number (as hybrid).
  hybrid+dn  the hybrid branch + DN-DETR's denoising queries (which do not see the
             one-to-many queries). No published number.

Everything else is DETR's recipe (configs/common.py detection_config): AdamW lr 1e-4,
backbone 1e-5, weight decay 1e-4, clip 0.1, DETR's augmentation, aux losses.
"""
from configs import common

_VARIANTS = ('focal', 'dn', 'focal+dn', 'group', 'focal+group', 'group+dn', 'hybrid',
             'focal+hybrid', 'hybrid+dn')


def get_config(arg='focal'):
  if arg not in _VARIANTS:
    raise ValueError(f'unknown variant {arg!r} for configs/detr/detr_fast.py: use one of '
                     f'{list(_VARIANTS)}')
  focal, dn, group, hybrid = ('focal' in arg, 'dn' in arg, 'group' in arg,
                              'hybrid' in arg)
  c = common.detection_config()
  c.model.name = 'detr_resnet50_dc5' if arg == 'focal' else 'detr_resnet50'
  if focal:
    c.model.num_queries = 300  # DETR-DC5+ (Deformable DETR README note 5)
    c.loss.classification = 'focal'
    c.loss.focal_alpha, c.loss.focal_gamma = 0.25, 2.0
    # Deformable DETR main.py: cls_loss_coef 2, set_cost_class 2 (bbox 5, giou 2 as DETR)
    c.loss.ce, c.loss.cost_class = 2.0, 2.0
    c.model.class_prior_prob = 0.01  # Deformable DETR: class bias -log(99)
  if dn:
    # DN-DETR main.py: --scalar 5, --label_noise_scale 0.2, --box_noise_scale 0.4
    c.model.dn_groups = 5
    c.model.dn_label_noise = 0.2
    c.model.dn_box_noise = 0.4
  if group:
    # Group DETR official (ConditionalDETR GroupDETR branch, its script): --group_detr 11
    c.model.group_detr = 11
  if hybrid:
    # H-DETR: --num_queries_one2many 1500 (next to 300), --k_one2many 6, --lambda_one2many 1
    c.model.one2many_queries = 5 * c.model.num_queries
    c.loss.one2many_k, c.loss.one2many_weight = 6, 1.0
  c.batch_size = 32
  c.eval_batch_size = 32
  c.num_epochs = 50.0
  c.schedule.decay_epochs = (40,)
  c.init_from = ''
  c.eval_every_steps = 18_500  # ~5 epochs at batch 32 (118,287 images)
  return c
