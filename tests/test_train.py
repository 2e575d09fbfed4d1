"""The trainer: exact resume after SIGKILL, SIGTERM save, 8 vs 1 devices, NaN stop,
checkpoint mismatch, init_from, the CLI's errors; and the train step's gradient (accumulation,
FSDP) and EMA against references."""
import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, load_config, run_main, set_fields

DEMO = 'configs/demo/vit_digits.py'


def _quick(tfds_dir, **overrides):
  c = load_config(DEMO, 'quick')
  c.input.data_dir = tfds_dir
  c.progress_bar = False
  c.model.depth = 1  # one block: what these tests check does not depend on depth
  return set_fields(c, overrides)


def _params_at(workdir, step):
  mngr = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'),
                               item_names=('state', 'meta'),
                               options=ocp.CheckpointManagerOptions(read_only=True))
  out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return out['state']['params'], out['state']


def _steps(workdir):
  d = os.path.join(workdir, 'checkpoints')
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def _cli_args(workdir, tfds_dir, total):
  return [f'--config={DEMO}:quick', f'--workdir={workdir}',
          f'--config.input.data_dir={tfds_dir}', f'--config.total_steps={total}',
          '--config.checkpoint.every_steps=2', '--config.checkpoint.keep=10',
          '--config.progress_bar=False', '--config.model.depth=1']


def _start_and_signal(args, workdir, wait_for_step, sig):
  """Starts main, sends `sig` as soon as checkpoint `wait_for_step` is finalised."""
  proc = subprocess.Popen([sys.executable, '-m', 'swin_jax.main', *args], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 300
  while wait_for_step not in _steps(workdir):
    if proc.poll() is not None or time.time() > deadline:
      out = proc.communicate()[0] if proc.poll() is not None else ''
      proc.kill()
      pytest.fail(f'run ended before checkpoint {wait_for_step}: {out[-3000:]}')
    time.sleep(0.02)
  proc.send_signal(sig)
  out = proc.communicate(timeout=120)[0]
  return proc.returncode, out


def test_killed_and_resumed_run_equals_uninterrupted(tfds_dir, tmp_path):
  total = 16
  # Uninterrupted reference, in-process (same code path as the CLI).
  from swin_jax.train import loop
  ref_dir = str(tmp_path / 'ref')
  loop.train_and_evaluate(_quick(tfds_dir, total_steps=total, **{
      'checkpoint.every_steps': 2, 'checkpoint.keep': 10}), ref_dir)

  work = str(tmp_path / 'work')
  args = _cli_args(work, tfds_dir, total)
  # 1) SIGKILL right after the step-4 checkpoint: mid-training, no chance to clean up.
  rc, _ = _start_and_signal(args, work, 4, signal.SIGKILL)
  assert rc == -signal.SIGKILL
  assert max(_steps(work)) < total, 'the run finished before the kill: test is vacuous'
  lock = os.path.join(work, 'lock.json')
  assert os.path.exists(lock)  # the killed run could not release its workdir lock
  # 2) resume, then SIGTERM (preemption): saves the current step and exits 0.
  rc, out = _start_and_signal(args, work, 8, signal.SIGTERM)
  assert rc == 0, out[-3000:]
  stopped = max(_steps(work))
  assert 8 <= stopped < total, (stopped, out[-2000:])
  assert 'SIGTERM' in out
  assert 'Taking over the stale lock' in out and not os.path.exists(lock)  # released on exit
  # 3) resume to the end.
  res = run_main(args)
  assert res.returncode == 0, res.stderr[-3000:]
  assert 'Resumed from' in res.stderr and 'stale lock' not in res.stderr
  got, state = _params_at(work, total)
  want, ref_state = _params_at(ref_dir, total)
  assert int(state['step']) == total
  jax.tree.map(np.testing.assert_array_equal, got, want)  # bitwise equal
  jax.tree.map(np.testing.assert_array_equal, state['opt_state'], ref_state['opt_state'])
  # metrics.jsonl and TensorBoard files were written and kept across the restarts.
  recs = [json.loads(l) for l in open(os.path.join(work, 'metrics.jsonl'))]
  assert recs[-1]['split'] == 'eval' and recs[-1]['num_examples'] == 360
  # Each step logged once: what the killed runs logged after their last checkpoint is dropped.
  assert [r['step'] for r in recs if r['split'] == 'train'] == list(range(2, total + 1, 2))
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(os.path.join(work, 'tensorboard')))
  assert json.load(open(os.path.join(work, 'config.json')))['total_steps'] == total


