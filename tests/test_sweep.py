"""Tests of swin_jax/sweep/: the sweep file, Optuna studies (TPE, pruning, a PostgreSQL
study shared by two workers), --parallel runs on their own CPU cores, a killed run or
worker taken up again, the summary; one real sweep of the trainer end to end.

The behaviour tests run a stand-in trainer (FAKE_MAIN below: a Python script with the
trainer's contract: metrics.jsonl records, config.json, a checkpoint, SIGTERM = save and
exit 0, resume from the checkpoint), so each trial costs a Python start, not a JAX compile.
"""
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import optuna
import pytest

from conftest import ROOT
from swin_jax import sweep as sw

VIT = os.path.join(ROOT, 'configs', 'demo', 'vit_digits.py')


def _write_sweep(path, spec):
  path.write_text(f'def get_sweep():\n  return {spec!r}\n')
  return str(path)


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


# ------------------------------------------------------------------------------ expansion
def test_grid_expands_to_the_product_with_readable_stable_names():
  spec = {'config': VIT, 'base': {'num_epochs': 2},
          'grid': {'optimizer.lr': [1e-3, 3e-3], 'model.drop_path_rate': [0.0, 0.1, 0.2]}}
  s = sw.expand(spec)
  names = [r.name for r in s.runs]
  assert len(names) == 6 and len(set(names)) == 6
  assert names[:3] == ['lr=0.001,drop_path_rate=0', 'lr=0.001,drop_path_rate=0.1',
                       'lr=0.001,drop_path_rate=0.2']
  assert s.runs[4].overrides == {'num_epochs': 2, 'optimizer.lr': 3e-3,
                                 'model.drop_path_rate': 0.1}
  assert [r.name for r in sw.expand(spec).runs] == names  # deterministic
  spec['grid']['optimizer.lr'].append(1e-5)  # a new value keeps the names of the old runs
  more = [r.name for r in sw.expand(spec).runs]
  assert more[:6] == names and more[6] == 'lr=1e-05,drop_path_rate=0'


def test_random_draws_are_deterministic_rounded_and_in_range():
  spec = {'config': VIT, 'random': {'num_samples': 5, 'seed': 3, 'params': {
      'optimizer.lr': ('loguniform', 1e-4, 1e-2), 'label_smoothing': ('uniform', 0.0, 0.2),
      'seed': ('randint', 0, 9), 'model.global_pool': ('choice', ['avg', 'token'])}}}
  a, b = sw.expand(spec), sw.expand(spec)
  assert len(a.runs) == 5 and [r.name for r in a.runs] == [r.name for r in b.runs]
  for r in a.runs:
    lr, ls = r.own['optimizer.lr'], r.own['label_smoothing']
    assert 1e-4 <= lr <= 1e-2 and 0.0 <= ls <= 0.2 and lr == float(f'{lr:.4g}')
    assert isinstance(r.own['seed'], int) and 0 <= r.own['seed'] <= 9
    assert r.own['model.global_pool'] in ('avg', 'token')
    assert r.name.startswith(f'lr={lr:.6g},label_smoothing=')
  spec['random']['seed'] = 4
  assert [r.name for r in sw.expand(spec).runs] != [r.name for r in a.runs]


def test_grid_crosses_random_and_explicit_runs_are_appended():
  s = sw.expand({'config': VIT, 'grid': {'model.drop_path_rate': [0.0, 0.1]},
                 'random': {'num_samples': 3, 'params': {
                     'optimizer.lr': ('loguniform', 1e-4, 1e-2)}},
                 'runs': [{}, {'optimizer.lr': 1e-2}]})
  assert len(s.runs) == 2 * 3 + 2
  assert [r.name for r in s.runs[-2:]] == ['base', 'lr=0.01']
  assert s.swept == ['model.drop_path_rate', 'optimizer.lr']


def test_names_use_full_keys_where_last_names_clash_and_are_filesystem_safe():
  assert sw.short_names(['optimizer.lr', 'schedule.lr', 'seed']) == {
      'optimizer.lr': 'optimizer.lr', 'schedule.lr': 'schedule.lr', 'seed': 'seed'}
  s = sw.expand({'config': VIT, 'runs': [{'init_from': 'runs/a b/x.pth',
                                          'model.depths': (2, 2, 6, 2)}]})
  assert s.runs[0].name == 'init_from=runs_a_b_x.pth,depths=2-2-6-2'
  assert sw.slug('lr=0.001,drop_path_rate=0.1') == 'lr-0.001_drop_path_rate-0.1'


