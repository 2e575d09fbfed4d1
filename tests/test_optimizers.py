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


def test_eval_outputs_respect_mask():
  task = ClassificationTask(3)
  logits = jnp.array([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
  batch = {'label': jnp.array([0, 0, 2]), 'mask': jnp.array([True, True, False])}
  out = task.summarize(jax.device_get(task.eval_outputs(logits, batch)))
  assert out['num_examples'] == 2 and out['accuracy'] == 0.5


# ---------------------------------------------------------------- lr_mults, frozen, trainable
# DETR-like parameter paths: the stem + layer1 are frozen by detr.trainable_mask, the rest of
# backbone_0 trains at 0.1x through lr_mults, the transformer and heads at the base lr.
_SHAPES = {
    'backbone_0/body/conv1/kernel': (3, 3, 3, 4),
    'backbone_0/body/layer1_0/conv1/kernel': (1, 1, 4, 4),
    'backbone_0/body/layer2_0/conv1/kernel': (1, 1, 4, 8),
    'transformer/encoder/layers_0/linear1/kernel': (8, 16),
    'transformer/encoder/layers_0/linear1/bias': (16,),
    'class_embed/kernel': (8, 11),
    'class_embed/bias': (11,),
}
_STEM = ('backbone_0/body/conv1/kernel', 'backbone_0/body/layer1_0/conv1/kernel')


def _nest(flat):
  out = {}
  for path, v in flat.items():
    node = out
    *parents, leaf = path.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out


def _flat(tree):
  return {optimizers._path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _random(seed, scale=1.0, shapes=_SHAPES):
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(scale * rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}


def _opt_cfg(**kw):
  c = ml_collections.ConfigDict()
  c.optimizer = dict(name='adamw', lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.5,
                     clip_grad_norm=0.0)
  c.optimizer.update(kw)
  return c


def _run(tx, params, grads_list):
  """Applies tx for each gradient in grads_list; returns (updates per step, params, state)."""
  state = tx.init(params)
  ups = []
  for g in grads_list:
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
    ups.append(u)
  return ups, params, state


_SCHED = optax.linear_schedule(1e-3, 2e-4, 4)  # the lr moves between steps


def test_lr_mults_equal_adamw_at_lr_times_mult_including_weight_decay():
  params = _nest(_random(0))
  grads = [_nest(_random(s)) for s in (1, 2, 3)]
  tx = optimizers.make_optimizer(_opt_cfg(lr_mults=(('^backbone_0/', 0.1),)), _SCHED)
  ups, got, _ = _run(tx, params, grads)
  # The identical optimizer at the base lr, stepped in lockstep on the same params.
  base = optimizers.make_optimizer(_opt_cfg(), _SCHED)
  p, s, base_ups = params, base.init(params), []
  for g, u in zip(grads, ups):
    b, s = base.update(g, s, p)
    base_ups.append(b)
    p = optax.apply_updates(p, u)
  # Reference: plain optax.adamw on each group alone, the backbone at 0.1 x the schedule.
  ref = {}
  for prefix, sched in (('backbone_0/', lambda s: 0.1 * _SCHED(s)), ('', _SCHED)):
    keys = [k for k in _SHAPES if k.startswith(prefix) and k not in ref]
    sub = lambda t: {k: _flat(t)[k] for k in keys}
    tx_ref = optax.adamw(sched, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.5,
                         mask=optimizers.decay_mask)
    sub_ups, sub_params, _ = _run(tx_ref, sub(params), [sub(g) for g in grads])
    ref.update({k: (sub_params[k], [u[k] for u in sub_ups]) for k in keys})
  got = _flat(got)
  for k in _SHAPES:
    mult = 0.1 if k.startswith('backbone_0/') else 1.0
    want_p, want_ups = ref[k]
    np.testing.assert_allclose(got[k], want_p, rtol=1e-6, atol=1e-9, err_msg=k)
    for step, (u, b, w) in enumerate(zip(ups, base_ups, want_ups)):
      u, b = _flat(u)[k], _flat(b)[k]
      np.testing.assert_allclose(u, w, rtol=1e-5, atol=1e-12, err_msg=f'{k} step {step}')
      # exactly mult x the update of the identical optimizer at the base lr
      np.testing.assert_allclose(u, mult * b, rtol=1e-6, atol=0, err_msg=f'{k} step {step}')
  # weight decay is in there: zero gradients still move a decayed kernel by lr * mult * wd * p
  zero = jax.tree.map(jnp.zeros_like, params)
  u, _ = tx.update(zero, tx.init(params), params)
  k = 'backbone_0/body/layer2_0/conv1/kernel'
  np.testing.assert_allclose(_flat(u)[k], -1e-3 * 0.1 * 0.5 * _flat(params)[k], rtol=1e-6)


def _adam_state(state):
  found = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
           if isinstance(s, optax.ScaleByAdamState)]
  assert len(found) == 1, state
  return found[0]


@pytest.mark.parametrize('how', ['trainable', 'frozen_regex'])
def test_frozen_leaves_stay_bit_identical_and_keep_no_adam_state(how):
  from swin_jax.models import detr
  params = _nest(_random(0))
  grads = [_nest(_random(s, scale=10.0)) for s in (1, 2, 3)]
  if how == 'trainable':  # DETR's own mask: stem + layer1 (freeze_stem=True, the official)
    cfg, trainable = _opt_cfg(lr_mults=(('^backbone_0/', 0.1),)), detr.trainable_mask
    frozen = set(_STEM)
  else:  # config.optimizer.frozen, here on top of nothing
    cfg, trainable = _opt_cfg(frozen=('^class_embed/bias$', 'layer1_')), None
    frozen = {'class_embed/bias', 'backbone_0/body/layer1_0/conv1/kernel'}
  tx = optimizers.make_optimizer(cfg, _SCHED, trainable)
  _, new, state = _run(tx, params, grads)
  before, after = _flat(params), _flat(new)
  for k in _SHAPES:
    if k in frozen:
      np.testing.assert_array_equal(after[k], before[k], err_msg=k)  # bit-identical
    else:
      assert np.abs(np.asarray(after[k]) - np.asarray(before[k])).min() > 0, k
  # The multi_transform 'frozen' branch holds nothing; Adam's moments skip the frozen leaves.
  assert set(state.inner_states) == {'train', 'frozen'}
  assert not jax.tree.leaves(state.inner_states['frozen'])
  adam = _adam_state(state.inner_states['train'])
  for moments in (adam.mu, adam.nu):
    kept = {optimizers._path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(
        moments, is_leaf=lambda x: isinstance(x, optax.MaskedNode))[0]}
    assert {k for k, v in kept.items() if isinstance(v, optax.MaskedNode)} == frozen
    assert {k for k, v in kept.items() if not isinstance(v, optax.MaskedNode)} == \
        set(_SHAPES) - frozen
  n_state = sum(np.size(x) for x in jax.tree.leaves(state))
  n_trained = sum(np.size(v) for k, v in before.items() if k not in frozen)
  assert n_state == 2 * n_trained + 2  # mu, nu of the trained leaves + two step counts


def test_detr_freeze_stem_false_and_train_backbone_false():
  import functools
  from swin_jax.models import detr
  params = _nest(_random(0))
  for kw, frozen in ((dict(freeze_stem=False), set()),
                     (dict(train_backbone=False), {k for k in _SHAPES if k.startswith('backbone_0/')})):
    tx = optimizers.make_optimizer(_opt_cfg(), _SCHED, functools.partial(detr.trainable_mask, **kw))
    _, new, _ = _run(tx, params, [_nest(_random(1))])
    for k, v in _flat(new).items():
      assert np.array_equal(v, _flat(params)[k]) == (k in frozen), (kw, k)


def test_gradient_clipping_sees_only_trained_leaves():
  from swin_jax.models import detr
  params = _nest(_random(0))
  # Trained leaves' gradients have global norm ~10 (clipped to 0.1); the frozen stem's are
  # huge: a clip over all leaves would shrink the trained updates ~1000x more.
  grads = []
  for s in (1, 2, 3):
    g = _random(s, scale=1.0)
    for k in _STEM:
      g[k] = g[k] * 1e4
    grads.append(_nest(g))
  cfg = _opt_cfg(clip_grad_norm=0.1, eps=1e-3)  # eps: Adam is not blind to the clip scale
  tx = optimizers.make_optimizer(cfg, _SCHED, detr.trainable_mask)
  ups, new, _ = _run(tx, params, grads)
  trained = [k for k in _SHAPES if k not in _STEM]
  sub = lambda t: {k: _flat(t)[k] for k in trained}

  def reference(clip_norm_of):
    """clip(0.1) by the global norm of clip_norm_of(grads) -> adamw, on the trained subset."""
    p, state = sub(params), None
    adam = optax.adamw(_SCHED, b1=0.9, b2=0.999, eps=1e-3, weight_decay=0.5,
                       mask=optimizers.decay_mask)
    state = adam.init(p)
    out = []
    for g in grads:
      scale = min(1.0, 0.1 / float(optax.global_norm(clip_norm_of(g))))
      u, state = adam.update(jax.tree.map(lambda x: x * scale, sub(g)), state, p)
      p = optax.apply_updates(p, u)
      out.append(u)
    return out

  want = reference(sub)
  for u, w in zip(ups, want):
    for k in trained:
      np.testing.assert_allclose(_flat(u)[k], w[k], rtol=2e-5, atol=1e-12, err_msg=k)
  # Non-vacuous: clipping by the norm over all leaves (frozen included) gives other updates.
  wrong = reference(lambda g: g)
  assert not np.allclose(_flat(ups[0])['class_embed/kernel'], wrong[0]['class_embed/kernel'],
                         rtol=1e-2)


@pytest.mark.parametrize('mults', [
    (('^backbone_0/',),),  # no multiplier
    (('^backbone_0/', 0.1, 2.0),),  # three items
    ('^backbone_0/', 0.1),  # one pair without the outer tuple
    (0.1, '^backbone_0/'),  # not pairs
    ((0.1, '^backbone_0/'),),  # swapped (multiplier, regex)
    (('^backbone_0/', 'x'),),  # not a number
    (('(backbone', 0.1),),  # not a regex
])
def test_bad_lr_mults_entry_names_the_field(mults):
  c = _opt_cfg(lr_mults=mults)
  with pytest.raises(ValueError, match=r'config\.optimizer\.lr_mults'):
    tx = optimizers.make_optimizer(c, _SCHED)
    tx.update(_nest(_random(1)), tx.init(_nest(_random(0))), _nest(_random(0)))


def test_frozen_given_as_one_string_is_one_regex_or_an_error():
  params = _nest(_random(0))
  c = _opt_cfg(frozen='^class_embed/')
  try:
    tx = optimizers.make_optimizer(c, _SCHED)
  except ValueError as e:
    assert 'config.optimizer.frozen' in str(e)
    return
  _, new, _ = _run(tx, params, [_nest(_random(1))])
  moved = [k for k, v in _flat(new).items() if not np.array_equal(v, _flat(params)[k])]
  assert sorted(moved) == sorted(k for k in _SHAPES if not k.startswith('class_embed/'))
