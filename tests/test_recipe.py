"""The ImageNet recipe wired end to end: Mixup / CutMix in the train step, the soft-target
loss, RandAugment + random erasing + repeated augmentation in the input pipeline (embedded
digits and tfds mock imagenet2012), layer-wise lr decay, the fine-tuning switches, the paper
configs, and one short training run with everything on through the real trainer."""
import os
import re
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import load_config, set_fields
from swin_jax.data import augment
from swin_jax.data import input_pipeline as ip
from swin_jax.models import create_model
from swin_jax.train import optimizers, steps, tasks

RECIPE_INPUT = dict(rand_augment='rand-m9-mstd0.5-inc1', random_erasing=0.25)
RECIPE_MIXUP = dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=1.0)


# ---------------------------------------------------------------- Mixup / CutMix in the step
B, H, W, K = 6, 8, 10, 11
SMOOTH = 0.1


def _smooth_np(labels, smoothing=SMOOTH):
  out = np.full((len(labels), K), smoothing / K)
  out[np.arange(len(labels)), labels] += 1 - smoothing
  return out


class _Linear(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(K)(x.reshape(x.shape[0], -1))


class _SpyTask(tasks.ClassificationTask):
  """Returns what the model saw (the mixed batch) next to the metrics."""

  def loss(self, logits, batch):
    loss, metrics = super().loss(logits, batch)
    return loss, dict(metrics, seen_image=batch['image'], seen_target=batch['target'])


def test_mixup_cutmix_in_train_step_convex_combination_box_paste_and_targets():
  task = _SpyTask(K, label_smoothing=SMOOTH, mixup=tasks.mixup_options(RECIPE_MIXUP))
  model = _Linear()
  tx = optax.sgd(0.1)
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (B, H, W, 3)))
  labels = np.array([0, 3, 5, 7, 9, 10])
  state = steps.create_train_state(model, tx, jax.random.PRNGKey(1), (B, H, W, 3), False)
  base_rng = jax.random.PRNGKey(2)
  step_fn = jax.jit(steps.make_train_step(model, task, tx, optax.constant_schedule(0.1),
                                          base_rng=base_rng))
  batch = {'image': jnp.asarray(x), 'label': jnp.asarray(labels)}
  kinds, seen = [], []
  for s in range(12):
    _, m = step_fn(state.replace(step=jnp.asarray(s, jnp.int32)), batch)
    img, tgt = np.asarray(m['seen_image']), np.asarray(m['seen_target'])
    seen.append(img)
    np.testing.assert_allclose(tgt.sum(-1), 1.0, atol=1e-6)  # mixed labels sum to 1
    from_flip = (img == x[::-1]).all(-1)  # [B, H, W]
    from_orig = (img == x).all(-1)
    if (from_flip | from_orig).all():  # CutMix: every pixel pasted from one source
      kinds.append('cutmix')
      box = from_flip[0]
      assert (from_flip == box).all()  # the same box in every image
      if box.any():
        rows, cols = np.nonzero(box)
        assert box.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)  # a rectangle
      lam = 1 - box.sum() / (H * W)  # corrected to the pasted area
    else:  # Mixup: lam x + (1 - lam) x.flip(0), lam read off the targets
      kinds.append('mixup')
      off, on = SMOOTH / K, 1 - SMOOTH + SMOOTH / K
      lam = (tgt[0, labels[0]] - off) / (on - off)
      assert 0 < lam < 1
      np.testing.assert_allclose(img, lam * x + (1 - lam) * x[::-1], atol=1e-5)
    # Smoothed once (0.1), then mixed: timm's mixup_target.
    np.testing.assert_allclose(
        tgt, lam * _smooth_np(labels) + (1 - lam) * _smooth_np(labels[::-1]), atol=1e-6)
  assert set(kinds) == {'mixup', 'cutmix'}, kinds
  # A pure function of the step (what resuming relies on): step 5 again mixes the same way.
  _, again = step_fn(state.replace(step=jnp.asarray(5, jnp.int32)), batch)
  np.testing.assert_array_equal(np.asarray(again['seen_image']), seen[5])
  assert not np.array_equal(seen[4], seen[5])
  # Mixing off: the batch reaches the model untouched and the task adds no target.
  plain = tasks.ClassificationTask(K, mixup=tasks.mixup_options(dict(mixup_alpha=0.0)))
  assert plain.mixup is None and plain.train_batch(batch, base_rng) is batch