_DEVICES_SCRIPT = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, {tests!r})
    import jax
    from conftest import load_config
    from swin_jax.train import loop
    c = load_config('configs/demo/vit_digits.py', 'quick')
    c.input.data_dir = {tfds!r}
    c.progress_bar = False
    c.log_every_steps = 1
    c.model.depth = 1
    c.model.drop_path_rate = 0.1
    c.optimizer.grad_accum_steps = {accum}
    c.sharding.fsdp = {fsdp}
    loop.train_and_evaluate(c, {workdir!r})
    recs = [json.loads(l) for l in open({workdir!r} + '/metrics.jsonl')]
    print('RESULT', json.dumps(dict(devices=jax.device_count(),
          losses=[r['loss'] for r in recs if r['split'] == 'train'])))
''')


def _losses(tmp_path, tfds_dir, devices, accum=1, fsdp=False):
  workdir = str(tmp_path / f'd{devices}_a{accum}_f{int(fsdp)}')
  script = _DEVICES_SCRIPT.format(tests=os.path.join(ROOT, 'tests'), tfds=tfds_dir,
                                  workdir=workdir, accum=accum, fsdp=fsdp)
  env = dict(os.environ, XLA_FLAGS=os.environ['XLA_FLAGS'] + f' --xla_force_host_platform_device_count={devices}')
  res = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  out = json.loads(res.stdout.split('RESULT', 1)[1])
  assert out['devices'] == devices
  return np.array(out['losses'])


def test_eight_devices_match_one(tfds_dir, tmp_path):
  # The 1-device run in this test process (one device), the other in a subprocess.
  # (Accumulation and FSDP: the gradient tests below, exact to float32 rounding.)
  from swin_jax.train import loop
  c = _quick(tfds_dir, log_every_steps=1, **{'model.drop_path_rate': 0.1})
  loop.train_and_evaluate(c, str(tmp_path / 'one'))
  one = np.array([json.loads(l)['loss'] for l in open(tmp_path / 'one' / 'metrics.jsonl')
                  if json.loads(l)['split'] == 'train'])
  eight = _losses(tmp_path, tfds_dir, 8)
  assert len(one) == 6 and np.all(np.isfinite(one))
  assert one[-1] != one[0]  # the weights moved
  # Same global batch, same dropout keys: only the reduction order differs (float32).
  np.testing.assert_allclose(eight, one, rtol=2e-5, atol=2e-6)


# ---- the train step's gradient and EMA (swin_jax/train/steps.py) ------------------------


def _capture_grads():
  """An optax 'optimizer' whose state is the last gradient it got (params unchanged): one
  train step then hands back its gradient in new_state.opt_state, sharded as the params."""
  return optax.GradientTransformation(
      init=lambda params: jax.tree.map(jnp.zeros_like, params),
      update=lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


class _Classification:
  """ClassificationTask's train loss (tasks.py: mean softmax cross-entropy of hard labels,
  no smoothing, no Mixup) without its input pipelines, whose TensorFlow import costs a
  subprocess ~10 s."""

  def model_kwargs(self, batch):
    del batch
    return {}

  def loss(self, logits, batch):
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
    return loss, {'loss': loss}


@functools.lru_cache(maxsize=None)
def _one_block_vit(state_file=None):
  """(vit_demo with 1 block on 16x16 images, drop-path off (no randomness), its initial
  train state for _capture_grads, on the host), once per process: initialised on one
  device, or read from state_file (a subprocess then starts from this process's exact
  values, without compiling the initialisation again)."""
  import flax  # pylint: disable=g-import-not-at-top
  from swin_jax.models import create_model
  from swin_jax.train import steps
  model = create_model('vit_demo', num_classes=10, img_size=16, depth=1, drop_path_rate=0.0)
  create = lambda: steps.create_train_state(model, _capture_grads(), jax.random.PRNGKey(0),
                                            (1, 16, 16, 3), use_ema=False)
  if state_file:
    with open(state_file, 'rb') as f:
      return model, flax.serialization.from_bytes(jax.eval_shape(create), f.read())
  state = jax.device_get(jax.jit(create)())
  # The head starts at zero (timm's init), which zeroes every gradient below it: a random
  # head gives every parameter a gradient to compare.
  head = state.params['head']['kernel']
  head = np.random.default_rng(0).normal(0.0, 0.1, head.shape).astype(head.dtype)
  return model, state.replace(params={**state.params, 'head': {**state.params['head'],
                                                               'kernel': head}})


def _train_step_grads(accum, fsdp, state_file=None, batch_size=32):
  """The gradient of one jitted, sharded train step (steps.make_train_step +
  jit_train_step, as the trainer builds them), float32, on a fixed random batch, on every
  device of this process.

  Returns (gradient leaves as float64 numpy, loss, number of FSDP-sharded param leaves).
  """
  from swin_jax.train import sharding as shd, steps
  model, state = _one_block_vit(state_file)
  mesh = shd.create_mesh()
  sharding = shd.state_shardings(state, mesh, fsdp)
  step = steps.jit_train_step(steps.make_train_step(
      model, _Classification(), _capture_grads(), optax.constant_schedule(0.0),
      base_rng=jax.random.PRNGKey(1), grad_accum_steps=accum, gather_params=fsdp),
      sharding, mesh)
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(batch_size, 16, 16, 3)).astype(np.float32),
           'label': rng.integers(0, 10, batch_size).astype(np.int32)}
  new, metrics = step(jax.device_put(state, sharding), shd.global_batch(batch, mesh))
  grads = [np.asarray(g, np.float64) for g in jax.tree.leaves(jax.device_get(new.opt_state))]
  sharded = sum(not s.is_fully_replicated for s in jax.tree.leaves(sharding.params))
  return grads, float(metrics['loss']), sharded


def _assert_grads_close(got, want):
  """Per leaf, |got - want| <= 1e-5 * max|want|: the same float32 sums in another order
  (means of micro-batch means, per-device partial sums). Measured: <= 5e-7 of a leaf's
  largest entry (float32 eps 1.2e-7 times a few levels of reductions), 20x below the bound;
  a gradient that drops, repeats or mis-weights a micro-batch or a device's rows is off by
  O(1) of it (the first half of the batch alone: >= 0.6 on every leaf)."""
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert np.abs(w).max() > 0  # every leaf is compared, none is trivially zero
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * np.abs(w).max())


@pytest.fixture(scope='module')
def full_batch_grads():
  """The reference: one batch of 32, no accumulation, no FSDP, one device."""
  return _train_step_grads(accum=1, fsdp=False)


def test_accumulated_gradient_equals_full_batch_gradient(full_batch_grads):
  want, want_loss, _ = full_batch_grads
  got, loss, _ = _train_step_grads(accum=4, fsdp=False)  # 4 micro-batches of 8
  _assert_grads_close(got, want)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)  # the mean of equal-size means


_GRADS_SCRIPT = textwrap.dedent('''
    import sys
    sys.path.insert(0, {tests!r})
    import jax, numpy as np
    import test_train
    assert jax.device_count() == {devices}, jax.devices()
    grads, loss, sharded = test_train._train_step_grads({accum}, True, {state!r})
    np.savez({out!r}, loss=loss, sharded=sharded, **{{f'g{{i}}': g for i, g in enumerate(grads)}})
