"""The workdir: one writer (the lock), damaged checkpoints survived, config mistakes and bad
init_from files caught up front with one line that names the field and the fix."""
import asyncio
import gc
import glob
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, load_config, run_main, set_fields
from swin_jax.train import checkpointing

DEMO = 'configs/demo/vit_digits.py'
TOTAL = 8


def _quick(tfds_dir, **overrides):
  c = load_config(DEMO, 'quick')
  c.input.data_dir = tfds_dir
  c.progress_bar = False
  return set_fields(c, overrides)


def _steps(workdir):
  d = os.path.join(workdir, 'checkpoints')
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def _state_at(workdir, step):
  mngr = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'),
                               item_names=('state', 'meta'),
                               options=ocp.CheckpointManagerOptions(read_only=True))
  return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']


def _tree_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


@pytest.fixture(scope='module')
def trained(tfds_dir, tmp_path_factory):
  """An uninterrupted 8-step run with checkpoints 2, 4, 6, 8 (copied, never changed)."""
  from swin_jax.train import loop
  work = str(tmp_path_factory.mktemp('workdir') / 'src')
  loop.train_and_evaluate(_quick(tfds_dir, total_steps=TOTAL, **{'checkpoint.keep': 10}), work)
  assert _steps(work) == [2, 4, 6, 8]
  return work


def _copy(trained, tmp_path, name='w'):
  dst = str(tmp_path / name)
  shutil.copytree(trained, dst)
  return dst


# ------------------------------------------------------------------ the lock
def test_second_run_is_refused_while_the_first_holds_the_lock(tfds_dir, tmp_path):
  """A live holder (this test process, on this host) keeps a second CLI run out: exit 2,
  one line naming --workdir, the holder and what to do, and nothing written."""
  from swin_jax.train import workdir as workdir_lib
  work = str(tmp_path / 'busy')
  os.makedirs(work)
  lock = workdir_lib.WorkdirLock(work).acquire()
  try:
    holder = json.load(open(os.path.join(work, 'lock.json')))
    assert holder['pid'] == os.getpid() and holder['host'] == socket.gethostname()
    res = run_main([f'--config={DEMO}:quick', f'--workdir={work}',
                    f'--config.input.data_dir={tfds_dir}', '--config.progress_bar=False'])
    assert res.returncode == 2, res.stderr[-2000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith(f'error: --workdir={work} is in use by another run (pid '
                           f'{os.getpid()} on host'), res.stderr[-2000:]
    assert f'kill {os.getpid()}' in line and 'another --workdir' in line
    assert 'Traceback' not in res.stderr
    assert sorted(os.listdir(work)) == ['checkpoints', 'lock.json']  # (empty) checkpoints/
    assert not os.listdir(os.path.join(work, 'checkpoints'))
  finally:
    lock.release()
  assert not os.path.exists(os.path.join(work, 'lock.json'))


def test_refused_multi_process_run_stops_on_every_process(tfds_dir, tmp_path):
  """Only process 0 reads the lock; the others learn its answer and stop too (rather than
  wait in a collective for it)."""
  from swin_jax.tools.launch_local import LocalCluster
  from swin_jax.train import workdir as workdir_lib
  work = str(tmp_path / 'busy')
  os.makedirs(work)
  args = [f'--config={DEMO}:quick', f'--workdir={work}', f'--config.input.data_dir={tfds_dir}',
          '--config.progress_bar=False']
  with workdir_lib.WorkdirLock(work):
    with LocalCluster(args, num_processes=2, devices_per_process=2, cwd=ROOT,
                      echo=False) as cluster:
      codes = cluster.wait(timeout=300)
      out = [cluster.output(i) for i in range(2)]
  assert codes == [2, 2], out
  assert f'error: --workdir={work} is in use by another run (pid {os.getpid()}' in out[0]
  assert f'error: --workdir={work}: process 0 could not take' in out[1]
  assert 'Traceback' not in out[0] + out[1]


def test_lock_is_held_while_training_and_released_on_errors(tfds_dir, tmp_path, monkeypatch):
  from swin_jax.train import loop, workdir as workdir_lib
  work = str(tmp_path / 'w')
  seen = {}

  def train(self):
    seen['holder'] = json.load(open(os.path.join(self.workdir, 'lock.json')))
    with pytest.raises(workdir_lib.WorkdirLockedError, match='is in use by another run'):
      workdir_lib.WorkdirLock(self.workdir).acquire()  # a second run in this very process
    raise RuntimeError('boom')

  monkeypatch.setattr(loop.Trainer, 'train', train)
  with pytest.raises(RuntimeError, match='boom'):
    loop.train_and_evaluate(_quick(tfds_dir), work)
  assert seen['holder']['pid'] == os.getpid()
  assert not os.path.exists(os.path.join(work, 'lock.json'))


def _dead_pid():
  proc = subprocess.Popen([sys.executable, '-c', 'pass'])
  proc.wait()
  return proc.pid


def _write_lock(work, **fields):
  info = dict(host=socket.gethostname(), pid=os.getpid(), pid_start=None,
              started=time.time(), heartbeat=time.time(), token='theirs')
  info.update(fields)
  with open(os.path.join(work, 'lock.json'), 'w') as f:
    json.dump(info, f)


@pytest.mark.parametrize('holder,why', [
    (lambda: dict(pid=_dead_pid()), 'is gone'),
    (lambda: dict(pid_start='1'), 'is now another process'),  # this pid, reused
    (lambda: dict(host='elsewhere', heartbeat=time.time() - 3600), 'no heartbeat for 60 min'),
])
def test_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog, holder, why):
  from swin_jax.train import workdir as workdir_lib
  work = str(tmp_path)
  _write_lock(work, **holder())
  with caplog.at_level(logging.WARNING, logger='swin_jax'):
    lock = workdir_lib.WorkdirLock(work).acquire()
  assert 'Taking over the stale lock' in caplog.text and why in caplog.text, caplog.text
  mine = json.load(open(os.path.join(work, 'lock.json')))
  assert mine['pid'] == os.getpid() and mine['token'] != 'theirs'
  lock.release()
  assert os.listdir(work) == []  # the stale lock's renamed copy is gone too