def test_soft_target_loss_and_accuracy_match_numpy():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((4, 5)).astype(np.float32)
  target = rng.random((4, 5)).astype(np.float32)
  target /= target.sum(-1, keepdims=True)
  labels = np.array([0, 1, 2, 3])
  task = tasks.ClassificationTask(5, label_smoothing=0.1)
  loss, metrics = task.loss(jnp.asarray(logits), {'label': jnp.asarray(labels),
                                                  'target': jnp.asarray(target)})
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  # The given targets are used as they are (Mixup's are smoothed already): no second smoothing.
  np.testing.assert_allclose(float(loss), -(target * logp).sum(-1).mean(), rtol=1e-6)
  want_acc = np.mean(logits.argmax(-1) == target.argmax(-1))
  np.testing.assert_allclose(float(metrics['accuracy']), want_acc)


def test_mixup_config_errors_name_the_field():
  with pytest.raises(ValueError, match=r'config\.mixup\.mixup_alpha'):
    tasks.mixup_options(dict(mixup_alpha=-1.0))
  with pytest.raises(ValueError, match=r'config\.mixup\.switch_prob'):
    tasks.mixup_options(dict(mixup_alpha=0.8, switch_prob=1.5))
  with pytest.raises(ValueError, match=r'config\.mixup has unknown field.*label_smoothing'):
    tasks.mixup_options(dict(mixup_alpha=0.8, label_smoothing=0.1))
  task = tasks.ClassificationTask(K, mixup=tasks.mixup_options(RECIPE_MIXUP))
  odd = {'image': jnp.zeros((5, H, W, 3)), 'label': jnp.zeros((5,), jnp.int32)}
  with pytest.raises(ValueError, match=r'need an even b: got 5.*config\.batch_size'):
    task.train_batch(odd, jax.random.PRNGKey(0))


# ---------------------------------------------------------------- input pipeline
def _digits_cfg(tfds_dir, **overrides):
  fields = dict(
      dataset='sklearn_digits', data_dir=tfds_dir, train_split='train', eval_split='test',
      image_size=16, num_classes=10, mean=(0.5,) * 3, std=(0.5,) * 3,
      train_augment='inception_crop', rand_augment='', color_jitter=0.0, random_erasing=0.0,
      repeated_augmentation=1, eval_resize='direct', cache=True)
  return ml_collections.ConfigDict(dict(fields, **overrides))


def _batches(cfg, n, start_step=0, batch=48, seed=7, keep_keys=('id',)):
  ds = ip.make_train_dataset(cfg, global_batch_size=batch, seed=seed, start_step=start_step,
                             keep_keys=keep_keys)
  it = iter(ds)
  return [next(it) for _ in range(n)]


def test_digits_pipeline_with_recipe_is_deterministic_resumable_and_repeats(tfds_dir):
  cfg = _digits_cfg(tfds_dir, repeated_augmentation=3, **RECIPE_INPUT)
  fresh = _batches(cfg, 4)
  again = _batches(cfg, 2)
  resumed = _batches(cfg, 1, start_step=3)
  for a, b in zip(fresh, again):
    np.testing.assert_array_equal(a['image'], b['image'])
  np.testing.assert_array_equal(resumed[0]['image'], fresh[3]['image'])  # bitwise
  np.testing.assert_array_equal(resumed[0]['id'], fresh[3]['id'])
  assert all(np.isfinite(b['image']).all() and b['image'].shape == (48, 16, 16, 3)
             for b in fresh)
  # Repeated augmentation: each id 3 times in a row, each copy augmented differently.
  ids = np.concatenate([b['id'] for b in fresh])
  images = np.concatenate([b['image'] for b in fresh])
  groups = ids.reshape(-1, 3)
  assert (groups == groups[:, :1]).all()
  assert len(set(groups[:, 0].tolist())) == len(groups)  # a shuffled pass: no id twice
  for g in range(len(groups)):
    copies = images[3 * g:3 * g + 3]
    assert not np.array_equal(copies[0], copies[1]) and not np.array_equal(copies[1], copies[2])
  # repeated_augmentation=1 is the plain stream: other ids in the first batch.
  plain = _batches(_digits_cfg(tfds_dir, **RECIPE_INPUT), 1)[0]
  assert len(set(plain['id'].tolist())) == 48


