"""experiments/tpu/launch.py (dry runs and a fake gcloud: no TPU, no network, no jax), and
the trainer's gs:// workdir handling (swin_jax/train/checkpointing.py path helpers) on a
fake bucket mapped to a local directory."""
import importlib.util
import io
import json
import os
import shlex
import subprocess
import sys
import tarfile
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'experiments', 'tpu', 'launch.py')

_spec = importlib.util.spec_from_file_location('tpu_launch', SCRIPT)
launch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(launch)

VM = ['--name=swin-v4', '--zone=us-central2-b']
RUN = ['--config=configs/swin/swin_i1k.py:T', '--workdir=gs://my-bucket/runs/swin_t',
       '--data-dir=gs://my-bucket/tensorflow_datasets']


def _main(argv, **kw):
  """(exit code, stdout, stderr) of launch.main(argv)."""
  out, err = io.StringIO(), io.StringIO()
  old, sys.stderr = sys.stderr, err
  try:
    rc = launch.main(argv, out=out, **kw)
  finally:
    sys.stderr = old
  return rc, out.getvalue(), err.getvalue()


def _commands(text):
  """The non-comment lines of a dry run, each split as the shell would."""
  return [shlex.split(l) for l in text.splitlines() if l and not l.startswith('#')]


def _flag(cmd, name):
  """Value of `name=V` or `name V` in an argv."""
  for i, a in enumerate(cmd):
    if a.startswith(name + '='):
      return a.split('=', 1)[1]
    if a == name:
      return cmd[i + 1]
  return None


def _remote_argv(ssh_cmd):
  """The training argv inside a launch ssh command (after `setsid nohup`)."""
  remote = shlex.split(_flag(ssh_cmd, '--command'))
  start = remote.index('nohup') + 1
  return remote[start:remote.index('>>', start)]


class FakeGcloud:
  """Records commands instead of running them (as subprocess.run would be called)."""

  def __init__(self):
    self.calls = []

  def __call__(self, cmd, **kw):
    self.calls.append(list(cmd))
    return types.SimpleNamespace(returncode=0, stdout='', stderr='')


# --------------------------------------------------------------------- the CLI as a script
def test_up_dry_run_prints_copy_pastable_commands():
  overrides = ['--config.optimizer.lr=1e-3', '--config.schedule.decay_epochs=(30, 60)',
               "--config.model.name=it's $HOME"]
  p = subprocess.run([sys.executable, SCRIPT, 'up', *VM, '--accelerator-type=v4-32', '--spot',
                      *RUN, '--dry-run', '--', *overrides],
                     capture_output=True, text=True, cwd=ROOT, check=False)
  assert p.returncode == 0, p.stderr
  cmds = _commands(p.stdout)
  assert len(cmds) == 4, p.stdout  # describe || create, scp, ssh install, ssh launch
  check, create = cmds[0][:cmds[0].index('||')], cmds[0][cmds[0].index('||') + 1:]
  assert check[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'describe', 'swin-v4']
  assert create[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'swin-v4']
  assert _flag(create, '--zone') == 'us-central2-b'
  assert _flag(create, '--accelerator-type') == 'v4-32'
  assert _flag(create, '--version') == 'tpu-ubuntu2204-base'
  assert '--spot' in create
  scp, install, start = cmds[1:]
  assert scp[4] == 'scp' and scp[6] == 'swin-v4:swin_jax-src.tar.gz'
  for c in (scp, install, start):
    assert _flag(c, '--worker') == 'all' and _flag(c, '--zone') == 'us-central2-b'
  assert install[4] == 'ssh' and 'pip install' in _flag(install, '--command')
  assert 'jax[tpu]' in shlex.split(_flag(install, '--command'))
  argv = _remote_argv(start)
  assert argv[:3] == ['python3', '-m', 'swin_jax.main']
  assert '--config=configs/swin/swin_i1k.py:T' in argv
  assert '--workdir=gs://my-bucket/runs/swin_t' in argv
  assert '--config.distributed.initialize=True' in argv
  assert '--config.input.data_dir=gs://my-bucket/tensorflow_datasets' in argv
  assert argv[-3:] == overrides  # each override one word, exactly as given
  remote = _flag(start, '--command')
  assert 'setsid nohup' in remote and '< /dev/null &' in remote
  assert '~/swin_jax_runs/swin_t/train.log' in remote


