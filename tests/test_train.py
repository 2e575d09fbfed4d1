"""The trainer: exact resume after SIGKILL, SIGTERM save, 8 vs 1 devices, accumulation,
NaN stop, checkpoint mismatch, init_from, and the CLI's errors."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, load_config, run_main, set_fields

DEMO = 'configs/demo/vit_digits.py'


def _quick(tfds_dir, **overrides):
  c = load_config(DEMO, 'quick')
  c.input.data_dir = tfds_dir
  c.progress_bar = False
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
          '--config.progress_bar=False']


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


def test_eight_devices_match_one_and_accumulation_matches_big_batch(tfds_dir, tmp_path):
  # The 1-device run in this test process (one device), the others in subprocesses.
  from swin_jax.train import loop
  c = _quick(tfds_dir, log_every_steps=1, **{'model.drop_path_rate': 0.1})
  loop.train_and_evaluate(c, str(tmp_path / 'one'))
  one = np.array([json.loads(l)['loss'] for l in open(tmp_path / 'one' / 'metrics.jsonl')
                  if json.loads(l)['split'] == 'train'])
  eight = _losses(tmp_path, tfds_dir, 8)
  eight_fsdp_accum = _losses(tmp_path, tfds_dir, 8, accum=2, fsdp=True)
  assert len(one) == 6 and np.all(np.isfinite(one))
  assert one[-1] != one[0]  # the weights moved
  # Same global batch, same dropout keys: only the reduction order differs (float32).
  np.testing.assert_allclose(eight, one, rtol=2e-5, atol=2e-6)
  # Two micro-batches of 32 average to the same gradient as one batch of 64 (no BatchNorm);
  # drop-path masks are drawn per micro-batch, so losses differ at the dropout-noise level.
  np.testing.assert_allclose(eight_fsdp_accum, one, rtol=2e-2)


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