def test_random_erasing_and_rand_augment_act_on_top_of_the_same_crops(tfds_dir):
  """Each op draws from its own seed stream, so switching one on changes only what it does:
  erasing changes one rectangle in ~25% of the images and leaves the rest bitwise equal."""
  base = _batches(_digits_cfg(tfds_dir), 2)
  erased = _batches(_digits_cfg(tfds_dir, random_erasing=0.25), 2)
  n_changed = 0
  for a, b in zip(base, erased):
    np.testing.assert_array_equal(a['id'], b['id'])
    for x, y in zip(a['image'], b['image']):
      diff = (x != y).any(-1)
      if not diff.any():
        continue
      n_changed += 1
      rows, cols = np.nonzero(diff)
      # Noise fills a box; a noise pixel may equal the old value only by chance (never).
      assert diff.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
  assert 8 <= n_changed <= 40, n_changed  # of 96 images, p = 0.25
  ra = _batches(_digits_cfg(tfds_dir, rand_augment='rand-m9-mstd0.5-inc1'), 2)
  # RandAugment works on uint8 (timm: on the PIL crop), so compare 0..255 pixels rounded.
  pixels = lambda x: np.round((x * 0.5 + 0.5) * 255.0)
  same = sum(np.array_equal(pixels(x), pixels(y)) for a, b in zip(base, ra)
             for x, y in zip(a['image'], b['image']))
  # Two layers, each applied with p 0.5, leave at most ~1/4 untouched; fewer compare equal
  # here (measured: 9.4% over 6 batches at each of 3 seeds), as the rounded float crop of
  # the plain run and the uint8 one of the RandAugment run may differ by one level. All
  # untouched (RandAugment off) or none (always on) both fail.
  assert 3 <= same <= 40, same


def test_recipe_option_errors_name_the_field(tfds_dir):
  cases = [
      (dict(rand_augment='rand-m9-w0'), r"config\.input\.rand_augment='rand-m9-w0'"),
      (dict(rand_augment='autoaug'), r'config\.input\.rand_augment'),
      (dict(color_jitter=0.4, rand_augment='rand-m9-mstd0.5-inc1'),
       r'config\.input\.color_jitter=0\.4 with config\.input\.rand_augment.*timm'),
      (dict(random_erasing=1.5), r'config\.input\.random_erasing'),
      (dict(repeated_augmentation=0), r'config\.input\.repeated_augmentation'),
      (dict(repeated_augmentation=2.5), r'config\.input\.repeated_augmentation'),
  ]
  for overrides, needle in cases:
    with pytest.raises(ValueError, match=needle):
      ip.make_train_dataset(_digits_cfg(tfds_dir, **overrides), global_batch_size=8, seed=0)


def test_color_jitter_pipeline_runs(tfds_dir):
  cfg = _digits_cfg(tfds_dir, color_jitter=0.4)
  b = _batches(cfg, 1)[0]
  base = _batches(_digits_cfg(tfds_dir), 1)[0]
  assert np.isfinite(b['image']).all()
  assert not np.array_equal(b['image'], base['image'])


def test_fill_color_is_timms_img_mean():
  assert ip.fill_color((0.485, 0.456, 0.406)) == augment.IMAGENET_FILL == (124, 116, 104)


def test_center_crop_resizes_shorter_side_to_256_for_224():
  img = tf.constant(np.random.default_rng(0).integers(0, 256, (300, 400, 3)), tf.uint8)
  out = ip.center_crop(img, 224).numpy()
  # timm / Swin / DeiT: shorter side floor(224 / 0.875) = 256 -> 256 x 341, central 224.
  ref = tf.image.resize(tf.cast(img, tf.float32), (256, 341), method='bilinear',
                        antialias=True).numpy()
  top, left = (256 - 224) // 2, (341 - 224) // 2
  np.testing.assert_allclose(out, ref[top:top + 224, left:left + 224], atol=1e-4)
  # 384: floor(438.86) = 438 (round would give 439).
  small = tf.constant(np.zeros((438, 500, 3), np.uint8))
  assert ip.center_crop(small, 384).shape == (384, 384, 3)


