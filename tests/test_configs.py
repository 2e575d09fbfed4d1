"""Every config file loads, its variants resolve, and its model and fields are valid."""
import glob
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, load_config

CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'), recursive=True)
                 if not os.path.basename(p).startswith('_') and os.path.basename(p) != 'common.py')


def _variants(path):
  if path.endswith('deit_i1k.py'):
    return ['Ti/16', 'S/16', 'B/16', 'B/16-384-ft']
  if path.endswith('vit_digits.py') or path.endswith('swin_digits.py'):
    return [None, 'quick']
  if path.endswith('swin_i1k.py'):
    return ['T', 'S', 'B', 'B-384-ft', 'B-22k-ft', 'B-384-22k-ft', 'L-22k-ft', 'L-384-22k-ft']
  if path.endswith('shunted_i1k.py'):
    return ['T', 'S', 'B']
  if path.endswith('shunted_digits.py'):
    return [None, 'quick']
  if path.endswith('detr_digits.py') or path.endswith('resnet_digits.py'):
    return [None, 'quick']
  if path.endswith('detr_coco.py'):
    return DETR_COCO_VARIANTS
  return [None]


# configs/detr/detr_coco.py: a variant per row of DETR's Table 1, each with the paper's
# 500-epoch schedule (lr drop at 400) or the shorter 300 (drop at 200) / 150 (drop at 100).
DETR_ROWS = {'R50': ('detr_resnet50', False), 'DC5-R50': ('detr_resnet50_dc5', True),
             'R101': ('detr_resnet101', False), 'DC5-R101': ('detr_resnet101_dc5', True)}
DETR_SCHEDULES = {'': (500, 400), '-300ep': (300, 200), '-150ep': (150, 100)}
DETR_COCO_VARIANTS = [row + sched for row in DETR_ROWS for sched in DETR_SCHEDULES]


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_loads_and_builds_model(path):
  from swin_jax.train import loop, validate
  for arg in _variants(path):
    c = load_config(os.path.relpath(path, ROOT), arg)
    validate.check_config(c)  # what the trainer checks before any work
    model = loop.model_from_config(c)
    assert model.num_classes == c.input.num_classes
    assert c.batch_size % 8 == 0  # splits over 8 devices and typical TPU slices
    if c.get('task', 'classification') == 'detection':
      assert 'image_size' not in c.input  # images are resized + padded to pad_size
      assert min(c.input.pad_size) >= c.input.max_size
    elif hasattr(model, 'img_size'):  # the ResNet classifiers take any size
      assert c.input.image_size == model.img_size


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_unknown_variant_is_rejected(path):
  with pytest.raises(ValueError, match='unknown variant'):
    load_config(os.path.relpath(path, ROOT), 'no-such-variant')


def test_common_defaults_are_complete():
  c = load_config('configs/common.py')
  for field in ('seed', 'input', 'model', 'batch_size', 'optimizer', 'schedule', 'checkpoint',
                'init_from', 'sharding', 'distributed'):
    assert field in c


def test_configs_import_common_from_the_package_at_any_cwd(tmp_path):
  """`from configs import common` works from any directory (pyproject's packages include
  configs, so the editable install maps it to this folder); no config edits sys.path."""
  for path in CONFIGS:
    with open(path) as f:
      src = f.read()
    assert 'sys.path' not in src and 'from configs import common' in src, path
  # A fresh interpreter outside the repository (no jax: about a second).
  code = ('import importlib.util, sys; p = sys.argv[1]; '
          's = importlib.util.spec_from_file_location("cfg", p); '
          'm = importlib.util.module_from_spec(s); s.loader.exec_module(m); '
          'print(m.get_config("quick").model.name, m.common.__file__)')
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  r = subprocess.run([sys.executable, '-c', code,
                      os.path.join(ROOT, 'configs', 'demo', 'vit_digits.py')],
                     cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
  assert r.returncode == 0, f'{r.stderr}\n(reinstall: pip install -e . in {ROOT})'
  name, common_file = r.stdout.split()
  assert name == 'vit_demo'
  assert os.path.samefile(common_file, os.path.join(ROOT, 'configs', 'common.py'))


# ---------------------------------------------------------------- DETR
COCO_TRAIN_IMAGES = 118_287  # coco/2017 train


def _abstract_params(c):
  """The model's params as ShapeDtypeStructs (jax.eval_shape: traced, not computed). Param
  shapes do not depend on the input size, so a 64x64 input keeps the trace cheap."""
  import jax
  import jax.numpy as jnp
  from swin_jax.train import loop
  model = loop.model_from_config(c)
  x, mask = jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 64, 64), bool)
  return jax.eval_shape(lambda k: model.init(k, x, mask=mask), jax.random.key(0))