@pytest.mark.parametrize('spec, words', [
    ({'config': VIT, 'grids': {'seed': [0]}}, ["'grids'", "did you mean 'grid'"]),
    ({'config': VIT, 'grid': {}}, ["'grid' is empty"]),
    ({'config': VIT, 'grid': {'optimizer.lr': 1e-3}}, ["grid['optimizer.lr']", 'a list']),
    ({'config': VIT, 'grid': {'optimizer.lr': (1e-3, 2e-3)}}, ["grid['optimizer.lr']",
                                                                'a list']),
    ({'config': VIT, 'grid': {'optimizer.lr': []}}, ["grid['optimizer.lr']", 'empty list']),
    ({'config': VIT, 'random': {'num_samples': 0, 'params': {'seed': ('randint', 0, 9)}}},
     ["random['num_samples']"]),
    ({'config': VIT, 'random': {'num_samples': 2, 'param': {}}}, ["'param'",
                                                                  "did you mean 'params'"]),
    ({'config': VIT, 'random': {'num_samples': 2, 'params': {
        'optimizer.lr': ('loguniform', 0.0, 1.0)}}}, ["'optimizer.lr'", 'loguniform']),
    ({'config': VIT, 'runs': {'optimizer.lr': 1e-3}}, ["'runs' must be a list"]),
    ({'config': VIT, 'runs': [{'optimizer.lr': 1e-3}, {'optimizer.lr': 1e-3}]},
     ["'lr=0.001'", 'same name']),
    ({'config': VIT, 'base': {'optimizer.lr': None}, 'runs': [{}]}, ["['optimizer.lr']",
                                                                     'None']),
    ({'grid': {'optimizer.lr': [1e-3]}}, ["'config' is missing"]),
    ({'config': VIT}, ["'grid', 'random', 'runs' or 'search'"]),
    ({'config': VIT, 'search': {'num_trials': 2, 'params': {'seed': ('randint', 0, 9)},
                                'sampler_arg': {}}}, ["'sampler_arg'", "'sampler_args'"]),
    ({'config': VIT, 'search': {'num_trials': 0, 'params': {'seed': ('randint', 0, 9)}}},
     ["search['num_trials']"]),
    ({'config': VIT, 'search': {'num_trials': 2, 'params': {
        'optimizer.lr': ('loguniform', -1.0, 1.0)}}}, ["'optimizer.lr'", 'loguniform']),
    ({'config': VIT, 'search': {'num_trials': 2, 'params': {}}}, ["search['params']"]),
    ({'config': VIT, 'runs': [{}], 'pruner': 3}, ["'pruner' must be a name"]),
])
def test_bad_sweep_files_are_refused_naming_the_key(spec, words):
  with pytest.raises(sw.SweepError) as e:
    sw.expand(spec)
  for w in words:
    assert w in str(e.value)


def test_config_fields_and_types_are_checked_before_anything_runs():
  s = sw.expand({'config': VIT, 'grid': {'optimizer.lrr': [1e-3]}})
  with pytest.raises(sw.SweepError, match=r"'optimizer.lrr' is not a field .*did you mean "
                     r"'optimizer.lr'"):
    sw.resolve(s)
  s = sw.expand({'config': VIT, 'base': {'total_steps': 'ten'}, 'runs': [{}]})
  with pytest.raises(sw.SweepError, match=r"sweep 'base': total_steps='ten' does not fit"):
    sw.resolve(s)
  with pytest.raises(sw.SweepError, match="sweep 'config'.*does not exist"):
    sw.resolve(sw.expand({'config': 'configs/nope.py', 'runs': [{}]}))


def test_resolve_gives_effective_values_and_the_main_command():
  s = sw.expand({'config': VIT + ':quick', 'base': {'num_epochs': 3},
                 'runs': [{'optimizer.lr': 1e-3}, {'model.drop_path_rate': 0.1}]})
  sw.resolve(s)
  assert s.runs[0].values == {'optimizer.lr': 1e-3, 'model.drop_path_rate': 0.0}
  assert s.runs[1].values == {'optimizer.lr': 2e-3, 'model.drop_path_rate': 0.1}
  assert sw.command(s, s.runs[0], 'runs/x/lr=0.001') == [
      'python', '-m', 'swin_jax.main', f'--config={VIT}:quick', '--workdir=runs/x/lr=0.001',
      '--config.num_epochs=3', '--config.optimizer.lr=0.001', '--config.progress_bar=False']