def test_up_runs_create_install_launch_in_order(tmp_path, monkeypatch):
  monkeypatch.setattr(launch.tempfile, 'gettempdir', lambda: str(tmp_path))
  fake = FakeGcloud()
  rc, out, err = _main(['up', *VM, '--accelerator-type=v5litepod-16', *RUN],
                       describe=lambda args: None, run=fake)
  assert rc == 0, err
  verbs = [c[4] for c in fake.calls]
  assert verbs == ['create', 'scp', 'ssh', 'ssh']
  assert _flag(fake.calls[0], '--version') == 'v2-alpha-tpuv5-lite'
  tarball = fake.calls[1][5]
  with tarfile.open(tarball) as tar:
    names = set(tar.getnames())
  assert {'swin_jax/main.py', 'configs/common.py', 'configs/swin/swin_i1k.py',
          'pyproject.toml', 'experiments/tpu/launch.py'} <= names
  assert not any(n.startswith(('.venv/', 'runs/', '.git/')) or '__pycache__' in n
                 for n in names)


def test_existing_vm_is_reused_not_created():
  fake = FakeGcloud()
  ready = lambda args: {'state': 'READY', 'acceleratorType': 'v4-32'}
  rc, out, _ = _main(['create', *VM, '--accelerator-type=v4-32'], describe=ready, run=fake)
  assert rc == 0 and fake.calls == [] and 'reusing TPU VM swin-v4' in out
  rc, out, _ = _main(['up', *VM, '--accelerator-type=v4-32', *RUN, '--dry-run'], describe=ready)
  assert rc == 0
  assert [c[4] for c in _commands(out)] == ['scp', 'ssh', 'ssh']  # no create
  # Absent: created.
  rc, out, _ = _main(['create', *VM, '--accelerator-type=v4-32', '--dry-run'],
                     describe=lambda args: None)
  assert rc == 0 and [c[4] for c in _commands(out)] == ['create']
  # Stopped: started.
  stopped = lambda args: {'state': 'STOPPED', 'acceleratorType': 'v4-32'}
  rc, out, _ = _main(['create', *VM, '--accelerator-type=v4-32', '--dry-run'], describe=stopped)
  assert rc == 0 and [c[4] for c in _commands(out)] == ['start']


@pytest.mark.parametrize('info,needle', [
    ({'state': 'READY', 'acceleratorType': 'v4-8'}, '--accelerator-type=v4-8 to reuse'),
    ({'state': 'PREEMPTED', 'acceleratorType': 'v4-32'}, 'delete --name=swin-v4'),
    ({'state': 'CREATING', 'acceleratorType': 'v4-32'}, 'wait until'),
])
def test_existing_vm_that_cannot_be_used(info, needle):
  fake = FakeGcloud()
  rc, _, err = _main(['up', *VM, '--accelerator-type=v4-32', *RUN], describe=lambda a: info,
                     run=fake)
  assert rc == 2 and needle in err and fake.calls == []


def test_launch_asks_gcloud_for_the_slice_when_not_told():
  fake = FakeGcloud()
  rc, _, err = _main(['launch', *VM, *RUN], describe=lambda a: None, run=fake)
  assert rc == 2 and 'does not exist' in err and '`up`' in err and fake.calls == []
  # A single-host VM takes a local workdir (on its own disk).
  single = lambda a: {'state': 'READY', 'acceleratorType': 'v4-8'}
  rc, _, err = _main(['launch', *VM, '--config=configs/demo/vit_digits.py:quick',
                      '--workdir=runs/demo'], describe=single, run=fake)
  assert rc == 0, err
  assert len(fake.calls) == 1 and '--workdir=runs/demo' in _remote_argv(fake.calls[0])


def test_install_from_a_git_repo():
  rc, out, err = _main(['install', *VM, '--repo=https://github.com/me/swin_jax.git',
                        '--ref=v0.1', '--project=my-proj', '--dry-run'])
  assert rc == 0, err
  (cmd,) = _commands(out)  # no scp: the workers clone
  assert _flag(cmd, '--project') == 'my-proj' and _flag(cmd, '--worker') == 'all'
  remote = _flag(cmd, '--command')
  assert 'git clone --quiet https://github.com/me/swin_jax.git ~/swin_jax' in remote
  assert 'checkout --quiet v0.1' in remote


