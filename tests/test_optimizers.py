"""Schedules, weight-decay mask and label smoothing against hand-computed values."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from swin_jax.train import optimizers
from swin_jax.train.tasks import ClassificationTask


def _cfg(**sched):
  c = ml_collections.ConfigDict()
  c.optimizer = dict(name='adamw', lr=1e-3, weight_decay=0.05, clip_grad_norm=1.0)
  c.schedule = dict(name='cosine', warmup_steps=10, warmup_epochs=None, min_lr=1e-5,
                    warmup_init_lr=0.0, decay_steps=None, decay_epochs=None, decay_rate=0.1)
  c.schedule.update(sched)
  return c


def test_warmup_cosine_values():
  s = optimizers.make_schedule(_cfg(), total_steps=110, steps_per_epoch=10)
  assert float(s(0)) == 0.0
  np.testing.assert_allclose(float(s(5)), 0.5e-3, rtol=1e-6)
  np.testing.assert_allclose(float(s(10)), 1e-3, rtol=1e-6)
  # cosine from 1e-3 to 1e-5 over 100 steps: halfway = min + (max-min)/2
  np.testing.assert_allclose(float(s(60)), 1e-5 + (1e-3 - 1e-5) * 0.5, rtol=1e-5)
  np.testing.assert_allclose(float(s(110)), 1e-5, rtol=1e-5)


def test_warmup_in_epochs_linear_and_step():
  s = optimizers.make_schedule(_cfg(name='linear', warmup_steps=None, warmup_epochs=1.0,
                                    min_lr=0.0), total_steps=30, steps_per_epoch=10)
  np.testing.assert_allclose(float(s(10)), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(float(s(20)), 0.5e-3, rtol=1e-6)
  s = optimizers.make_schedule(_cfg(name='step', warmup_steps=0, decay_epochs=(2, 4)),
                               total_steps=60, steps_per_epoch=10)
  np.testing.assert_allclose([float(s(t)) for t in (19, 20, 39, 40)],
                             [1e-3, 1e-4, 1e-4, 1e-5], rtol=1e-5)


def test_bad_schedule_fields_are_named():
  with pytest.raises(ValueError, match='config.schedule.name'):
    optimizers.make_schedule(_cfg(name='cosin'), 100, 10)
  with pytest.raises(ValueError, match='warmup'):
    optimizers.make_schedule(_cfg(warmup_steps=200), 100, 10)
  c = _cfg()
  c.optimizer.name = 'adam_w'
  with pytest.raises(ValueError, match='config.optimizer.name'):
    optimizers.make_optimizer(c, optax.constant_schedule(1.0))


def test_decay_mask_excludes_biases_norms_pos_embed_cls_token():
  params = {'cls_token': jnp.zeros((1, 1, 4)), 'pos_embed': jnp.zeros((1, 5, 4)),
            'patch_embed': {'proj': {'kernel': jnp.zeros((2, 2, 3, 4)), 'bias': jnp.zeros(4)}},
            'blocks_0': {'norm1': {'scale': jnp.zeros(4), 'bias': jnp.zeros(4)},
                         'attn': {'qkv': {'kernel': jnp.zeros((4, 12)), 'bias': jnp.zeros(12)},
                                  'relative_position_bias_table': jnp.zeros((9, 2))}}}
  m = optimizers.decay_mask(params)
  assert m['patch_embed']['proj']['kernel'] and m['blocks_0']['attn']['qkv']['kernel']
  assert not any([m['cls_token'], m['pos_embed'], m['patch_embed']['proj']['bias'],
                  m['blocks_0']['norm1']['scale'], m['blocks_0']['norm1']['bias'],
                  m['blocks_0']['attn']['qkv']['bias'],
                  m['blocks_0']['attn']['relative_position_bias_table']])


def test_weight_decay_applies_only_to_masked_params():
  c = _cfg(name='constant', warmup_steps=0)
  c.optimizer.clip_grad_norm = 0.0
  tx = optimizers.make_optimizer(c, optax.constant_schedule(0.1))
  params = {'w': jnp.ones((2, 2)), 'b': jnp.ones(2)}
  zero = jax.tree.map(jnp.zeros_like, params)
  upd, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(upd['w'], -0.1 * 0.05 * np.ones((2, 2)), rtol=1e-6)
  np.testing.assert_allclose(upd['b'], 0.0)


def test_label_smoothing_cross_entropy_matches_numpy():
  logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]], np.float32)
  labels = np.array([0, 1])
  eps = 0.1
  task = ClassificationTask(3, label_smoothing=eps)
  loss, metrics = task.loss(jnp.asarray(logits), {'label': jnp.asarray(labels)})
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  target = np.full((2, 3), eps / 3)
  target[np.arange(2), labels] += 1 - eps
  np.testing.assert_allclose(float(loss), -(target * logp).sum(-1).mean(), rtol=1e-6)
  assert math.isclose(float(metrics['accuracy']), 0.5)


def test_eval_sums_respect_mask():
  task = ClassificationTask(3)
  logits = jnp.array([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
  batch = {'label': jnp.array([0, 0, 2]), 'mask': jnp.array([True, True, False])}
  out = task.summarize(jax.device_get(task.eval_sums(logits, batch)))
  assert out['num_examples'] == 2 and out['accuracy'] == 0.5