''')


def test_fsdp_accumulated_gradient_on_eight_devices_equals_full_batch_gradient(
    full_batch_grads, tmp_path):
  # 8 CPU devices need a process of their own (this one has 1): FSDP params, 2 micro-batches
  # of 16, each spread over the 8 devices (2 rows each).
  import flax  # pylint: disable=g-import-not-at-top
  want, want_loss, _ = full_batch_grads
  state, out = str(tmp_path / 'state.msgpack'), str(tmp_path / 'grads.npz')
  with open(state, 'wb') as f:
    f.write(flax.serialization.to_bytes(_one_block_vit()[1]))
  script = _GRADS_SCRIPT.format(tests=os.path.join(ROOT, 'tests'), devices=8, accum=2,
                                state=state, out=out)
  env = dict(os.environ, XLA_FLAGS=os.environ['XLA_FLAGS'] +
             ' --xla_force_host_platform_device_count=8')
  res = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  with np.load(out) as f:
    assert f['sharded'] > 0  # FSDP did shard params (else this is the replicated case)
    got = [f[f'g{i}'] for i in range(len(want))]
    np.testing.assert_allclose(float(f['loss']), want_loss, rtol=1e-6)
  _assert_grads_close(got, want)


class _Affine(nn.Module):
  """A linear map of the flattened image: the smallest model the train step can train."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


class _Regression:
  """A task (tasks.py interface): mean squared error to batch['target']."""

  def model_kwargs(self, batch):
    del batch
    return {}

  def loss(self, out, batch):
    loss = jnp.mean((out - batch['target']) ** 2)
    return loss, {'loss': loss}


def test_ema_is_d_times_ema_plus_one_minus_d_times_params_from_the_first_step():
  from swin_jax.train import steps
  d = 0.9  # not 0.5: swapping d and 1 - d must change the result
  model, task, tx = _Affine(), _Regression(), optax.sgd(0.5)
  state = steps.create_train_state(model, tx, jax.random.PRNGKey(0), (4, 2, 2, 1), use_ema=True)
  step = jax.jit(steps.make_train_step(model, task, tx, optax.constant_schedule(0.5),
                                       base_rng=jax.random.PRNGKey(1), ema_decay=d))
  leaves = lambda tree: [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
  ema = leaves(state.params)  # ema_0 = params_0
  swapped = list(ema)
  for got, want in zip(leaves(state.ema_params), ema):
    np.testing.assert_array_equal(got, want)
  rng = np.random.default_rng(0)
  for _ in range(4):
    batch = {'image': rng.normal(size=(4, 2, 2, 1)).astype(np.float32),
             'target': rng.normal(size=(4, 3)).astype(np.float32)}
    state, _ = step(state, batch)
    params = leaves(state.params)  # the params after this step's update
    ema = [d * e + (1 - d) * p for e, p in zip(ema, params)]
    swapped = [(1 - d) * e + d * p for e, p in zip(swapped, params)]
    # A constant d from the first step on: no warm-up rule (e.g. min(d, (1 + t) / (10 + t))).
    # float32 rounding of a few multiply-adds of O(1) values: ~1e-7; the steps move the
    # params by O(0.1), so a swapped or warmed-up decay is off by far more than 1e-5.
    for got, want in zip(leaves(state.ema_params), ema):
      np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
  assert max(np.abs(e - s).max() for e, s in zip(ema, swapped)) > 1e-2  # not vacuous


def test_keep_last_n_and_nan_loss_keeps_last_good_checkpoint(tfds_dir, tmp_path):
  from swin_jax.train import loop
  work = str(tmp_path / 'nan')
  loop.train_and_evaluate(_quick(tfds_dir, total_steps=8, **{'checkpoint.keep': 2}), work)
  assert _steps(work) == [6, 8]  # keep-last-N removed 2 and 4
  before = sorted(os.listdir(work))
  bad = _quick(tfds_dir, total_steps=12, **{'optimizer.lr': 1e38})
  # (A NaN lr is refused up front.) An lr of 1e38 makes the step-9 update overflow: the
  # param norm is inf, caught at step 9, never saved.
  with pytest.raises(loop.NonFiniteLossError, match=r'at step 9.*last good checkpoint \(step 8\)'):
    loop.train_and_evaluate(bad, work)
  assert _steps(work) == [6, 8]
  assert set(before) <= set(os.listdir(work))


def test_workdir_of_another_model_is_refused_untouched(tfds_dir, tmp_path):
  from swin_jax.train import checkpointing, loop
  work = str(tmp_path / 'other')
  loop.train_and_evaluate(_quick(tfds_dir, total_steps=4), work)
  snapshot = {f: os.path.getmtime(os.path.join(work, f)) for f in os.listdir(work)}
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match="model 'vit_demo'.*config.model.name is 'vit_tiny_patch16_224'"):
    loop.train_and_evaluate(_quick(tfds_dir, total_steps=8, **{
        'model.name': 'vit_tiny_patch16_224'}), work)
  with pytest.raises(checkpointing.CheckpointMismatchError, match='pos_embed'):
    loop.train_and_evaluate(_quick(tfds_dir, total_steps=8, **{'input.image_size': 48}), work)
  assert _steps(work) == [2, 4]
  for f, t in snapshot.items():
    if f != 'metrics.jsonl':
      assert os.path.getmtime(os.path.join(work, f)) == t, f


def test_init_from_loads_weights_only_and_evaluate_mode(tfds_dir, tmp_path):
  from swin_jax.convert import resample_pos_embed
  from swin_jax.train import loop
  src = str(tmp_path / 'src')
  final = loop.train_and_evaluate(_quick(tfds_dir, total_steps=4), src)
  want, _ = _params_at(src, 4)
  # --mode=evaluate on the workdir reproduces the end-of-training evaluation.
  again = loop.evaluate(_quick(tfds_dir, total_steps=4), src)
  assert again['accuracy'] == final['accuracy'] and again['num_examples'] == 360
  # Fine-tuning at 2x the resolution: step 0, fresh optimizer, pos_embed resampled.
  trainer = loop.Trainer(_quick(tfds_dir, init_from=src, **{'input.image_size': 32}),
                         str(tmp_path / 'ft'))
  state = trainer.initial_state()
  trainer.ckpt.close()
  assert int(state.step) == 0
  got = jax.device_get(state.params)
  np.testing.assert_allclose(got['pos_embed'],
                             resample_pos_embed(want['pos_embed'], (8, 8)), rtol=1e-6)
  got.pop('pos_embed'), want.pop('pos_embed')
  jax.tree.map(np.testing.assert_array_equal, got, want)
  mu = state.opt_state[1][0].mu  # adamw first moment starts from zero again
  assert all(float(np.abs(x).max()) == 0.0 for x in jax.tree.leaves(mu))


def test_ema_params_are_tracked_and_checkpointed(tfds_dir, tmp_path):
  from swin_jax.train import loop
  work = str(tmp_path / 'ema')
  loop.train_and_evaluate(_quick(tfds_dir, total_steps=4, **{'optimizer.ema_decay': 0.5}), work)
  _, s2 = _params_at(work, 2)
  _, s4 = _params_at(work, 4)
  # ema_4 = 0.5 * (0.5 * ema_2 + 0.5 * p_3) + 0.5 * p_4: strictly between, not equal to p_4.
  k = lambda t: np.asarray(t['blocks_0']['mlp']['fc1']['kernel'])
  assert not np.allclose(k(s4['ema_params']), k(s4['params']))
  assert np.abs(k(s4['ema_params']) - k(s2['ema_params'])).max() > 0


@pytest.mark.parametrize('args,needle', [
    (['--config=configs/demo/nope.py', '--workdir=/tmp/x'], "config file 'configs/demo/nope.py' (--config) does not exist"),
    ([f'--config={DEMO}', '--workdir=/tmp/x', '--config.optimizer.lrr=1'], 'Did you mean "lr"'),
    ([f'--config={DEMO}:bogus', '--workdir=/tmp/x'], 'unknown variant'),
    ([f'--config={DEMO}'], '--workdir=DIR is required'),
])
def test_cli_config_errors(args, needle):
  res = run_main(args)
  assert res.returncode == 2
  assert needle in res.stderr, res.stderr[-2000:]
  assert 'Traceback' not in res.stderr


def test_cli_missing_dataset_says_how_to_prepare(tmp_path):
  work = tmp_path / 'w'
  res = run_main([f'--config={DEMO}', f'--workdir={work}', '--config.input.dataset=imagenet2012',
                  '--config.input.num_classes=1000', f'--config.input.data_dir={tmp_path}'])
  assert res.returncode == 2
  assert 'config.input.dataset' in res.stderr and 'tfds build' in res.stderr, res.stderr[-2000:]


def test_cli_image_size_not_divisible_by_patch(tfds_dir, tmp_path):
  work = tmp_path / 'w'
  res = run_main([f'--config={DEMO}', f'--workdir={work}', f'--config.input.data_dir={tfds_dir}',
                  '--config.input.image_size=18'])
  assert res.returncode == 2
  assert 'img_size=18x18 is not divisible by patch_size=4x4' in res.stderr, res.stderr[-2000:]
  assert not os.path.exists(work / 'checkpoints') or not os.listdir(work / 'checkpoints')


def test_summarize_paths_groups_fresh_leaves_by_module():
  from swin_jax.train.loop import summarize_paths
  paths = ["['transformer']['encoder']['layers_0']['norm1']['bias']",
           "['class_embed']['kernel']", "['transformer']['decoder']['norm']['scale']",
           "['class_embed']['bias']", "['query_embed']['embedding']"]
  assert summarize_paths(paths) == ('transformer (2 arrays), class_embed (2 arrays), '
                                    'query_embed (1 array)')
  assert summarize_paths(paths, depth=2).startswith('transformer/encoder (1 array), '
                                                     'class_embed/kernel (1 array)')
  assert summarize_paths([]) == 'none'