def test_status_logs_stop_delete():
  base = [*VM, '--workdir=gs://my-bucket/runs/swin_t', '--dry-run']
  rc, out, _ = _main(['status', *base])
  assert rc == 0 and [c[4] for c in _commands(out)] == ['describe', 'ssh']
  rc, out, _ = _main(['logs', *base, '--worker=2', '--lines=20'])
  (cmd,) = _commands(out)
  assert _flag(cmd, '--worker') == '2'
  assert 'tail -n 20 ~/swin_jax_runs/swin_t/train.log' in _flag(cmd, '--command')
  rc, out, _ = _main(['stop', *base])
  (cmd,) = _commands(out)
  assert _flag(cmd, '--worker') == 'all' and 'kill -TERM' in _flag(cmd, '--command')
  rc, out, _ = _main(['delete', *VM, '--dry-run'])
  assert _commands(out) == [['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'swin-v4',
                             '--zone=us-central2-b', '--quiet']]


@pytest.mark.parametrize('argv,needles', [
    (['launch', *VM, '--accelerator-type=v4-32', '--config=configs/demo/vit_digits.py',
      '--workdir=runs/demo'], ['--workdir=runs/demo', 'gs://BUCKET/demo', 'several hosts']),
    (['launch', *VM, '--config=configs/demo/vit_digits.py', '--workdir=/tmp/run'],
     ['--workdir=/tmp/run', '--accelerator-type']),  # slice unknown in a dry run
    (['launch', *VM, '--config=configs/demo/vit_digits.py', '--workdir=s3://b/run'],
     ['--workdir=s3://b/run', 'gs://']),
    (['launch', *VM, '--config=configs/demo/vit_digits.py', '--workdir=gs://B/run'],
     ['--workdir=gs://B/run']),
    (['launch', *VM, '--config=configs/demo/vit_digits.py'], ['--workdir is required']),
    (['launch', *VM, '--config=configs/swin/nope.py:T', '--workdir=gs://b-1/run'],
     ['--config=configs/swin/nope.py:T', 'configs/swin/swin_i1k.py', 'configs/demo/vit_digits.py']),
    (['launch', *VM, '--workdir=gs://b-1/run'], ['--config=']),
    (['launch', *VM, '--config=configs/demo/vit_digits.py', '--workdir=gs://b-1/run',
      'lr=3'], ["'lr=3'", '--config.FIELD=VALUE']),
    (['launch', *VM, '--config=configs/demo/vit_digits.py', '--workdir=gs://b-1/run',
      '--data-dir=gs://b-1/tfds', '--config.input.data_dir=gs://other'], ['--data-dir']),
    (['up', *VM, '--config=configs/demo/vit_digits.py', '--workdir=gs://b-1/run'],
     ['--accelerator-type is required']),
    (['create', '--name=Swin_V4', '--zone=z', '--accelerator-type=v4-8'], ['--name=Swin_V4']),
    (['create', *VM, '--accelerator-type=v9-8'], ['--version is required']),
    (['create', *VM, '--accelerator-type=v4-8', '--spot', '--preemptible'], ['--spot']),
    (['stop', *VM], ['--run-name']),
    (['delete', *VM, '--config.x=1'], ['launch and up']),
])
def test_bad_arguments_name_the_flag_and_run_nothing(argv, needles):
  fake = FakeGcloud()
  rc, out, err = _main(argv + ['--dry-run'], run=fake)
  assert rc == 2 and out == '' and fake.calls == []
  for n in needles:
    assert n in err, err


def test_multi_host_rule():
  assert launch.is_multi_host('v4-8') is False and launch.is_multi_host('v6e-8') is False
  assert launch.is_multi_host('v4-32') and launch.is_multi_host('v5litepod-16')
  assert launch.is_multi_host('v5p-16') and launch.is_multi_host('tpu7x-8') is None


def test_missing_gcloud_is_a_clear_error():
  def no_gcloud(cmd, **kw):
    raise FileNotFoundError(cmd[0])
  rc, _, err = _main(['delete', *VM], run=no_gcloud)
  assert rc == 2 and 'Google Cloud CLI' in err and '--dry-run' in err


# --------------------------------------------------------------- gs:// workdirs (trainer)
@pytest.fixture
def fake_bucket(tmp_path, monkeypatch):
  """gs://... mapped onto tmp_path/gcs through the trainer's path helpers; os.makedirs and
  os.path.abspath fail if handed a gs:// path (they would create '<cwd>/gs:/...')."""
  from etils import epath
  from swin_jax.train import checkpointing
  root = tmp_path / 'gcs'

  def local(p):
    p = os.fspath(p)
    return str(root / p[len('gs://'):]) if p.startswith('gs://') else p

  monkeypatch.setattr(checkpointing, 'as_path', lambda p: epath.Path(local(p)))
  monkeypatch.setattr(checkpointing, 'open_file', lambda p, mode='r': open(local(p), mode))
  for mod, name in ((os, 'makedirs'), (os.path, 'abspath')):
    original = getattr(mod, name)

    def guard(p, *a, _original=original, _name=name, **kw):
      assert not os.fspath(p).startswith('gs:'), f'{_name}({p!r})'
      return _original(p, *a, **kw)
    monkeypatch.setattr(mod, name, guard)
  return root