def _check_detr_recipe(c):
  """facebookresearch/detr main.py defaults = the paper's Sec. 4 recipe."""
  o = c.optimizer
  assert c.task == 'detection'
  assert (o.name, o.lr, o.weight_decay, o.clip_grad_norm) == ('adamw', 1e-4, 1e-4, 0.1)
  assert tuple(map(tuple, o.lr_mults)) == (('^backbone_0/', 0.1),)  # backbone lr 1e-5
  assert not o.get('frozen')
  assert (o.b1, o.b2, o.eps, o.ema_decay, o.grad_accum_steps) == (0.9, 0.999, 1e-8, 0.0, 1)
  assert c.batch_size == 64 and c.label_smoothing == 0.0
  assert c.schedule.name == 'step' and c.schedule.decay_rate == 0.1
  assert c.schedule.warmup_epochs == 0.0 and not c.schedule.warmup_steps
  assert c.model.num_queries == 100 and c.model.aux_loss
  assert c.model.get('dropout', 0.1) == 0.1 and not c.model.get('pre_norm', False)
  assert c.model.get('freeze_stem', True) and c.model.get('train_backbone', True)
  assert (c.loss.matcher, c.loss.eos_coef) == ('hungarian', 0.1)
  assert (c.loss.ce, c.loss.bbox, c.loss.giou) == (1.0, 5.0, 2.0)
  assert (c.loss.cost_class, c.loss.cost_bbox, c.loss.cost_giou) == (1.0, 5.0, 2.0)
  assert c.input.num_classes == 91 and c.input.label_map == 'coco91'
  assert c.input.train_scales == tuple(range(480, 801, 32)) and c.input.max_size == 1333
  assert c.input.eval_scale == 800 and c.input.flip and c.input.crop
  assert c.input.max_boxes <= c.model.num_queries
  assert all(p % 32 == 0 for p in c.input.pad_size)


@pytest.mark.parametrize('variant', DETR_COCO_VARIANTS)
def test_detr_coco_variant_is_table1_recipe(variant):
  from swin_jax.train import loop, optimizers
  c = load_config('configs/detr/detr_coco.py', variant)
  row, sched = next((r, variant[len(r):]) for r in DETR_ROWS
                    if variant[len(r):] in DETR_SCHEDULES and variant.startswith(r))
  name, dilation = DETR_ROWS[row]
  epochs, drop = DETR_SCHEDULES[sched]
  _check_detr_recipe(c)
  assert c.model.name == name and c.num_epochs == epochs
  assert tuple(c.schedule.decay_epochs) == (drop,)
  model = loop.model_from_config(c)
  assert model.dilation == dilation and model.backbone == name.split('_')[1]
  assert model.num_classes == 91 and model.num_queries == 100 and model.dropout == 0.1
  # The schedule the trainer builds: 1e-4 until epoch `drop`, then 1e-5, to the end.
  spe = COCO_TRAIN_IMAGES // c.batch_size
  total = int(c.num_epochs * spe)
  s = optimizers.make_schedule(c, total, spe)
  b = drop * spe
  np.testing.assert_allclose([float(s(t)) for t in (0, b - 1, b, total)],
                             [1e-4, 1e-4, 1e-5, 1e-5], rtol=1e-6)


# (config, arg) -> (total params, trainable params), facebookresearch/detr's main.py counts
# (91 classes; stem + layer1 frozen) for the ResNets; the Swin-T one counted here.
@pytest.mark.parametrize('path,arg,counts', [
    ('configs/detr/detr_coco.py', 'R50', (41_524_768, 41_302_368)),
    ('configs/detr/detr_coco.py', 'DC5-R101-150ep', (60_464_672, 60_242_272)),
    ('configs/detr/detr_swin_t.py', None, None),
    ('configs/demo/detr_digits.py', 'quick', None),
])
def test_detr_configs_build_and_lr_mults_cover_the_backbone(path, arg, counts):
  import jax
  from swin_jax.train import loop, optimizers
  c = load_config(path, arg)
  params = _abstract_params(c)['params']
  flat = {optimizers._path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  trainable = loop.trainable_from_config(c)(params)
  n_trainable = sum(x.size for x, t in zip(jax.tree.leaves(params), jax.tree.leaves(trainable)) if t)
  if counts is not None:
    assert (sum(x.size for x in flat.values()), n_trainable) == counts
  mults = c.optimizer.get('lr_mults') or ()
  if mults:  # the regex gives exactly the backbone leaves the 0.1x lr, nothing else
    matched = {k for k in flat if any(re.search(p, k) for p, _ in mults)}
    assert matched == {k for k in flat if k.startswith('backbone_0/')} and matched
  if path.endswith('detr_swin_t.py'):
    _check_detr_recipe(c)
    assert c.model.backbone == 'swin_tiny_patch4_window7_224'
    assert c.num_epochs == 500 and tuple(c.schedule.decay_epochs) == (400,)
    # Swin-T's last stage (768 channels) feeds input_proj; nothing of Swin is frozen.
    assert params['input_proj']['kernel'].shape == (1, 1, 768, 256)
    assert n_trainable == sum(x.size for x in flat.values())
  if path.endswith('detr_digits.py'):
    # The paper's recipe in small: the backbone is pretrained as a classifier of the same
    # shape (config.pretrain), then its stem + layer1 stay frozen; the rest trains at the
    # full lr (the paper's 0.1x is for an ImageNet backbone; measured worse here).
    pre = c.pretrain.model
    assert (pre.name, tuple(pre.depths), pre.width, pre.norm) == (
        'resnet50', tuple(c.model.backbone_depths), c.model.backbone_width,
        c.model.backbone_norm)
    assert c.model.freeze_stem is True and not mults
    assert n_trainable < sum(x.size for x in flat.values())  # the stem and layer1 are not
    assert c.pretrain.total_steps == 6  # the quick variant shortens both runs
    assert c.input.max_boxes <= c.model.num_queries
    assert c.total_steps == 6 and c.checkpoint.every_steps == 2
    # The demo trains on the 10k builder config; quick on 2k (prepared in seconds).
    assert c.input.dataset == 'digits_detection/2k'
    assert load_config(path, None).input.dataset == 'digits_detection/10k'