@pytest.fixture(scope='module')
def mock_imagenet_dir(tmp_path_factory):
  """tfds metadata of imagenet2012 with 24-example train / validation splits; the examples
  come from tfds.testing.mock_data (random jpegs, 5..50 pixels a side, random labels)."""
  d = str(tmp_path_factory.mktemp('mock_imagenet'))
  with tfds.testing.mock_data(num_examples=24, data_dir=d):
    builder = tfds.builder('imagenet2012', data_dir=d)
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=s, shard_lengths=[24], num_bytes=0)
        for s in ('train', 'validation')]))
    builder.info.set_file_format('array_record', override=True)  # what the loader reads
    os.makedirs(builder.data_path, exist_ok=True)
    builder.info.write_to_directory(builder.data_path)
  return d


def test_imagenet2012_mock_data_through_the_recipe_pipeline(mock_imagenet_dir):
  cfg = load_config('configs/swin/swin_i1k.py', 'T').input
  cfg.data_dir = mock_imagenet_dir
  cfg.image_size = 32
  cfg.repeated_augmentation = 3  # DeiT's, to run it too
  with tfds.testing.mock_data(num_examples=24, data_dir=mock_imagenet_dir):
    assert ip.get_num_examples(cfg, 'train') == 24
    fresh = _batches(cfg, 4, batch=8, seed=1, keep_keys=())
    resumed = _batches(cfg, 1, start_step=3, batch=8, seed=1, keep_keys=())
    evals = {}
    for resize in ('center_crop', 'direct'):
      cfg.eval_resize = resize
      evals[resize] = list(ip.make_eval_iterator(cfg, split='validation', global_batch_size=8))
  for b in fresh:
    assert b['image'].shape == (8, 32, 32, 3) and b['image'].dtype == np.float32
    assert np.isfinite(b['image']).all() and b['label'].shape == (8,)
  np.testing.assert_array_equal(resumed[0]['image'], fresh[3]['image'])
  for batches in evals.values():
    assert len(batches) == 3 and all(b['mask'].all() for b in batches)
    assert all(b['image'].shape == (8, 32, 32, 3) and np.isfinite(b['image']).all()
               for b in batches)
  assert not np.array_equal(evals['center_crop'][0]['image'], evals['direct'][0]['image'])


# ---------------------------------------------------------------- layer-wise lr decay
def _abstract_params(name, **overrides):
  model = create_model(name, **overrides)
  size = overrides.get('img_size', 32)
  return jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, size, size, 3))),
                        jax.random.PRNGKey(0))['params']


def _flat(tree):
  return {optimizers._path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


# Expected layer ids by parameter-path prefix, written out by hand per model (L blocks;
# embeddings 0, block b -> b + 1, final norm / head L + 1).
_VIT_IDS = {'cls_token': 0, 'pos_embed': 0, 'patch_embed/': 0, 'blocks_0/': 1, 'blocks_1/': 2,
            'blocks_2/': 3, 'blocks_3/': 4, 'norm/': 5, 'head/': 5}
_SWIN_IDS = {'patch_embed/': 0, 'layers_0/blocks_0/': 1, 'layers_0/blocks_1/': 2,
             'layers_0/downsample/': 2, 'layers_1/blocks_0/': 3, 'layers_1/blocks_1/': 4,
             'norm/': 5, 'head/': 5}
_SHUNTED_IDS = {'patch_embed1/': 0, 'block1_0/': 1, 'block1_1/': 2, 'norm1/': 2,
                'patch_embed2/': 2, 'block2_0/': 3, 'block2_1/': 4, 'norm2/': 5, 'head/': 5}
_SHUNTED_TINY = dict(embed_dims=(48, 96), num_heads=(2, 4), mlp_ratios=(4, 4), depths=(2, 2),
                     sr_ratios=(4, 1), num_conv=0, img_size=32, num_classes=10)


@pytest.mark.parametrize('family,name,overrides,depths,ids', [
    ('vit', 'vit_demo', dict(img_size=16, num_classes=10), (4,), _VIT_IDS),
    ('swin', 'swin_demo', dict(num_classes=10), (2, 2), _SWIN_IDS),
    ('shunted', 'shunted_t', _SHUNTED_TINY, (2, 2), _SHUNTED_IDS),
])
def test_layer_decay_multiplier_of_each_leaf(family, name, overrides, depths, ids):
  params = _abstract_params(name, **overrides)
  decay, top = 0.75, sum(depths) + 1
  mults = _flat(optimizers.layer_decay_mults(family, depths, decay, params))
  for path, mult in mults.items():
    prefix = [p for p in ids if path.startswith(p)]
    assert len(prefix) == 1, (path, prefix)  # every leaf is covered by the table, once
    assert mult == pytest.approx(decay ** (top - ids[prefix[0]]), rel=1e-12), path
  assert {p for p in ids if any(k.startswith(p) for k in mults)} == set(ids)
  # The config path reads the depths off the model.
  c = ml_collections.ConfigDict({'model': dict(name=name, **overrides)})
  assert optimizers.model_depths(c) == (family, depths)


def _opt_cfg(name, overrides, **opt):
  c = ml_collections.ConfigDict()
  c.model = dict(name=name, **overrides)
  c.optimizer = dict(name='adamw', lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05,
                     clip_grad_norm=0.0)
  c.optimizer.update(opt)
  c.finetune = dict(new_head=False, freeze='')
  return c


def _random_like(params, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), jnp.float32), params)