# ------------------------------------------------------------- the stand-in trainer
FAKE_MAIN = r'''
"""python fake_main.py --config=... --workdir=DIR --config.K=V...: a run of swin_jax.main
in miniature. accuracy = (0.5 + 10 lr - drop_path_rate) * step / total_steps."""
import ast, json, os, signal, sys, time
args = sys.argv[1:]
wd = next(a.split('=', 1)[1] for a in args if a.startswith('--workdir='))
ov = {}
for a in args:
  if a.startswith('--config.'):
    k, v = a[len('--config.'):].split('=', 1)
    try:
      v = ast.literal_eval(v)
    except (ValueError, SyntaxError):
      pass
    ov[k] = v
os.makedirs(wd, exist_ok=True)
cfg = {}
for k, v in ov.items():
  node = cfg
  *parents, last = k.split('.')
  for p in parents:
    node = node.setdefault(p, {})
  node[last] = v
with open(os.path.join(wd, 'config.json'), 'w') as f:
  json.dump(cfg, f)
lr, dp = ov.get('optimizer.lr', 1e-3), ov.get('model.drop_path_rate', 0.0)
total, every = ov.get('total_steps', 8), ov.get('eval_every_steps', 2)
name = os.path.basename(wd)
ck = os.path.join(wd, 'ckpt')
start = int(open(ck).read()) if os.path.exists(ck) else 0
def note(**kw):
  if os.environ.get('FAKE_CALLS'):
    with open(os.environ['FAKE_CALLS'], 'a') as f:
      f.write(json.dumps(dict(kw, name=name, pid=os.getpid(), t=time.time())) + '\n')
note(event='start', start=start, cpus=sorted(os.sched_getaffinity(0)))
if str(lr) == os.environ.get('FAKE_FAIL_LR'):
  print('error: loss=nan at step 3', flush=True)
  sys.exit(2)
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
path = os.path.join(wd, 'metrics.jsonl')
old = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
with open(path, 'w') as f:  # what came after the checkpoint goes, as the trainer does
  f.write(''.join(json.dumps(r) + '\n' for r in old if r['step'] <= start))
quality = 0.5 + 10 * lr - dp
def log(rec):
  with open(path, 'a') as f:
    f.write(json.dumps(rec) + '\n')
for step in range(start + 1, total + 1):
  time.sleep(float(os.environ.get('FAKE_STEP_S', '0.02')))
  log({'step': step, 'split': 'train', 'loss': 2.0 / step})
  if step % every == 0 and step != total:
    log({'step': step, 'split': 'eval', 'accuracy': quality * step / total, 'loss': 1.0})
  if stop or step % 2 == 0:
    with open(ck, 'w') as f:
      f.write(str(step))
  if stop:
    note(event='sigterm', step=step)
    sys.exit(0)
log({'step': total, 'split': 'eval', 'accuracy': quality, 'loss': 0.5, 'train_time_s': 7.0})
note(event='end')
print(f'step {total}: accuracy={quality:.4f}', flush=True)
'''


@pytest.fixture(scope='module')
def fake(tmp_path_factory):
  """The --main command of the stand-in trainer."""
  path = tmp_path_factory.mktemp('fake') / 'fake_main.py'
  path.write_text(FAKE_MAIN)
  return f'{sys.executable} {path}'


def _calls(path, event='start'):
  if not os.path.exists(path):
    return []
  return [r for r in map(json.loads, open(path)) if r['event'] == event]


def _quality(lr, dp):
  return 0.5 + 10 * lr - dp


def _study(d, name):
  return optuna.load_study(study_name=name, storage=f'sqlite:///{d}/study.db')


