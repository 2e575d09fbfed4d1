"""bfloat16 training, end to end, for every family (ViT, Swin, Shunted, DETR).

The train step is built from each demo config as the trainer builds it (model_from_config
with config.model.dtype='bfloat16', task_from_config, the config's optimizer, make_train_step)
and checked for the dtype policy (ARCHITECTURE.md): params and optimizer state float32,
matmuls in bfloat16, softmax / normalisation / losses in float32, and for a loss that
follows the float32 step's. The models are the demo configs made shallower (one or two
blocks of each kind): the policy is per layer, so depth adds compile time and nothing to
check.

The dtype checks read the step's jaxpr, i.e. the program as JAX hands it to XLA (what TPU
and GPU run); XLA:CPU itself widens bf16 dots to float32 when it compiles them.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import jaxpr_eqns, load_config, set_fields
from swin_jax.models.build import model_from_config, trainable_from_config
from swin_jax.tools.benchmark import detection_targets
from swin_jax.train import optimizers
from swin_jax.train import sharding as shd
from swin_jax.train import steps
from swin_jax.train.tasks import task_from_config

FAMILIES = {
    'vit': ('configs/demo/vit_digits.py', {'model.depth': 1}),
    # Stage 1 only: a plain and a shifted-window block (relative bias + shift mask).
    'swin': ('configs/demo/swin_digits.py', {'model.depths': (2,), 'model.num_heads': (3,)}),
    'shunted': ('configs/demo/shunted_digits.py', {'model.depths': (1, 1)}),  # sr 4, sr 1
    'detr': ('configs/demo/detr_digits.py', {'model.enc_layers': 1, 'model.dec_layers': 2}),
}
BATCH = 4
STEPS = 3

# A float32 operand is allowed in a dot only under this preset: bf16 x bf16 products
# accumulated in float32 (the backward of float32 attention logits: float32 cotangent x
# bf16 keys), as jax.nn.dot_product_attention does.
BF16_PRESET = 'BF16_BF16_F32'


def _build(family, dtype):
  path, fields = FAMILIES[family]
  c = load_config(path, 'quick')
  # A constant lr: the demos' warm-up starts at lr 0, which would hide a step that learns.
  set_fields(c, dict(fields, **{'model.dtype': dtype, 'schedule.name': 'constant',
                                'schedule.warmup_steps': 0, 'schedule.warmup_epochs': 0.0}))
  model, task = model_from_config(c), task_from_config(c)
  schedule = optimizers.make_schedule(c, 10, 10)
  tx = optimizers.make_optimizer(c, schedule, trainable_from_config(c))
  fn = steps.make_train_step(model, task, tx, schedule, base_rng=jax.random.PRNGKey(1))
  return c, model, task, tx, fn


@functools.lru_cache(maxsize=None)
def _setup(family):
  """(the config, model, task and optimizer of the bf16 step, bf16 step fn, f32 step fn,
  a fixed batch)."""
  c, model, task, tx, bf16 = _build(family, 'bfloat16')
  *_, f32 = _build(family, 'float32')
  (image,), _ = task.init_inputs(c)
  H, W = image.shape[1:3]
  rng = np.random.default_rng(0)
  batch = {'image': rng.standard_normal((BATCH, H, W, 3)).astype(np.float32)}
  if family == 'detr':
    batch['image_mask'] = np.zeros((BATCH, H, W), bool)
    batch['image_mask'][1, H // 2:] = True  # one image padded: the masked attention path
    targets = detection_targets(BATCH, c.input.max_boxes, 3, int(c.model.num_classes))
    batch.update(jax.device_get(targets))
  else:
    batch['label'] = rng.integers(0, int(c.input.num_classes), BATCH).astype(np.int32)
  create = lambda: steps.create_train_state(model, tx, jax.random.PRNGKey(0),
                                            task.init_inputs(c), use_ema=False)
  return create, bf16, f32, batch


def _dtypes(e):
  return [str(v.aval.dtype) for v in e.invars if hasattr(v, 'aval')]


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_bf16_train_step_dtype_policy(family):
  create, bf16, _, batch = _setup(family)
  state = jax.eval_shape(create)  # abstract: tracing only, nothing is compiled
  with jax.set_mesh(shd.create_mesh()):
    closed = jax.make_jaxpr(bf16)(state, batch)
    new_state, metrics = jax.eval_shape(bf16, state, batch)
  eqns = list(jaxpr_eqns(closed.jaxpr))
  by = lambda *names: [e for e in eqns if e.primitive.name in names]

  # Matmuls and convolutions, forward and backward: bf16 operands (or float32 ones under
  # the bf16-product preset), none computed in float32.
  mm = by('dot_general', 'conv_general_dilated')
  assert len(mm) > 10
  bad = [(e.primitive.name, _dtypes(e), str(e.params.get('precision'))) for e in mm
         if not (all(d == 'bfloat16' for d in _dtypes(e)) or
                 str(e.params.get('precision')) == BF16_PRESET)]
  assert not bad, bad
  assert sum(all(d == 'bfloat16' for d in _dtypes(e)) for e in mm) > len(mm) // 2

  # Softmax (attention, cross-entropy, DETR's matching costs) takes its max in float32;
  # LayerNorm / BatchNorm / GroupNorm their rsqrt; the losses' logs and sigmoids float32.
  for name in ('reduce_max', 'rsqrt', 'log', 'logistic'):
    for e in by(name):
      assert 'bfloat16' not in _dtypes(e), (name, _dtypes(e))
  n_softmax = len([e for e in by('reduce_max') if len(e.invars[0].aval.shape) >= 2])
  assert n_softmax >= 2  # attention and the loss at least: the check is not vacuous
  assert by('rsqrt')

  # The loss and the whole new state (params, optimizer moments) stay float32.
  assert metrics['loss'].dtype == jnp.float32
  floats = [x for x in jax.tree.leaves((new_state.params, new_state.opt_state,
                                        new_state.model_state))
            if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == jnp.float32 for x in floats)


# In the suite: ViT (two train-step compiles; the suite's time is spent). Swin, Shunted and
# DETR pass too, run by hand (SWIN_JAX_BF16_ALL=1: 6 more compiles, 12 min on a busy 2-core
# CPU); the dtype policy of every family is checked above in every run.
TRACKED = ('vit',) + (('swin', 'shunted', 'detr') if os.environ.get('SWIN_JAX_BF16_ALL') else ())


@pytest.mark.parametrize('family', TRACKED)
def test_bf16_train_step_tracks_float32(family):
  """STEPS steps on one fixed batch from the same float32 state, bf16 vs float32 compute.

  bf16 rounds activations to 8 mantissa bits (relative 2^-9); on these shallow models the
  classification losses stay within 0.04% of float32's over the steps (measured: ViT
  <= 3.3e-4, Swin <= 6.3e-5, Shunted <= 2.5e-4), so 1% leaves room for other seeds and
  XLA versions, while a float32 / bf16 mix-up in a loss or norm, a lost cast or a step that
  does not learn is off by more. DETR: its first loss within 1% (measured 5e-4), then the
  matching may pair queries differently once the params differ, so the later losses are
  compared through how much each run learned: bf16 at least 3/4 of float32's decrease
  (measured 0.93).
  """
  create, bf16, f32, batch = _setup(family)
  state = jax.jit(create)()

  def run(fn):
    step = jax.jit(fn)
    s, losses = state, []
    with jax.set_mesh(shd.create_mesh()):
      for _ in range(STEPS):
        s, m = step(s, batch)
        losses.append(float(m['loss']))
    return np.array(losses), s

  l16, s16 = run(bf16)
  l32, _ = run(f32)
  assert np.isfinite(l16).all() and np.isfinite(l32).all()
  assert l32[-1] < l32[0] and l16[-1] < l16[0], (l16, l32)
  if family == 'detr':
    np.testing.assert_allclose(l16[0], l32[0], rtol=0.01)
    assert l16[0] - l16[-1] >= 0.75 * (l32[0] - l32[-1]), (l16, l32)
  else:
    np.testing.assert_allclose(l16, l32, rtol=0.01)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((s16.params, s16.opt_state))
             if jnp.issubdtype(x.dtype, jnp.floating))