def test_layer_decay_scales_updates_and_multiplies_with_lr_mults():
  overrides = dict(num_classes=10)
  params = _random_like(_abstract_params('swin_demo', **overrides), 0)
  grads = _random_like(params, 1)
  sched = optax.constant_schedule(1e-3)
  base = optimizers.make_optimizer(_opt_cfg('swin_demo', overrides), sched)
  tx = optimizers.make_optimizer(_opt_cfg('swin_demo', overrides, layer_decay=0.75,
                                          lr_mults=(('^head/', 2.0),)), sched)
  want, _ = base.update(grads, base.init(params), params)
  got, _ = tx.update(grads, tx.init(params), params)
  mults = _flat(optimizers.layer_decay_mults('swin', (2, 2), 0.75, params))
  for k, u in _flat(got).items():
    m = mults[k] * (2.0 if k.startswith('head/') else 1.0)
    np.testing.assert_allclose(u, m * _flat(want)[k], rtol=1e-6, err_msg=k)
  assert mults['patch_embed/proj/kernel'] == pytest.approx(0.75 ** 5)


def test_layer_decay_errors_name_the_field():
  with pytest.raises(ValueError, match=r'config\.optimizer\.layer_decay=0\.75.*resnet'):
    optimizers.make_optimizer(_opt_cfg('resnet50', {}, layer_decay=0.75),
                              optax.constant_schedule(1e-3))
  with pytest.raises(ValueError, match=r'config\.optimizer\.layer_decay=1\.5'):
    optimizers.make_optimizer(_opt_cfg('vit_demo', {}, layer_decay=1.5),
                              optax.constant_schedule(1e-3))
  for off in (0.0, 1.0):  # off: no multiplier at all
    optimizers.make_optimizer(_opt_cfg('resnet50', {}, layer_decay=off),
                              optax.constant_schedule(1e-3))


# ---------------------------------------------------------------- fine-tuning switches
@pytest.mark.parametrize('freeze', ['backbone', 'head'])
def test_finetune_freeze_leaves_unchanged_after_a_step(freeze):
  overrides = dict(img_size=16, num_classes=10)
  params = _random_like(_abstract_params('vit_demo', **overrides), 0)
  c = _opt_cfg('vit_demo', overrides)
  c.finetune.freeze = freeze
  tx = optimizers.make_optimizer(c, optax.constant_schedule(1e-3))
  updates, _ = tx.update(_random_like(params, 1), tx.init(params), params)
  new = optax.apply_updates(params, updates)
  for k, v in _flat(new).items():
    frozen = k.startswith('head/') == (freeze == 'head')
    unchanged = np.array_equal(np.asarray(v), np.asarray(_flat(params)[k]))
    assert unchanged == frozen, (freeze, k)