# ------------------------------------------------------- fixed runs, skipping, the summary
def test_failed_runs_are_reported_finished_ones_skipped_and_summarized(tmp_path, capsys,
                                                                       fake, monkeypatch):
  spec = {'config': VIT, 'base': {'total_steps': 4},
          'grid': {'optimizer.lr': [1e-3, 3e-3, 0.1], 'model.drop_path_rate': [0.0, 0.1]}}
  path, d = _write_sweep(tmp_path / 'sweep.py', spec), str(tmp_path / 'sw')
  calls = str(tmp_path / 'calls.jsonl')
  monkeypatch.setenv('FAKE_CALLS', calls)
  monkeypatch.setenv('FAKE_FAIL_LR', '0.1')
  args = ['--sweep', path, '--dir', d, f'--main={fake}', '--poll-secs=0.05', '--no-plot']
  assert sw.main(args) == 1  # the PNGs: test_tpe_search_...
  assert len(_calls(calls)) == 6
  out = capsys.readouterr().out
  assert 'lr=0.1,drop_path_rate=0: FAILED (exit 2)' in out and 'loss=nan at step 3' in out

  rows = _read_csv(os.path.join(d, 'summary.csv'))
  # Best first: accuracy = 0.5 + 10 lr - drop_path_rate, the failed runs last.
  assert [r['run'] for r in rows] == [
      'lr=0.003,drop_path_rate=0', 'lr=0.001,drop_path_rate=0', 'lr=0.003,drop_path_rate=0.1',
      'lr=0.001,drop_path_rate=0.1', 'lr=0.1,drop_path_rate=0', 'lr=0.1,drop_path_rate=0.1']
  assert [r['status'] for r in rows] == ['done'] * 4 + ['failed'] * 2
  assert list(rows[0])[:4] == ['run', 'lr', 'drop_path_rate', 'final accuracy']
  assert float(rows[0]['final accuracy']) == pytest.approx(_quality(3e-3, 0.0))
  assert float(rows[0]['best accuracy']) == pytest.approx(_quality(3e-3, 0.0))
  assert rows[0]['best step'] == '4' and float(rows[0]['train time (s)']) == 7.0
  assert float(rows[0]['final train loss']) == 0.5 and rows[4]['final accuracy'] == ''
  md = open(os.path.join(d, 'summary.md')).read()
  assert '| run | lr | drop_path_rate | final accuracy | final loss |' in md
  assert ('Best final accuracy: 0.5300 (lr=0.003,drop_path_rate=0, trial 2; overrides: '
          'total_steps=4, optimizer.lr=0.003, model.drop_path_rate=0).') in md
  assert 'Failed: lr=0.1,drop_path_rate=0, lr=0.1,drop_path_rate=0.1' in md
  states = [t.state.name for t in _study(d, 'sweep').trials]
  assert sorted(states) == ['COMPLETE'] * 4 + ['FAIL'] * 2

  monkeypatch.delenv('FAKE_FAIL_LR')  # again: only the two failed runs start
  assert sw.main(args) == 0
  assert [c['name'] for c in _calls(calls)[6:]] == ['lr=0.1,drop_path_rate=0',
                                                    'lr=0.1,drop_path_rate=0.1']
  assert sw.main(args) == 0 and len(_calls(calls)) == 8  # nothing left to run
  # --summarize-only needs no sweep file: the plan is in the directory.
  os.remove(os.path.join(d, 'summary.csv'))
  assert sw.main(['--summarize-only', '--dir', d, '--no-plot']) == 0
  assert [r['status'] for r in _read_csv(os.path.join(d, 'summary.csv'))] == ['done'] * 6

  spec['base']['total_steps'] = 5  # a changed base is not "finished": those runs go again
  _write_sweep(tmp_path / 'sweep.py', spec)
  capsys.readouterr()
  assert sw.main(['--sweep', path, '--dir', d, '--dry-run']) == 0
  assert capsys.readouterr().out.count('# [1/6] lr=0.001,drop_path_rate=0: changed') == 1