def test_live_locks_are_refused(tmp_path):
  from swin_jax.train import workdir as workdir_lib
  work = str(tmp_path)
  _write_lock(work, host='elsewhere', pid=123)  # another host, fresh heartbeat
  with pytest.raises(workdir_lib.WorkdirLockedError) as e:
    workdir_lib.WorkdirLock(work).acquire()
  msg = str(e.value)
  assert "pid 123 on host 'elsewhere'" in msg and f'delete {work}/lock.json' in msg
  assert '\n' not in msg
  with open(os.path.join(work, 'lock.json'), 'w') as f:
    f.write('{"host": "x", "pi')  # a run between create and write: not stale yet
  with pytest.raises(workdir_lib.WorkdirLockedError, match='taking the lock right now'):
    workdir_lib.WorkdirLock(work).acquire()
  old = time.time() - 60
  os.utime(os.path.join(work, 'lock.json'), (old, old))  # garbage for a minute: stale
  workdir_lib.WorkdirLock(work).acquire().release()


def test_heartbeat_and_release_only_of_our_own_lock(tmp_path, monkeypatch):
  from swin_jax.train import workdir as workdir_lib
  monkeypatch.setattr(workdir_lib, 'HEARTBEAT_S', 0.05)
  path = os.path.join(tmp_path, 'lock.json')
  lock = workdir_lib.WorkdirLock(str(tmp_path)).acquire()
  first = json.load(open(path))['heartbeat']
  deadline = time.time() + 10
  while json.load(open(path))['heartbeat'] == first and time.time() < deadline:
    time.sleep(0.05)
  assert json.load(open(path))['heartbeat'] > first
  _write_lock(str(tmp_path), token='theirs')  # someone broke the lock and took it
  lock.release()
  assert json.load(open(path))['token'] == 'theirs'  # not ours: left alone