def test_finetune_head_names_and_errors():
  assert optimizers.head_name('resnet50') == 'fc'
  assert optimizers.head_name('swin_tiny_patch4_window7_224') == 'head'
  assert optimizers.head_name('shunted_t') == 'head'
  c = _opt_cfg('vit_demo', {})
  c.finetune.freeze = 'all'
  with pytest.raises(ValueError, match=r"config\.finetune\.freeze='all'"):
    optimizers.make_optimizer(c, optax.constant_schedule(1e-3))
  c.finetune.freeze, c.finetune.new_head = 'head', True
  with pytest.raises(ValueError, match=r'config\.finetune\.new_head=True with'):
    optimizers.make_optimizer(c, optax.constant_schedule(1e-3))
  c = _opt_cfg('detr_resnet50', {})
  c.finetune.freeze = 'backbone'
  with pytest.raises(ValueError, match=r'config\.finetune.*detr'):
    optimizers.make_optimizer(c, optax.constant_schedule(1e-3))


def test_finetune_head_replaces_or_keeps_the_loaded_head():
  overrides = dict(img_size=16, num_classes=10)
  abstract = _abstract_params('vit_demo', **overrides)
  loaded, fresh = _random_like(abstract, 0), _random_like(abstract, 1)
  c = _opt_cfg('vit_demo', overrides)
  same, reset = optimizers.finetune_head(c, loaded, fresh)
  assert same is loaded and reset == []
  c.finetune.new_head = True
  params, reset = optimizers.finetune_head(c, loaded, fresh)
  assert sorted(reset) == ["['head']['bias']", "['head']['kernel']"]
  for k, v in _flat(params).items():
    src = fresh if k.startswith('head/') else loaded
    np.testing.assert_array_equal(v, _flat(src)[k], err_msg=k)
  # freeze='head' needs the head to have loaded.
  c.finetune.new_head, c.finetune.freeze = False, 'head'
  assert optimizers.finetune_head(c, loaded, fresh, skipped=["['blocks_0']"])[0] is loaded
  with pytest.raises(ValueError, match=r"config\.finetune\.freeze='head' but"):
    optimizers.finetune_head(c, loaded, fresh, skipped=["['head']['kernel']"])


# ---------------------------------------------------------------- the paper configs
@pytest.mark.parametrize('path,arg,repeats,eval_resize', [
    ('configs/swin/swin_i1k.py', 'T', 1, 'center_crop'),
    ('configs/swin/swin_i1k.py', 'B-384-ft', 1, 'direct'),
    ('configs/swin/swin_i1k.py', 'L-22k-ft', 1, 'center_crop'),
    ('configs/shunted/shunted_i1k.py', 'S', 3, 'center_crop'),
    ('configs/vit/deit_i1k.py', 'B/16', 3, 'center_crop'),
    ('configs/vit/deit_i1k.py', 'B/16-384-ft', 3, 'center_crop'),
])
def test_paper_configs_carry_the_recipe(path, arg, repeats, eval_resize):
  from swin_jax.train import loop
  c = load_config(path, arg)
  assert c.input.train_augment == 'inception_crop'
  assert c.input.rand_augment == 'rand-m9-mstd0.5-inc1'
  assert (c.input.random_erasing, c.input.color_jitter) == (0.25, 0.0)
  assert c.input.repeated_augmentation == repeats
  assert c.input.eval_resize == eval_resize
  assert c.label_smoothing == 0.1
  assert tasks.mixup_options(c.mixup) == dict(RECIPE_MIXUP, correct_lam=True)
  assert ip._augment_options(c.input)['rand_augment'] == dict(
      num_layers=2, magnitude=9.0, magnitude_std=0.5, prob=0.5, increasing=True)
  assert c.optimizer.layer_decay == 0.0 and c.optimizer.ema_decay == 0.0
  assert optimizers.finetune_options(c) == (False, '')
  assert loop.model_from_config(c).img_size == c.input.image_size
  if arg == 'B/16-384-ft':  # README_deit.md
    assert (c.input.image_size, c.batch_size, c.num_epochs) == (384, 512, 30.0)
    assert (c.optimizer.lr, c.optimizer.weight_decay, c.schedule.min_lr) == (5e-6, 1e-8, 5e-6)