def test_dry_run_prints_a_script_and_writes_nothing(tmp_path):
  path = _write_sweep(tmp_path / 'sweep.py', {
      'config': VIT, 'grid': {'optimizer.lr': [1e-3, 3e-3], 'seed': [0, 1]}})
  d = tmp_path / 'sw'
  p = subprocess.run([sys.executable, '-m', 'swin_jax.sweep', f'--sweep={path}', f'--dir={d}',
                      '--dry-run'], capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert p.returncode == 0, p.stderr
  cmds = [l for l in p.stdout.splitlines() if not l.startswith('#')]
  assert len(cmds) == 4 and not d.exists()
  assert cmds[3] == (f'python -m swin_jax.main --config={VIT} --workdir={d}/lr=0.003,seed=1 '
                     f'--config.optimizer.lr=0.003 --config.seed=1 --config.progress_bar=False')
  bad = _write_sweep(tmp_path / 'bad.py', {'config': VIT, 'grid': {'optimizer.lr': 1e-3}})
  p = subprocess.run([sys.executable, '-m', 'swin_jax.sweep', f'--sweep={bad}', f'--dir={d}'],
                     capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert p.returncode == 2 and "error: sweep grid['optimizer.lr'] must be a list" in p.stderr


def test_launcher_template_submits_each_run_without_running_it(tmp_path, capsys):
  path = _write_sweep(tmp_path / 'sweep.py', {'config': VIT, 'grid': {'seed': [0, 1]}})
  jobs, d = tmp_path / 'jobs.txt', str(tmp_path / 'sw')
  rc = sw.main(['--sweep', path, '--dir', d, '--main=false',
                f'--launcher=echo {{index}} {{slug}} {{cmd}} >> {jobs}'])
  assert rc == 1  # not done yet: the jobs run elsewhere
  lines = jobs.read_text().splitlines()
  assert len(lines) == 2 and lines[1].startswith('2 seed-1 false --config=')
  assert '--workdir=' + os.path.join(d, 'seed=1') in lines[1]
  assert [r['status'] for r in _read_csv(os.path.join(d, 'summary.csv'))] == ['submitted'] * 2
  assert sw.main(['--sweep', path, '--dir', d, f'--launcher=echo {{cmd}} >> {jobs}']) == 1
  assert len(jobs.read_text().splitlines()) == 2  # submitted once, not again
  assert sw.main(['--summarize-only', '--dir', d, '--no-plot']) == 1  # the plan is there
  assert sw.main(['--sweep', path, '--dir', d, '--launcher=x {cmdd}']) == 2
  assert '{cmdd}' in capsys.readouterr().err


@pytest.mark.parametrize('flags, words', [
    (['--sampler=tpee', '--num-trials=2'], ["'tpee'", "did you mean 'tpe'"]),
    (['--sampler=tpe'], ["search['num_trials']", '--num-trials']),
    (['--pruner=medain'], ["'medain'", "did you mean 'median'"]),
    (['--pruner=median', '--sampler=grid', '--num-trials=1', '--parallel=64'],
     ['--parallel=64', 'give --parallel=']),
])
def test_bad_flags_are_refused_naming_the_flag(tmp_path, capsys, flags, words):
  path = _write_sweep(tmp_path / 'sweep.py', {'config': VIT, 'grid': {'seed': [0, 1]}})
  assert sw.main(['--sweep', path, '--dir', str(tmp_path / 'sw'), *flags]) == 2
  err = capsys.readouterr().err
  for w in words:
    assert w in err
  assert not (tmp_path / 'sw').exists()


# ------------------------------------------------------------------- search and pruning
def test_tpe_search_with_median_pruner_prunes_resumes_and_skips(tmp_path, capsys, fake,
                                                                monkeypatch):
  """The demo's search in miniature: TPE over lr (log) x drop-path choices, median pruner."""
  spec = {'config': VIT, 'base': {'total_steps': 8, 'eval_every_steps': 2},
          'search': {'sampler': 'tpe', 'num_trials': 8, 'seed': 0,
                     'sampler_args': {'n_startup_trials': 3},
                     'params': {'optimizer.lr': ('loguniform', 1e-4, 3e-2),
                                'model.drop_path_rate': [0.0, 0.1, 0.2]}},
          'pruner': {'name': 'median', 'n_startup_trials': 2}}
  path, d = _write_sweep(tmp_path / 'tpe.py', spec), str(tmp_path / 'sw')
  calls = str(tmp_path / 'calls.jsonl')
  monkeypatch.setenv('FAKE_CALLS', calls)
  monkeypatch.setenv('FAKE_STEP_S', '0.12')
  args = ['--sweep', path, '--dir', d, f'--main={fake}', '--poll-secs=0.03']
  assert sw.main(args) == 0
  study = _study(d, 'tpe')
  trials = study.trials
  assert len(trials) == 8
  for t in trials:  # TPE's draws are in the space and recorded as the study's params
    assert 1e-4 <= t.params['optimizer.lr'] <= 3e-2
    assert t.params['model.drop_path_rate'] in (0.0, 0.1, 0.2)
  pruned = [t for t in trials if t.state.name == 'PRUNED']
  done = [t for t in trials if t.state.name == 'COMPLETE']
  assert pruned and len(done) >= 2 and len(pruned) + len(done) == 8
  for t in pruned:  # stopped early, after a checkpoint: no final record
    wd = os.path.join(d, t.user_attrs['name'])
    assert int(open(os.path.join(wd, 'ckpt')).read()) < 8
    assert sw.final_record(sw.read_metrics(wd)) is None
    assert _calls(calls, 'sigterm')
  for t in done:  # the value the study holds is the run's final accuracy
    assert t.value == pytest.approx(_quality(t.params['optimizer.lr'],
                                             t.params['model.drop_path_rate']))
  best = max(done, key=lambda t: t.value)
  assert study.best_trial.number == best.number
  rows = _read_csv(os.path.join(d, 'summary.csv'))
  assert rows[0]['run'] == best.user_attrs['name'] and rows[0]['status'] == 'done'
  assert float(rows[0]['final accuracy']) == pytest.approx(best.value)
  assert rows[0]['trial'] == str(best.number)
  assert sorted(r['status'] for r in rows) == sorted(
      ['done'] * len(done) + ['pruned'] * len(pruned))
  md = open(os.path.join(d, 'summary.md')).read()
  lr = best.params['optimizer.lr']
  assert f'optimizer.lr={lr:.6g}' in md and 'Pruned: ' in md
  for png in ('summary.png', 'optuna_history.png') + (
      ('optuna_importances.png',) if len(done) >= 3 else ()):
    with open(os.path.join(d, png), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n' and len(f.read()) > 5_000, png

  n = len(_calls(calls))
  assert sw.main(args + ['--no-plot']) == 0 and len(_calls(calls)) == n  # all skipped
  name = pruned[0].user_attrs['name']
  stopped = int(open(os.path.join(d, name, 'ckpt')).read())
  assert sw.main(args + ['--no-plot', f'--unprune={name}']) == 0
  resumed = _calls(calls)[n:]
  assert [(c['name'], c['start']) for c in resumed] == [(name, stopped)]  # from its checkpoint
  rows = {r['run']: r for r in _read_csv(os.path.join(d, 'summary.csv'))}
  assert rows[name]['status'] == 'done' and rows[name]['steps'] == '8'
  assert _study(d, 'tpe').trials[-1].user_attrs['origin'] == 'unprune'


# ------------------------------------------------------------------ --parallel, kills
def _wait(cond, timeout, what):
  end = time.time() + timeout
  while time.time() < end:
    if cond():
      return
    time.sleep(0.05)
  raise AssertionError(f'timed out after {timeout} s waiting for {what}')


def test_parallel_runs_on_own_cores_and_killed_runs_and_worker_are_taken_up(tmp_path, fake):
  """--parallel=2 on 2 CPU cores: two runs at once, each pinned to its own core. A run
  killed (SIGKILL) is failed in the study and resumed by the rerun; a worker killed with
  its runs in flight leaves them RUNNING, and the next worker fails and resumes them."""
  if len(os.sched_getaffinity(0)) < 2:
    pytest.skip('needs 2 CPU cores')
  path = _write_sweep(tmp_path / 'sweep.py', {
      'config': VIT, 'base': {'total_steps': 10},
      'grid': {'optimizer.lr': [1e-3, 2e-3, 3e-3]}})
  d, calls = str(tmp_path / 'sw'), str(tmp_path / 'calls.jsonl')
  env = dict(os.environ, FAKE_CALLS=calls, FAKE_STEP_S='0.2')
  cmd = [sys.executable, '-m', 'swin_jax.sweep', f'--sweep={path}', f'--dir={d}',
         f'--main={fake}', '--parallel=2', '--poll-secs=0.05', '--no-plot']
  worker = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  try:
    _wait(lambda: len(_calls(calls)) >= 2, 90, 'two runs to start')
    first = _calls(calls)[:2]
    ckpt = os.path.join(d, first[0]['name'], 'ckpt')
    _wait(lambda: os.path.exists(ckpt), 30, 'a first checkpoint')
    assert sorted(c['cpus'] for c in first) in ([[0], [1]], [[c] for c in sorted(
        os.sched_getaffinity(0))[:2]])
    os.kill(first[0]['pid'], signal.SIGKILL)  # one run dies mid-training
    out, _ = worker.communicate(timeout=120)
  finally:
    worker.kill()
  assert worker.returncode == 1, out
  assert f'{first[0]["name"]}: FAILED (killed by signal 9)' in out
  starts = _calls(calls)
  ends = {c['name']: c['t'] for c in _calls(calls, 'end')}
  assert len(starts) == 3 and len(ends) == 2
  # The two first runs overlapped in time: each started before the other ended.
  other = first[1]
  assert other['t'] < ends[other['name']] and first[0]['t'] < ends[other['name']]
  states = {t.user_attrs['name']: t.state.name for t in _study(d, 'sweep').trials}
  assert states[first[0]['name']] == 'FAIL' and sorted(states.values()) == [
      'COMPLETE'] * 2 + ['FAIL']

  # The rerun resumes the killed run; kill the worker itself while it trains.
  worker = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  try:
    _wait(lambda: len(_calls(calls)) >= 4, 90, 'the killed run to resume')
    resumed = _calls(calls)[3]
    assert resumed['name'] == first[0]['name'] and resumed['start'] > 0
    worker.kill()
    worker.wait(timeout=30)
    # Its run got SIGTERM (PR_SET_PDEATHSIG): it saves and exits; no orphan trains on.
    _wait(lambda: _calls(calls, 'sigterm'), 30, 'the orphaned run to stop')
  finally:
    worker.kill()
  running = [t for t in _study(d, 'sweep').trials if t.state.name == 'RUNNING']
  assert [t.user_attrs['name'] for t in running] == [first[0]['name']]

  p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert p.returncode == 0, p.stdout + p.stderr
  assert 'had lost their worker' in p.stdout
  last = _calls(calls)[-1]
  assert last['name'] == first[0]['name'] and last['start'] > resumed['start']
  trials = _study(d, 'sweep').trials
  assert not [t for t in trials if t.state.name == 'RUNNING']
  assert sorted(r['status'] for r in _read_csv(os.path.join(d, 'summary.csv'))) == ['done'] * 3


# ------------------------------------------------------------ a study on PostgreSQL
def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture()
def postgres():
  """A throw-away PostgreSQL server on 127.0.0.1 (initdb in a temp dir); its URL."""
  if not (shutil.which('initdb') and shutil.which('pg_ctl')):
    pytest.skip('PostgreSQL (initdb, pg_ctl) is not installed')
  pytest.importorskip('psycopg2')
  root = tempfile.mkdtemp(prefix='sweep_pg_')
  as_user = []
  if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
    try:
      shutil.chown(root, 'postgres')
    except (LookupError, PermissionError) as e:
      shutil.rmtree(root, ignore_errors=True)
      pytest.skip(f'running as root and cannot hand the data dir to user postgres: {e}')
    as_user = ['runuser', '-u', 'postgres', '--']
  data, port = os.path.join(root, 'data'), _free_port()
  ctl = as_user + ['pg_ctl', '-D', data, '-l', os.path.join(root, 'log'), '-w', '-t', '60']
  started = False
  try:
    p = subprocess.run(as_user + ['initdb', '-D', data, '-A', 'trust', '-U', 'postgres',
                                  '--no-sync', '-E', 'UTF8'],
                       capture_output=True, text=True, timeout=120)
    if p.returncode:
      pytest.skip(f'initdb failed: {p.stderr.strip()[-300:]}')
    p = subprocess.run(ctl + ['-o', f'-h 127.0.0.1 -p {port} -k {root} -F', 'start'],
                       capture_output=True, text=True, timeout=120)
    if p.returncode:
      pytest.skip(f'the PostgreSQL server did not start: {p.stdout.strip()[-300:]}')
    started = True
    yield f'postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres'
  finally:
    if started:
      subprocess.run(ctl + ['-m', 'immediate', 'stop'], capture_output=True, timeout=60)
    shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_postgres_study_and_take_disjoint_trials(tmp_path, fake,
                                                                     postgres):
  path = _write_sweep(tmp_path / 'sweep.py', {
      'config': VIT, 'base': {'total_steps': 6},
      'grid': {'optimizer.lr': [1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3]},
      'search': {'sampler': 'random', 'num_trials': 2, 'seed': 1,
                 'params': {'model.drop_path_rate': ('uniform', 0.0, 0.3)}}})
  calls = str(tmp_path / 'calls.jsonl')
  env = dict(os.environ, FAKE_CALLS=calls, FAKE_STEP_S='0.1')
  workers = [subprocess.Popen(
      [sys.executable, '-m', 'swin_jax.sweep', f'--sweep={path}', f'--dir={tmp_path}/m{i}',
       f'--main={fake}', f'--storage={postgres}', '--study=shared', '--poll-secs=0.05',
       '--no-plot'], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in (0, 1)]
  try:
    outs = [w.communicate(timeout=240)[0] for w in workers]
  finally:
    for w in workers:
      w.kill()
  for w, out in zip(workers, outs):
    assert w.returncode in (0, 1), out  # 1: the other machine's runs have no workdir here
  study = optuna.load_study(study_name='shared', storage=postgres)
  trials = [t for t in study.trials if t.user_attrs.get('duplicate_of') is None]
  assert [t.state.name for t in trials] == ['COMPLETE'] * 8
  names = [t.user_attrs['name'] for t in trials]
  assert len(set(names)) == 8  # 6 fixed runs + 2 drawn, each once
  trained = [c['name'] for c in _calls(calls)]
  assert sorted(trained) == sorted(names)  # nothing trained twice
  mine = [set(os.listdir(tmp_path / f'm{i}')) & set(names) for i in (0, 1)]
  assert mine[0] and mine[1] and not mine[0] & mine[1]  # both worked, on disjoint trials
  hosts = {t.user_attrs['pid'] for t in trials}
  assert hosts == {w.pid for w in workers}


# ----------------------------------------------------------------------------- for real
def test_end_to_end_real_run_pruned_after_a_checkpoint_then_unpruned_to_the_end(tmp_path,
                                                                             tfds_dir):
  """The real trainer under the sweep: a threshold pruner (any eval loss > 0) prunes the run
  at its first eval; it gets SIGTERM and saves a checkpoint before it exits; --unprune
  trains it on from that checkpoint to the end; a rerun skips it."""
  path = _write_sweep(tmp_path / 'sweep.py', {
      'config': VIT + ':quick',
      'base': {'input.data_dir': tfds_dir, 'total_steps': 12, 'eval_every_steps': 4,
               'checkpoint.every_steps': 100},
      'runs': [{'optimizer.lr': 3e-3}],
      'pruner': {'name': 'threshold', 'upper': 0.0}, 'metric': 'loss,accuracy'})
  d = str(tmp_path / 'sw')
  wd = os.path.join(d, 'lr=0.003')
  assert sw.main(['--sweep', path, '--dir', d, '--poll-secs=0.05', '--no-plot']) == 0
  row = _read_csv(os.path.join(d, 'summary.csv'))[0]
  assert row['status'] == 'pruned' and row['final loss'] == ''
  saved = [int(c) for c in os.listdir(os.path.join(wd, 'checkpoints')) if c.isdigit()]
  assert saved and 4 <= max(saved) < 12  # saved on SIGTERM, after its first eval
  assert 'SIGTERM: saved step' in open(os.path.join(wd, 'log.txt')).read()
  assert sw.final_record(sw.read_metrics(wd)) is None

  assert sw.main(['--sweep', path, '--dir', d, '--poll-secs=0.05', '--unprune=lr=0.003']) == 0
  row = _read_csv(os.path.join(d, 'summary.csv'))[0]
  assert (row['status'], row['steps']) == ('done', '12')
  assert 0.0 <= float(row['final accuracy']) <= 1.0
  train_steps = [r['step'] for r in sw.read_metrics(wd) if r['split'] == 'train']
  assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 12  # resumed, once
  log = open(os.path.join(wd, 'log.txt')).read()
  assert log.count('=== ') == 2 and 'step 12: ' in log
  assert f'checkpoints at step {max(saved)}.' in log  # 'Resumed from ...': not from scratch
  assert os.path.getsize(os.path.join(d, 'summary.png')) > 10_000
  assert sw.main(['--sweep', path, '--dir', d, '--no-plot', '--main=false']) == 0  # skipped