def test_path_helpers_keep_gs_paths_remote():
  from swin_jax.train import checkpointing
  assert checkpointing.is_remote('gs://b/x') and not checkpointing.is_remote('runs/x')
  assert checkpointing.resolve_path('gs://b/x') == 'gs://b/x'
  assert checkpointing.resolve_path('gs://b/x', expanduser=True) == 'gs://b/x'
  assert checkpointing.resolve_path('runs/x') == os.path.join(os.getcwd(), 'runs/x')
  assert checkpointing.resolve_path('~/x', expanduser=True) == os.path.expanduser('~/x')


def test_trainer_files_in_a_gs_workdir(fake_bucket, monkeypatch):
  import ml_collections
  import numpy as np
  from swin_jax import predict
  from swin_jax.train import checkpointing, loop
  work = 'gs://bucket/run'
  checkpointing.makedirs(work)
  assert (fake_bucket / 'bucket' / 'run').is_dir()
  # config.json: written, kept when equal, set aside when different.
  cfg = ml_collections.ConfigDict({'a': 1, 'task': 'detection'})
  loop.save_config(cfg, work)
  loop.save_config(cfg, work)
  cfg.a = 2
  loop.save_config(cfg, work)
  files = sorted(os.listdir(fake_bucket / 'bucket' / 'run'))
  assert len(files) == 2 and files[1] == 'config.json' and files[0].startswith('config.2')
  assert predict.load_config(work).a == 2
  # metrics.jsonl and TensorBoard events.
  writer = loop.MetricWriter(work, enabled=True)
  writer.write(2, 'train', {'loss': 0.5})
  writer.write(4, 'train', {'loss': 0.25})
  writer.close()
  recs = [json.loads(l) for l in open(fake_bucket / 'bucket' / 'run' / 'metrics.jsonl')]
  assert [r['loss'] for r in recs] == [0.5, 0.25]
  events = os.listdir(fake_bucket / 'bucket' / 'run' / 'tensorboard')
  assert len(events) == 1 and events[0].startswith('events.out.tfevents')
  assert os.path.getsize(fake_bucket / 'bucket' / 'run' / 'tensorboard' / events[0]) > 0
  # Orbax gets the gs:// directory as it is.
  seen = []
  monkeypatch.setattr(checkpointing.ocp, 'CheckpointManager',
                      lambda d, **kw: seen.append(d) or types.SimpleNamespace())
  assert checkpointing.Checkpointer(work).directory == 'gs://bucket/run/checkpoints'
  assert seen == ['gs://bucket/run/checkpoints']
  # Pictures of predictions.
  img = np.zeros((8, 8, 3), np.uint8)
  predict.draw(img, np.array([0.9]), np.array([1]), np.array([[1., 1., 5., 5.]]), 0.5, None,
               f'{work}/predictions/test_0.png')
  png = fake_bucket / 'bucket' / 'run' / 'predictions' / 'test_0.png'
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert predict.read_image(f'{work}/predictions/test_0.png').ndim == 3
  # init_from / predict on a gs:// path that holds nothing: the message keeps the address.
  with pytest.raises(FileNotFoundError, match='init_from=gs://bucket/none does not exist'):
    checkpointing.load_variables_for_init('gs://bucket/none', 'vit_tiny_patch16_224',
                                          {'params': {}})
  with pytest.raises(FileNotFoundError, match='--workdir=gs://bucket/none'):
    checkpointing.load_variables('gs://bucket/none')


def test_remote_files_stay_open_through_tf_gfile():
  """open_file on a non-local address goes through tf.io.gfile (here TF's in-memory
  filesystem, ram://, standing in for gs://): append and flush as MetricWriter uses them."""
  from swin_jax.train import checkpointing
  import tensorflow as tf
  path = 'ram://swin_jax_test/metrics.jsonl'
  with checkpointing.open_file(path, 'w') as f:
    f.write('a\n')
  f = checkpointing.open_file(path, 'a')
  f.write('b\n')
  f.flush()
  f.close()
  assert tf.io.gfile.GFile(path).read() == 'a\nb\n'
