"""Multi-process training for real: N local processes joined by jax.distributed
(swin_jax.tools.launch_local: a 127.0.0.1 coordinator, gloo CPU collectives, 4 CPU devices
each) against one process with all 8 devices.

  * 2 x 4 trains on the same global batches as 1 x 8: losses, final params and the
    evaluation (a global eval batch split over the processes, its last batch padded) agree
    to float32 reduction-order rounding; also with Mixup / CutMix, and for Shunted's
    BatchNorm (statistics over the global batch).
  * SIGTERM to ONE process: both agree on a step through JAX's preemption sync, save it
    and exit 0; rerunning resumes there and ends where 1 x 8 ends.
  * The 2 x 4 checkpoint restores into 1 x 8 and 1 x 1 with the same params.

Every process and loop here is bounded in time, and the processes are stopped at the end
whatever happens (LocalCluster's context manager).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, load_config, set_fields
from swin_jax.tools.launch_local import LocalCluster

VIT = 'configs/demo/vit_digits.py'
SHUNTED = 'configs/demo/shunted_digits.py'
TOTAL = 16
# The ViT runs: Mixup + CutMix on (a per-batch op that must not depend on the topology),
# an eval batch of 64 (5 full batches of the 360 test images, then 40 real + 24 padding:
# process 0 holds rows 0-31, process 1 rows 32-63 of each).
VIT_FIELDS = {
    'total_steps': TOTAL, 'log_every_steps': 1, 'progress_bar': False,
    'eval_batch_size': 64, 'checkpoint.every_steps': 4, 'checkpoint.keep': 20,
    'mixup.mixup_alpha': 0.8, 'mixup.cutmix_alpha': 1.0,
    'model.depth': 1,  # one block: the sharding and the per-device ops are the same
    'model.drop_path_rate': 0.1,  # drop-path keys must not depend on the process count
}
# :quick (6 steps, a checkpoint every 2) with one block per stage: the BatchNorm is in the
# stem, and one block compiles in 2/3 of the time. The plain conv formulation (not the
# demo's fast_cpu one, the same model) compiles faster: 19 s against 25 s for this run.
SHUNTED_FIELDS = {'log_every_steps': 1, 'progress_bar': False, 'eval_batch_size': 40,
                  'checkpoint.keep': 10, 'model.depths': (1, 1), 'model.fast_cpu': False}
TIMEOUT_S = 420  # per cluster run; a run here takes ~1 minute on 2 busy cores


def _cli(config, fields, workdir, tfds_dir):
  return [f'--config={config}:quick', f'--workdir={workdir}',
          f'--config.input.data_dir={tfds_dir}',
          *(f'--config.{k}={v}' for k, v in fields.items())]


def _steps(workdir):
  d = os.path.join(workdir, 'checkpoints')
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def _records(workdir, split):
  """metrics.jsonl records of ``split``; a step logged twice (the lines after the last
  checkpoint of a stopped run) counts once, as its rerun logged it."""
  out = {}
  for line in open(os.path.join(workdir, 'metrics.jsonl')):
    r = json.loads(line)
    if r['split'] == split:
      out[r['step']] = r
  return [out[k] for k in sorted(out)]


def _state(workdir, step):
  """The saved train state on this (1-device) process, whatever topology saved it."""
  from swin_jax.train import checkpointing
  return checkpointing.restore_on_host(
      checkpointing.read_only_manager(os.path.join(workdir, 'checkpoints')), step)


def _run_cluster(args, processes=2, devices=4, stop_one_after=None):
  """Runs the cluster to the end (or SIGTERM to process 1 once checkpoint
  ``stop_one_after`` exists); returns (exit codes, outputs)."""
  workdir = next(a.split('=', 1)[1] for a in args if a.startswith('--workdir='))
  with LocalCluster(args, num_processes=processes, devices_per_process=devices, cwd=ROOT,
                    echo=False) as cluster:
    if stop_one_after is not None:
      deadline = time.time() + TIMEOUT_S
      while stop_one_after not in _steps(workdir):
        if time.time() > deadline or any(p.poll() is not None for p in cluster.procs):
          cluster.stop(grace_s=5)
          pytest.fail(f'no checkpoint {stop_one_after}: ' + cluster.output(0)[-3000:])
        time.sleep(0.05)
      cluster.signal(signal.SIGTERM, process_id=1)
    codes = cluster.wait(timeout=TIMEOUT_S)
    return codes, [cluster.output(i) for i in range(processes)]


_ONE_PROCESS_SCRIPT = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, {tests!r})
    import jax, numpy as np
    from conftest import load_config, set_fields
    from swin_jax.train import loop
    c = set_fields(load_config({config!r}, 'quick'), {fields!r})
    c.input.data_dir = {tfds!r}
    loop.train_and_evaluate(c, {ref!r})
    out = dict(devices=jax.device_count())
    if {restore!r}:
      # Restore the 2 x 4 run's checkpoint on these 8 devices (the trainer's sharded
      # restore) and evaluate it.
      trainer = loop.Trainer(c, {restore!r})
      state = trainer.initial_state()
      out['restored_eval'] = trainer.evaluate(state)
      out['restored_step'] = int(state.step)
      trainer.ckpt.close()
      np.savez({restore!r} + '/restored_1x8.npz', **{{jax.tree_util.keystr(p): np.asarray(v)
               for p, v in jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]}})
    print('RESULT', json.dumps(out))
''')


def _one_process(config, fields, ref_dir, tfds_dir, devices=8, restore=''):
  script = _ONE_PROCESS_SCRIPT.format(tests=os.path.join(ROOT, 'tests'), config=config,
                                      fields=fields, tfds=tfds_dir, ref=ref_dir,
                                      restore=restore)
  env = dict(os.environ, XLA_FLAGS=os.environ['XLA_FLAGS'] +
             f' --xla_force_host_platform_device_count={devices}', JAX_PLATFORMS='cpu')
  res = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=TIMEOUT_S)
  assert res.returncode == 0, res.stderr[-3000:]
  out = json.loads(res.stdout.split('RESULT', 1)[1])
  assert out['devices'] == devices
  return out


def _assert_params_close(got, want):
  # float32 reduction order (gloo's all-reduce vs one process's) rounds differently:
  # ~1e-7 relative per step, amplified a little by Adam over 16 steps.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6), got, want)


@pytest.fixture(scope='module')
def vit_runs(tfds_dir, tmp_path_factory):
  """A 2 x 4 run stopped by SIGTERM to one process and resumed, then the 1 x 8 reference
  run, which also restores the 2 x 4 checkpoint on its 8 devices."""
  tmp = tmp_path_factory.mktemp('mp_vit')
  mp_dir, ref_dir = str(tmp / 'mp_2x4'), str(tmp / 'ref_1x8')
  args = _cli(VIT, VIT_FIELDS, mp_dir, tfds_dir)
  stopped_codes, stopped_out = _run_cluster(args, stop_one_after=4)
  stopped_steps = _steps(mp_dir)
  resumed_codes, resumed_out = _run_cluster(args)
  ref = _one_process(VIT, VIT_FIELDS, ref_dir, tfds_dir, restore=mp_dir)
  return dict(mp=mp_dir, ref=ref_dir, ref_out=ref, stopped=(stopped_codes, stopped_out,
              stopped_steps), resumed=(resumed_codes, resumed_out))


def test_sigterm_to_one_process_stops_both_at_one_step_and_resume_continues(vit_runs):
  codes, outs, steps = vit_runs['stopped']
  assert codes == [0, 0], [o[-2000:] for o in outs]
  stopped = max(steps)
  assert 4 < stopped < TOTAL, steps  # stopped after the signal, before the end
  for out in outs:  # each process saved the step the hosts agreed on, and said so
    assert f'saved step {stopped} to' in out, out[-2000:]
  codes, outs = vit_runs['resumed']
  assert codes == [0, 0], [o[-2000:] for o in outs]
  assert f'Resumed from {vit_runs["mp"]}/checkpoints at step {stopped}' in outs[0]
  assert max(_steps(vit_runs['mp'])) == TOTAL


def test_two_processes_train_as_one_with_eight_devices(vit_runs):
  mp, ref = _records(vit_runs['mp'], 'train'), _records(vit_runs['ref'], 'train')
  assert [r['step'] for r in mp] == [r['step'] for r in ref] == list(range(1, TOTAL + 1))
  losses_mp, losses_ref = (np.array([r['loss'] for r in x]) for x in (mp, ref))
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), _state(vit_runs['ref'], TOTAL)['params'],
                       _state(vit_runs['ref'], 4)['params'])
  assert max(jax.tree.leaves(moved)) > 5e-3  # it trained: far beyond the tolerances below
  # The same global batches (and Mixup draws) on 2 x 4 as on 1 x 8: equal up to float32
  # rounding (measured: 2.4e-7). A batch that depended on the process count (each process
  # reading half of the dataset) differs by ~1e-2 from the first step with lr > 0 on.
  np.testing.assert_allclose(losses_mp, losses_ref, rtol=2e-6, atol=1e-6)
  _assert_params_close(_state(vit_runs['mp'], TOTAL)['params'],
                       _state(vit_runs['ref'], TOTAL)['params'])
  # Evaluation split over the processes (rows 0-31 / 32-63 of each global eval batch,
  # the last one padded) gives one process's result.
  ev_mp, ev_ref = _records(vit_runs['mp'], 'eval')[-1], _records(vit_runs['ref'], 'eval')[-1]
  assert ev_mp['num_examples'] == ev_ref['num_examples'] == 360
  assert ev_mp['accuracy'] == ev_ref['accuracy']
  np.testing.assert_allclose(ev_mp['loss'], ev_ref['loss'], rtol=1e-5)


def test_two_process_checkpoint_restores_on_eight_devices_and_on_one(vit_runs, tfds_dir):
  from swin_jax.train import loop
  mp = vit_runs['mp']
  saved = _state(mp, TOTAL)['params']
  flat = lambda t: {jax.tree_util.keystr(p): np.asarray(v)
                    for p, v in jax.tree_util.tree_flatten_with_path(t)[0]}
  # 1 x 8 (in the reference run's process): the trainer's restore, and its evaluation.
  ref = vit_runs['ref_out']
  assert ref['restored_step'] == TOTAL
  restored = dict(np.load(os.path.join(mp, 'restored_1x8.npz')))
  assert restored.keys() == flat(saved).keys()
  for k, v in flat(saved).items():
    np.testing.assert_array_equal(restored[k], v, err_msg=k)
  ev_mp = _records(mp, 'eval')[-1]
  np.testing.assert_allclose(ref['restored_eval']['loss'], ev_mp['loss'], rtol=1e-5)
  assert ref['restored_eval']['accuracy'] == ev_mp['accuracy']
  # 1 x 1 (this test process has one device): the same restore path.
  assert jax.device_count() == 1
  c = set_fields(load_config(VIT, 'quick'), VIT_FIELDS)
  c.input.data_dir = tfds_dir
  trainer = loop.Trainer(c, mp)
  try:
    state = trainer.initial_state()
  finally:
    trainer.ckpt.close()
  assert int(state.step) == TOTAL
  for k, v in flat(jax.device_get(state.params)).items():
    np.testing.assert_array_equal(v, flat(saved)[k], err_msg=k)


def test_shunted_batchnorm_stats_over_processes_checkpoint_resume_and_eval(tfds_dir, tmp_path):
  """BatchNorm (the Shunted stem): 2 processes x 2 devices = 1 device (statistics over the
  global batch of 64, not per-device shards of 16 nor per-process halves), the batch_stats
  are checkpointed, restored on resume, and used by evaluation. (2 x 2, not the ViT runs'
  2 x 4: the same cross-process reductions, 20 s less on 2 cores.)"""
  from swin_jax.train import loop
  mp_dir, one_dir = str(tmp_path / 'mp'), str(tmp_path / 'one')
  codes, outs = _run_cluster(_cli(SHUNTED, SHUNTED_FIELDS, mp_dir, tfds_dir), devices=2)
  assert codes == [0, 0], [o[-2000:] for o in outs]
  c = set_fields(load_config(SHUNTED, 'quick'), SHUNTED_FIELDS)
  c.input.data_dir = tfds_dir
  assert jax.device_count() == 1  # this test process: the 1-device reference runs here
  loop.train_and_evaluate(c, one_dir)
  mp, one = _records(mp_dir, 'train'), _records(one_dir, 'train')
  losses = np.array([r['loss'] for r in one])
  assert len(losses) == 6 and np.all(np.isfinite(losses)) and losses[-1] != losses[0]
  np.testing.assert_allclose([r['loss'] for r in mp], losses, rtol=2e-5, atol=2e-6)
  got, want = _state(mp_dir, 6), _state(one_dir, 6)
  bn_mp, bn_one = (dict((jax.tree_util.keystr(p), v) for p, v in
                        jax.tree_util.tree_flatten_with_path(x['model_state'])[0])
                   for x in (got, want))
  assert sorted(bn_mp) == sorted(bn_one) and len(bn_one) == 2  # conv_1 mean / var
  for k in bn_one:
    assert np.abs(bn_one[k] - (0.0 if 'mean' in k else 1.0)).max() > 0  # moved
    # After 6 Adam steps, reduction-order rounding (4 shards over 2 processes vs 1) in
    # near-zero gradients is amplified by Adam's normalisation: entries agree to ~2e-5
    # absolute (values ~1e-2). Per-device or per-process statistics (16 or 32 of the 64
    # images) would be off by ~1e-2: far outside this.
    np.testing.assert_allclose(bn_mp[k], bn_one[k], rtol=1e-3, atol=1e-4, err_msg=k)
  assert _records(mp_dir, 'eval')[-1]['accuracy'] == _records(one_dir, 'eval')[-1]['accuracy']

  # Resume: the 1-device run's step-6 checkpoint removed, training resumes from step 4 and
  # ends where it did (the batch_stats were restored with the step, not re-initialised).
  work = str(tmp_path / 'resume')
  shutil.copytree(one_dir, work)
  shutil.rmtree(os.path.join(work, 'checkpoints', '6'))
  loop.train_and_evaluate(c, work)
  resumed = _state(work, 6)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  jax.tree.map(close, resumed['model_state'], want['model_state'])
  jax.tree.map(close, resumed['params'], want['params'])

  # The trainer's evaluation uses the checkpointed running averages: other batch_stats give
  # other results (that eval mode uses running averages at all: tests/test_shunted.py).
  trainer = loop.Trainer(c, work)
  state = trainer.initial_state()
  trainer.ckpt.close()
  fresh = jax.tree_util.tree_map_with_path(
      lambda p, a: np.zeros_like(a) if p[-1].key == 'mean' else np.ones_like(a),
      jax.device_get(state.model_state))
  assert trainer.evaluate(state)['loss'] != trainer.evaluate(state.replace(model_state=fresh))['loss']


def test_launcher_arguments_environment_and_exit_codes():
  from swin_jax.tools import launch_local
  args = launch_local.process_args(['--config=c.py', '--workdir=w'], 3, 2, 4321)
  assert args == ['--config=c.py', '--workdir=w', '--config.distributed.initialize=True',
                  '--config.distributed.coordinator_address=127.0.0.1:4321',
                  '--config.distributed.num_processes=3', '--config.distributed.process_id=2']
  env = launch_local.process_env(4, {'XLA_FLAGS': '--a=1 --xla_force_host_platform_device_count=8'})
  assert env['XLA_FLAGS'] == '--a=1 --xla_force_host_platform_device_count=4'
  assert env['JAX_PLATFORMS'] == 'cpu'
  assert launch_local.exit_code([0, 0]) == 0
  assert launch_local.exit_code([0, 3, 1]) == 3
  assert launch_local.exit_code([-signal.SIGKILL, 0]) == 128 + signal.SIGKILL
  port = launch_local.free_port()
  assert 1024 <= port < 65536
  res = subprocess.run([sys.executable, '-m', 'swin_jax.tools.launch_local',
                        '--num_processes=2'], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
  assert res.returncode == 2 and 'give the swin_jax.main arguments after --' in res.stderr


_GATHER_SCRIPT = textwrap.dedent('''
    import sys
    import jax, ml_collections, numpy as np
    from swin_jax.train import sharding as shd
    pid = int(sys.argv[1])
    shd.maybe_initialize_distributed(ml_collections.ConfigDict(dict(distributed=dict(
        initialize=True, coordinator_address=sys.argv[2], num_processes=2, process_id=pid))))
    mesh = shd.create_mesh()  # 2 processes x 2 devices
    full = np.arange(4 * 8192, dtype=np.float32).reshape(4, 8192)
    fsdp = jax.sharding.NamedSharding(mesh, shd.fsdp_spec(full.shape, 4))
    tree = dict(w=jax.make_array_from_callback(full.shape, fsdp, lambda i: full[i]),
                b=jax.device_put(np.ones(3, np.float32), shd.replicated(mesh)))
    assert not tree['w'].is_fully_addressable and tree['b'].is_fully_replicated
    try:
      jax.device_get(tree['w'])
      raise SystemExit('device_get read a sharded array without the gather')
    except RuntimeError:
      pass
    got = jax.device_get(shd.host_readable(tree, mesh))
    np.testing.assert_array_equal(got['w'], full)
    np.testing.assert_array_equal(got['b'], np.ones(3))
    print('GATHERED', pid, flush=True)
''')


def test_fsdp_params_gathered_for_the_main_process_to_read():
  """Drawing the eval pictures reads the params on process 0: FSDP shards over two
  processes are not all there, so ``sharding.host_readable`` all-gathers them (every process
  calls it); replicated leaves pass as they are."""
  from swin_jax.tools import launch_local
  address = f'127.0.0.1:{launch_local.free_port()}'
  env = launch_local.process_env(2, dict(os.environ))
  procs = [subprocess.Popen([sys.executable, '-c', _GATHER_SCRIPT, str(i), address], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in range(2)]
  try:
    outs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0 and f'GATHERED {i}' in out, out[-3000:]