# ---------------------------------------------------------------- the real trainer
def _steps_in(workdir):
  d = os.path.join(workdir, 'checkpoints')
  return sorted(int(s) for s in os.listdir(d) if s.isdigit())


def _restore(workdir, step):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  mngr = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'),
                               item_names=('state', 'meta'),
                               options=ocp.CheckpointManagerOptions(read_only=True))
  return mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))['state']


def _quick(tfds_dir, **fields):
  c = load_config('configs/demo/vit_digits.py', 'quick')
  c.input.data_dir = tfds_dir
  c.progress_bar = False
  c.log_every_steps = 1
  c.checkpoint.keep = 10
  return set_fields(c, fields)


@pytest.fixture(scope='module')
def source_run(tfds_dir, tmp_path_factory):
  """A 4-step configs/demo/vit_digits.py:quick run to fine-tune from: (workdir, state)."""
  from swin_jax.train import loop
  src = str(tmp_path_factory.mktemp('source'))
  loop.train_and_evaluate(_quick(tfds_dir, total_steps=4), src)
  return src, _restore(src, 4)


def test_demo_with_the_recipe_trains_resumes_exactly_and_freezes_the_head(tfds_dir, tmp_path,
                                                                          source_run):
  """configs/demo/vit_digits.py:quick with every recipe switch on, fine-tuned from a short
  run with its loaded head frozen; 6 steps, then resumed from step 4 to the same params."""
  import json  # pylint: disable=g-import-not-at-top
  from swin_jax.train import loop
  src, start = source_run
  recipe = _quick(tfds_dir, **{
      'init_from': src, 'finetune.freeze': 'head',
      'input.train_augment': 'inception_crop', 'input.rand_augment': 'rand-m9-mstd0.5-inc1',
      'input.random_erasing': 0.25, 'input.repeated_augmentation': 2,
      'mixup.mixup_alpha': 0.8, 'mixup.cutmix_alpha': 1.0, 'label_smoothing': 0.1,
      'optimizer.layer_decay': 0.75, 'optimizer.ema_decay': 0.9,
      'optimizer.grad_accum_steps': 2})
  work = str(tmp_path / 'recipe')
  result = loop.train_and_evaluate(recipe, work)
  assert result['num_examples'] == 360 and 0.0 <= result['accuracy'] <= 1.0
  recs = [json.loads(l) for l in open(os.path.join(work, 'metrics.jsonl'))]
  train = [r for r in recs if r['split'] == 'train']
  assert len(train) == 6 and all(np.isfinite(r['loss']) and 'accuracy' in r for r in train)
  end = _restore(work, 6)
  # The loaded head is frozen; the rest trained.
  jax.tree.map(np.testing.assert_array_equal, end['params']['head'], start['params']['head'])
  assert not np.array_equal(end['params']['blocks_0']['mlp']['fc1']['kernel'],
                            start['params']['blocks_0']['mlp']['fc1']['kernel'])
  assert end['ema_params'] is not None
  # Resume: step 6 removed, the run resumes from step 4 and ends with the same bits.
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(work, resumed)
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '6'))
  assert _steps_in(resumed)[-1] == 4
  loop.train_and_evaluate(recipe, resumed)
  again = _restore(resumed, 6)
  jax.tree.map(np.testing.assert_array_equal, again['params'], end['params'])
  jax.tree.map(np.testing.assert_array_equal, again['ema_params'], end['ema_params'])


def test_new_head_reinitialises_a_loaded_head_of_the_same_shape(tfds_dir, tmp_path,
                                                               source_run):
  from swin_jax.train import loop
  src, state = source_run
  trained = state['params']
  assert np.abs(trained['head']['kernel']).max() > 0  # ViT's head starts at zeros
  for new_head in (False, True):
    c = _quick(tfds_dir, init_from=src)
    c.finetune.new_head = new_head
    trainer = loop.Trainer(c, str(tmp_path / f'ft_{new_head}'))
    state = trainer.initial_state()
    trainer.ckpt.close()
    got = jax.device_get(state.params)
    want_head = (jax.tree.map(np.zeros_like, trained['head']) if new_head
                 else trained['head'])
    jax.tree.map(np.testing.assert_array_equal, got['head'], want_head)
    jax.tree.map(np.testing.assert_array_equal, got['blocks_0'], trained['blocks_0'])
