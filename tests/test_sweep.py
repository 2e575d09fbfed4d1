"""Tests of swin_jax/sweep.py: expansion, validation, skip-finished, summary, end to end."""
import ast
import csv
import json
import os
import subprocess
import sys

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
    ({'config': VIT}, ["'grid', 'random' or 'runs'"]),
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


# ------------------------------------------------------- running, skipping, the summary
def _fake_main(calls, fail_lr=None):
  """A runner standing in for `python -m swin_jax.main`: writes what a run writes."""

  def runner(cmd, workdir, verbose, stop):
    del verbose, stop
    calls.append(os.path.basename(workdir))
    ov = {}
    for a in cmd:
      if a.startswith('--config.'):
        k, v = a[len('--config.'):].split('=', 1)
        try:
          ov[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
          ov[k] = v
    if ov.get('optimizer.lr') == fail_lr:
      return 2, 'error: loss=nan at step 3'
    cfg = {}
    for k, v in ov.items():
      node = cfg
      *parents, last = k.split('.')
      for p in parents:
        node = node.setdefault(p, {})
      node[last] = v
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      json.dump(cfg, f)
    acc = 0.5 + ov['optimizer.lr'] * 10 - ov['model.drop_path_rate']
    recs = [{'step': s, 'split': 'train', 'loss': 2.0 / s} for s in (1, 2, 3, 4)]
    recs += [{'step': 2, 'split': 'eval', 'accuracy': acc / 2, 'loss': 1.0},
             {'step': 4, 'split': 'eval', 'accuracy': acc, 'loss': 0.5, 'train_time_s': 7.0}]
    with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
      f.write(''.join(json.dumps(r) + '\n' for r in recs))
    return 0, ''

  return runner


def test_failed_runs_are_reported_finished_ones_skipped_and_summarized(tmp_path, capsys):
  spec = {'config': VIT, 'base': {'num_epochs': 1},
          'grid': {'optimizer.lr': [1e-3, 3e-3, 0.1], 'model.drop_path_rate': [0.0, 0.1]}}
  path, d = _write_sweep(tmp_path / 'sweep.py', spec), str(tmp_path / 'sw')
  calls = []
  assert sw.main(['--sweep', path, '--dir', d], runner=_fake_main(calls, fail_lr=0.1)) == 1
  assert len(calls) == 6
  out = capsys.readouterr().out
  assert 'lr=0.1,drop_path_rate=0: FAILED (exit 2)' in out and 'loss=nan at step 3' in out

  rows = _read_csv(os.path.join(d, 'summary.csv'))
  assert [r['run'] for r in rows] == calls
  assert [r['status'] for r in rows] == ['done'] * 4 + ['failed'] * 2
  assert list(rows[0])[:4] == ['run', 'lr', 'drop_path_rate', 'final accuracy']
  assert float(rows[2]['final accuracy']) == pytest.approx(0.53)
  assert float(rows[2]['best accuracy']) == pytest.approx(0.53)
  assert rows[2]['best step'] == '4' and float(rows[2]['train time (s)']) == 7.0
  assert float(rows[0]['final train loss']) == 0.5 and rows[4]['final accuracy'] == ''
  md = open(os.path.join(d, 'summary.md')).read()
  assert '| run | lr | drop_path_rate | final accuracy | final loss |' in md
  assert 'Best final accuracy: 0.5300 (lr=0.003,drop_path_rate=0).' in md
  assert 'Failed: lr=0.1,drop_path_rate=0, lr=0.1,drop_path_rate=0.1' in md
  with open(os.path.join(d, 'summary.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'

  calls.clear()  # again: only the two failed runs start
  assert sw.main(['--sweep', path, '--dir', d], runner=_fake_main(calls)) == 0
  assert calls == ['lr=0.1,drop_path_rate=0', 'lr=0.1,drop_path_rate=0.1']
  assert 'lr=0.001,drop_path_rate=0: done, skipped (accuracy=0.5100' in capsys.readouterr().out
  calls.clear()
  assert sw.main(['--sweep', path, '--dir', d], runner=_fake_main(calls)) == 0
  assert calls == []
  # --summarize-only needs no sweep file: the plan is in the directory.
  os.remove(os.path.join(d, 'summary.csv'))
  assert sw.main(['--summarize-only', '--dir', d]) == 0
  assert [r['status'] for r in _read_csv(os.path.join(d, 'summary.csv'))] == ['done'] * 6

  spec['base']['num_epochs'] = 2  # a changed base is not "finished": those runs go again
  _write_sweep(tmp_path / 'sweep.py', spec)
  assert sw.main(['--sweep', path, '--dir', d, '--dry-run']) == 0
  assert capsys.readouterr().out.count('# [1/6] lr=0.001,drop_path_rate=0: changed') == 1


def test_dry_run_prints_a_script_and_writes_nothing(tmp_path):
  path = _write_sweep(tmp_path / 'sweep.py', {
      'config': VIT, 'grid': {'optimizer.lr': [1e-3, 3e-3], 'seed': [0, 1]}})
  d = tmp_path / 'sw'
  p = subprocess.run([sys.executable, '-m', 'swin_jax.sweep', f'--sweep={path}', f'--dir={d}',
                      '--dry-run'], capture_output=True, text=True, cwd=ROOT, timeout=60)
  assert p.returncode == 0, p.stderr
  cmds = [l for l in p.stdout.splitlines() if not l.startswith('#')]
  assert len(cmds) == 4 and not d.exists()
  assert cmds[3] == (f'python -m swin_jax.main --config={VIT} --workdir={d}/lr=0.003,seed=1 '
                     f'--config.optimizer.lr=0.003 --config.seed=1 --config.progress_bar=False')
  bad = _write_sweep(tmp_path / 'bad.py', {'config': VIT, 'grid': {'optimizer.lr': 1e-3}})
  p = subprocess.run([sys.executable, '-m', 'swin_jax.sweep', f'--sweep={bad}', f'--dir={d}'],
                     capture_output=True, text=True, cwd=ROOT, timeout=60)
  assert p.returncode == 2 and "error: sweep grid['optimizer.lr'] must be a list" in p.stderr


def test_launcher_template_submits_each_run_without_running_it(tmp_path, capsys):
  path = _write_sweep(tmp_path / 'sweep.py', {'config': VIT, 'grid': {'seed': [0, 1]}})
  jobs, d = tmp_path / 'jobs.txt', str(tmp_path / 'sw')

  def no_runner(*a):
    raise AssertionError('a submitted run must not run here')

  rc = sw.main(['--sweep', path, '--dir', d,
                f'--launcher=echo {{index}} {{slug}} {{cmd}} >> {jobs}'], runner=no_runner)
  assert rc == 1  # not done yet: the jobs run elsewhere
  lines = jobs.read_text().splitlines()
  assert len(lines) == 2 and lines[1].startswith('2 seed-1 python -m swin_jax.main')
  assert '--workdir=' + os.path.join(d, 'seed=1') in lines[1]
  assert [r['status'] for r in _read_csv(os.path.join(d, 'summary.csv'))] == ['submitted'] * 2
  assert sw.main(['--sweep', path, '--dir', d, f'--launcher=echo {{cmd}} >> {jobs}']) == 1
  assert len(jobs.read_text().splitlines()) == 2  # submitted once, not again
  assert sw.main(['--sweep', path, '--dir', d, '--launcher=x {cmdd}']) == 2
  assert '{cmdd}' in capsys.readouterr().err


# ----------------------------------------------------------------------------- for real
def test_end_to_end_quick_sweep_and_rerun_skips_it(tmp_path, tfds_dir):
  path = _write_sweep(tmp_path / 'sweep.py', {
      'config': VIT + ':quick', 'base': {'input.data_dir': tfds_dir},
      'grid': {'optimizer.lr': [1e-3, 3e-3]}})
  d = str(tmp_path / 'sw')
  assert sw.main(['--sweep', path, '--dir', d]) == 0
  rows = _read_csv(os.path.join(d, 'summary.csv'))
  assert [(r['run'], r['status'], r['steps']) for r in rows] == [
      ('lr=0.001', 'done', '6'), ('lr=0.003', 'done', '6')]
  assert all(0.0 <= float(r['final accuracy']) <= 1.0 for r in rows)
  assert 'step 6: ' in open(os.path.join(d, 'lr=0.003', 'log.txt')).read()
  assert os.path.getsize(os.path.join(d, 'summary.png')) > 10_000

  def no_runner(*a):
    raise AssertionError('a finished run was started again')

  assert sw.main(['--sweep', path, '--dir', d], runner=no_runner) == 0