def test_lock_on_a_gs_workdir(tmp_path, monkeypatch):
  """gs:// (mapped onto a local dir): no O_EXCL there; written, read back, released."""
  from etils import epath
  from swin_jax.train import checkpointing, workdir as workdir_lib
  root = tmp_path / 'gcs'
  local = lambda p: str(root / os.fspath(p)[len('gs://'):]) if os.fspath(p).startswith(
      'gs://') else os.fspath(p)
  monkeypatch.setattr(checkpointing, 'as_path', lambda p: epath.Path(local(p)))
  checkpointing.makedirs('gs://b/run')
  lock = workdir_lib.WorkdirLock('gs://b/run').acquire()
  assert json.load(open(root / 'b/run/lock.json'))['pid'] == os.getpid()
  with pytest.raises(workdir_lib.WorkdirLockedError, match='gs://b/run is in use'):
    workdir_lib.WorkdirLock('gs://b/run').acquire()
  lock.release()
  assert not (root / 'b/run/lock.json').exists()


def test_read_only_workdir_one_line_and_evaluate_still_reads_it(trained, tfds_dir, tmp_path):
  from swin_jax.train import loop
  work = _copy(trained, tmp_path, 'ro')
  before = sorted(os.listdir(work))
  os.chmod(work, 0o555)
  immutable = False
  try:
    if os.access(work, os.W_OK):  # root ignores permissions: make the directory immutable
      immutable = subprocess.run(['chattr', '+i', work], capture_output=True).returncode == 0
      if not immutable:
        pytest.skip('cannot make a read-only directory here (root without chattr)')
    res = run_main([f'--config={DEMO}:quick', f'--workdir={work}', '--config.total_steps=10',
                    f'--config.input.data_dir={tfds_dir}', '--config.progress_bar=False'])
    assert res.returncode == 2, res.stderr[-2000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith(f'error: --workdir={work} is not writable ('), line
    assert 'Use a writable --workdir' in line and 'Traceback' not in res.stderr
    assert sorted(os.listdir(work)) == before
    # --mode=evaluate only reads: it takes no lock and works on the read-only copy.
    metrics = loop.evaluate(_quick(tfds_dir, total_steps=TOTAL), work)
    assert metrics['num_examples'] == 360
    assert sorted(os.listdir(work)) == before
  finally:
    if immutable:
      subprocess.run(['chattr', '-i', work], check=True)
    os.chmod(work, 0o755)


# ------------------------------------------------------------------ damaged checkpoints
def _largest_array_file(step_dir):
  files = glob.glob(os.path.join(step_dir, 'state', 'ocdbt.process_0', 'd', '*'))
  return max(files, key=os.path.getsize)


def _damage(step_dir, kind):
  if kind == 'missing array file':
    os.remove(_largest_array_file(step_dir))
  elif kind == 'truncated array file':
    f = _largest_array_file(step_dir)
    os.truncate(f, os.path.getsize(f) // 2)
  elif kind == 'garbage in the meta item':
    with open(os.path.join(step_dir, 'meta', 'metadata'), 'w') as f:
      f.write('{"model": xx')
  elif kind == 'garbage in _METADATA':
    with open(os.path.join(step_dir, 'state', '_METADATA'), 'w') as f:
      f.write('not json')
  elif kind == 'missing state item':
    shutil.rmtree(os.path.join(step_dir, 'state'))
  else:
    raise ValueError(kind)


@pytest.mark.parametrize('kind,reason', [
    ('missing array file', 'Error reading "'),  # names the array it misses
    ('truncated array file', 'Error reading "'),
    ('garbage in the meta item', 'not valid JSON: meta/metadata'),
    ('garbage in _METADATA', 'not valid JSON: state/_METADATA'),
    ('missing state item', 'Item "state" was not found'),
])
def test_damaged_latest_checkpoint_falls_back_and_is_kept_aside(trained, tfds_dir, tmp_path,
                                                                 caplog, kind, reason):
  from swin_jax.train import loop
  work = _copy(trained, tmp_path)
  _damage(os.path.join(work, 'checkpoints', '8'), kind)
  trainer = loop.Trainer(_quick(tfds_dir, total_steps=TOTAL), work)
  try:
    with caplog.at_level(logging.WARNING, logger='swin_jax'):
      state = trainer.initial_state()
  finally:
    trainer.ckpt.close()
  assert int(state.step) == 6
  _tree_equal(state.params, _state_at(trained, 6)['params'])
  assert 'Checkpoint step 8' in caplog.text and reason in caplog.text, caplog.text
  assert 'resuming from step 6' in caplog.text
  assert _steps(work) == [2, 4, 6]
  aside = os.listdir(os.path.join(work, 'checkpoints_damaged'))
  assert len(aside) == 1 and aside[0].startswith('8-')
  assert os.path.isdir(os.path.join(work, 'checkpoints_damaged', aside[0], 'meta'))


def test_resume_past_a_truncated_checkpoint_equals_the_uninterrupted_run(trained, tfds_dir,
                                                                          tmp_path):
  """Through the CLI: a warning (no traceback), steps 7-8 trained again from step 6, the
  same final weights bit for bit; keep-last-N never touches the damaged copy."""
  work = _copy(trained, tmp_path)
  _damage(os.path.join(work, 'checkpoints', '8'), 'truncated array file')
  res = run_main([f'--config={DEMO}:quick', f'--workdir={work}', f'--config.total_steps={TOTAL}',
                  f'--config.input.data_dir={tfds_dir}', '--config.progress_bar=False',
                  '--config.checkpoint.keep=2'])
  assert res.returncode == 0, res.stderr[-3000:]
  assert 'Checkpoint step 8' in res.stderr and 'Error reading "' in res.stderr
  assert 'at step 6' in res.stderr  # 'Resumed from ... at step 6.'
  assert 'Traceback' not in res.stderr and 'Event loop is closed' not in res.stderr
  assert _steps(work) == [6, 8]  # keep=2 removed 2 and 4 ...
  assert len(os.listdir(os.path.join(work, 'checkpoints_damaged'))) == 1  # ... not this
  got, want = _state_at(work, TOTAL), _state_at(trained, TOTAL)
  _tree_equal(got['params'], want['params'])
  _tree_equal(got['opt_state'], want['opt_state'])
  assert not os.path.exists(os.path.join(work, 'lock.json'))


def _never_retrieved(kind, filename):
  """A real asyncio future whose error, raised in code that claims to live at ``filename``,
  is never retrieved; it is collected here, so asyncio logs it now."""
  ns = {}
  exec(compile('async def read():\n  raise ValueError("truncated")\n', filename, 'exec'), ns)

  async def main():
    fut = (asyncio.ensure_future(ns['read']()) if kind == 'Task' else
           asyncio.gather(ns['read'](), ns['read']()))
    await asyncio.wait([fut])  # waits without retrieving the error
    return type(fut).__name__

  loop = asyncio.new_event_loop()
  try:
    if kind == 'pending':  # a read still queued when its loop goes
      name = type(loop.create_task(ns['read']())).__name__
    else:
      name = loop.run_until_complete(main())
  finally:
    loop.close()
  gc.collect()
  return name


@pytest.mark.filterwarnings("ignore:coroutine 'read' was never awaited")
def test_unretrieved_orbax_read_errors_are_dropped_and_no_others(monkeypatch, caplog):
  """A failed restore leaves Orbax's other reads' errors unretrieved: asyncio logs each
  Task's, and the _GatheringFuture's of the gather over a tree's reads (as CI saw once),
  with a traceback, and any read still pending when its loop goes. Those are dropped when
  they come from Orbax; the same from anyone else's code still shows."""
  asyncio_log = logging.getLogger('asyncio')
  monkeypatch.setattr(asyncio_log, 'filters', list(asyncio_log.filters))
  monkeypatch.setattr(sys, 'unraisablehook', sys.unraisablehook)
  checkpointing._quiet_failed_reads()
  orbax_file = os.path.join(os.sep, 'site-packages', 'orbax', 'checkpoint', 'fake.py')
  mine_file = os.path.join(os.sep, 'site-packages', 'mine', 'fake.py')
  with caplog.at_level(logging.ERROR, logger='asyncio'):
    kinds = [_never_retrieved(kind, f) for kind in ('Task', 'gather', 'pending')
             for f in (orbax_file, mine_file)]
  assert kinds == ['Task', 'Task', '_GatheringFuture', '_GatheringFuture', 'Task', 'Task']
  records = [r for r in caplog.records if r.name == 'asyncio']
  assert [r.getMessage().split('\n')[0] for r in records] == [
      'Task exception was never retrieved', '_GatheringFuture exception was never retrieved',
      'Task was destroyed but it is pending!']
  assert all(mine_file in ''.join(traceback.format_exception(*r.exc_info)) for r in records[:2])
  assert mine_file in records[2].getMessage()


def test_checkpoint_metadata_garbage_alone_still_restores(trained, tfds_dir, tmp_path):
  """_CHECKPOINT_METADATA (Orbax's step timestamps) is not needed to restore: step 8's
  arrays are intact, so it resumes there and nothing is set aside."""
  from swin_jax.train import loop
  work = _copy(trained, tmp_path)
  with open(os.path.join(work, 'checkpoints', '8', '_CHECKPOINT_METADATA'), 'w') as f:
    f.write('{"item_handlers": garbage')
  trainer = loop.Trainer(_quick(tfds_dir, total_steps=TOTAL), work)
  try:
    state = trainer.initial_state()
  finally:
    trainer.ckpt.close()
  assert int(state.step) == 8
  _tree_equal(state.params, _state_at(trained, 8)['params'])
  assert not os.path.exists(os.path.join(work, 'checkpoints_damaged'))


def test_no_intact_checkpoint_raises_and_moves_nothing(trained, tfds_dir, tmp_path):
  from swin_jax.train import checkpointing, loop
  work = _copy(trained, tmp_path)
  for step, kind in ((2, 'truncated array file'), (4, 'garbage in the meta item'),
                     (6, 'missing array file'), (8, 'garbage in _METADATA')):
    _damage(os.path.join(work, 'checkpoints', str(step)), kind)
  trainer = loop.Trainer(_quick(tfds_dir, total_steps=TOTAL), work)
  try:
    with pytest.raises(checkpointing.NoIntactCheckpointError) as e:
      trainer.initial_state()
  finally:
    trainer.ckpt.close()
  msg = str(e.value)
  assert msg.startswith(f'--workdir={work}: no checkpoint in {work}/checkpoints restores')
  assert all(f'step {s}:' in msg for s in (2, 4, 6, 8)) and 'Nothing was moved' in msg
  assert '\n' not in msg
  assert _steps(work) == [2, 4, 6, 8] and not os.path.exists(
      os.path.join(work, 'checkpoints_damaged'))


def test_evaluate_skips_a_damaged_checkpoint_without_moving_it(trained, tfds_dir, tmp_path,
                                                               caplog):
  from swin_jax.train import loop
  work = _copy(trained, tmp_path)
  _damage(os.path.join(work, 'checkpoints', '8'), 'garbage in the meta item')
  with caplog.at_level(logging.WARNING, logger='swin_jax'):
    metrics = loop.evaluate(_quick(tfds_dir, total_steps=TOTAL), work)
  assert metrics['num_examples'] == 360
  assert 'Checkpoint step 8' in caplog.text and 'using step 6' in caplog.text
  assert _steps(work) == [2, 4, 6, 8]  # evaluation only reads


def test_changed_train_state_layout_is_a_mismatch_not_damage(trained, tfds_dir, tmp_path):
  """EMA switched on since the checkpoint was saved: Orbax cannot restore, but the files
  are fine; a clear CheckpointMismatchError, nothing set aside."""
  from swin_jax.train import checkpointing, loop
  work = _copy(trained, tmp_path)
  trainer = loop.Trainer(_quick(tfds_dir, total_steps=TOTAL, **{'optimizer.ema_decay': 0.5}),
                         work)
  try:
    with pytest.raises(checkpointing.CheckpointMismatchError,
                       match=r'\(step 8\).*ema_params: 0 arrays only in the checkpoint.*'
                             r'config.optimizer.ema_decay'):
      trainer.initial_state()
  finally:
    trainer.ckpt.close()
  assert _steps(work) == [2, 4, 6, 8] and not os.path.exists(
      os.path.join(work, 'checkpoints_damaged'))


# ------------------------------------------------------------------ config checked up front
@pytest.mark.parametrize('fields,needle', [
    ({'optimizer.lr': 0.0}, 'config.optimizer.lr=0.0 must be a finite number > 0'),
    ({'optimizer.lr': -1e-3}, 'config.optimizer.lr=-0.001'),
    ({'optimizer.lr': float('nan')}, 'config.optimizer.lr=nan'),
    ({'total_steps': 0}, 'config.total_steps=0 must be an integer >= 1'),
    ({'total_steps': None, 'num_epochs': 0.0}, 'config.num_epochs=0.0 must be > 0'),
    ({'schedule.warmup_steps': -1}, 'config.schedule.warmup_steps=-1'),
    ({'optimizer.weight_decay': -0.1}, 'config.optimizer.weight_decay=-0.1 must be in [0, inf)'),
    ({'optimizer.ema_decay': 1.0}, 'config.optimizer.ema_decay=1.0 must be in [0, 1)'),
    ({'optimizer.grad_accum_steps': 0}, 'config.optimizer.grad_accum_steps=0'),
    ({'optimizer.grad_accum_steps': 3}, 'config.batch_size=64 must be divisible by '
                                        'config.optimizer.grad_accum_steps=3'),
    ({'checkpoint.keep': 0}, 'config.checkpoint.keep=0 must be an integer >= 1'),
    ({'checkpoint.every_steps': 0}, 'config.checkpoint.every_steps=0'),
    ({'log_every_steps': 0}, 'config.log_every_steps=0'),
    ({'label_smoothing': 1.0}, 'config.label_smoothing=1.0 must be in [0, 1)'),
    ({'model.drop_path_rate': 1.5}, 'config.model.drop_path_rate=1.5 must be in [0, 1)'),
    ({'batch_size': 0}, 'config.batch_size=0 must be an integer >= 1'),
    ({'eval_batch_size': 0}, 'config.eval_batch_size=0'),
])
def test_config_mistakes_are_one_line_errors(fields, needle):
  from swin_jax.train import validate
  c = set_fields(load_config(DEMO, 'quick'), fields)
  with pytest.raises(ValueError) as e:
    validate.check_config(c)
  assert needle in str(e.value) and '\n' not in str(e.value), str(e.value)


def test_config_mistake_fails_before_the_workdir_is_created(tfds_dir, tmp_path):
  from swin_jax.train import loop
  work = tmp_path / 'never'
  with pytest.raises(ValueError, match='config.optimizer.lr=0.0'):
    loop.train_and_evaluate(_quick(tfds_dir, **{'optimizer.lr': 0.0}), str(work))
  assert not work.exists()


@pytest.mark.parametrize('fields,needle', [
    ({'input.eval_resize': 'bogus'}, "config.input.eval_resize='bogus' is not valid"),
    ({'input.eval_split': 'nope'}, "config.input.eval_split='nope' is not a split"),
])
def test_eval_input_mistakes_fail_before_training(tfds_dir, tmp_path, monkeypatch, fields,
                                                  needle):
  """Read only by the evaluation after training, yet checked when the trainer is built."""
  from swin_jax.train import loop
  monkeypatch.setattr(loop.Trainer, 'train', lambda self: pytest.fail('trained'))
  with pytest.raises(ValueError) as e:
    loop.train_and_evaluate(_quick(tfds_dir, **fields), str(tmp_path / 'w'))
  assert needle in str(e.value)


def test_cli_eval_batch_not_divisible_by_devices_fails_before_training(tfds_dir, tmp_path):
  work = tmp_path / 'w'
  env = {'XLA_FLAGS': os.environ['XLA_FLAGS'] + ' --xla_force_host_platform_device_count=8'}
  res = run_main([f'--config={DEMO}:quick', f'--workdir={work}', '--config.eval_batch_size=100',
                  f'--config.input.data_dir={tfds_dir}', '--config.progress_bar=False'], env=env)
  assert res.returncode == 2
  line = res.stderr.strip().splitlines()[-1]
  assert line.startswith('error: config.eval_batch_size=100 is not divisible by the 8 '
                         'devices'), res.stderr[-2000:]
  assert 'use a multiple of 8' in line and not work.exists()


# ------------------------------------------------------------------ init_from files
CFG = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=4.0,
           num_classes=10)  # the ViT of tests/data (see test_convert_vit.py)
DATA = os.path.join(ROOT, 'tests', 'data')


def _cut(src, dst, fraction=0.5):
  data = open(src, 'rb').read()
  with open(dst, 'wb') as f:
    f.write(data[:int(len(data) * fraction)])
  return str(dst)


def _init_error(path, overrides=CFG):
  from swin_jax.train import checkpointing
  with pytest.raises(ValueError) as e:
    checkpointing.load_variables_for_init(path, 'vit_demo', {'params': {}},
                                          model_overrides=overrides)
  msg = str(e.value)
  assert msg.startswith(f'config.init_from={path}: ') and '\n' not in msg, msg
  return msg


def test_init_from_damaged_files_name_the_file_and_the_fix(tmp_path, trained):
  st = _cut(os.path.join(DATA, 'timm_vit_token.safetensors'), tmp_path / 'vit.safetensors')
  assert 'not a readable .safetensors file' in _init_error(st)
  assert 'truncated or damaged' in _init_error(st)

  with np.load(os.path.join(DATA, 'jax_vit.npz')) as f:
    w = {k: f[k] for k in f.files}
  del w['Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel']
  np.savez(tmp_path / 'missing.npz', **w)
  msg = _init_error(str(tmp_path / 'missing.npz'), dict(CFG, global_pool='token'))
  assert "has no array 'Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel'" in msg
  cut = _cut(os.path.join(DATA, 'jax_vit.npz'), tmp_path / 'cut.npz')
  assert 'not a readable .npz file' in _init_error(cut, dict(CFG, global_pool='token'))

  torch = pytest.importorskip('torch')
  torch.save({'x': torch.zeros(1000)}, tmp_path / 'full.pth')
  pth = _cut(tmp_path / 'full.pth', tmp_path / 'cut.pth')
  assert 'not a readable PyTorch checkpoint' in _init_error(pth)

  # An Orbax workdir whose latest step is damaged: the step, why, and an intact one.
  work = _copy(trained, tmp_path)
  _damage(os.path.join(work, 'checkpoints', '8'), 'truncated array file')
  msg = _init_error(work, {})
  assert f'{work}/checkpoints/8 does not restore' in msg and 'Error reading' in msg
  assert f'(e.g. {work}/checkpoints/6)' in msg


def test_cli_truncated_safetensors_init_from_is_one_line(tfds_dir, tmp_path):
  st = _cut(os.path.join(DATA, 'timm_vit_token.safetensors'), tmp_path / 'vit.safetensors')
  work = tmp_path / 'ft'
  res = run_main([f'--config={DEMO}:quick', f'--workdir={work}', f'--config.init_from={st}',
                  f'--config.input.data_dir={tfds_dir}', '--config.progress_bar=False'])
  assert res.returncode == 2
  line = res.stderr.strip().splitlines()[-1]
  assert line.startswith(f'error: config.init_from={st}: {st} is not a readable .safetensors '
                         f'file'), res.stderr[-2000:]
  assert 'download or convert it again' in line and 'Traceback' not in res.stderr
  assert not os.path.exists(work / 'lock.json') and not os.listdir(work / 'checkpoints')
