"""Hyper-parameter sweeps on Optuna: many runs of ``swin_jax.main`` from one file.

  python -m swin_jax.sweep --sweep=experiments/sweeps/vit_digits_lr_dp.py --dir=runs/sweep_vit

runs every run of the sweep, each as its own ``python -m swin_jax.main`` process (fresh JAX
state) in ``<dir>/<run name>/`` with its output in ``log.txt`` there, as the trials of an
Optuna study (``<dir>/study.db`` unless ``--storage`` says otherwise), then writes
``summary.csv``, ``summary.md`` (best run first, the state of each), ``summary.png`` and
Optuna's ``optuna_history.png`` / ``optuna_importances.png`` into ``<dir>``. Running the
same command again skips the finished and pruned runs, resumes the interrupted ones (the
trainer auto-resumes from the workdir) and retries the failed ones. A failed run is reported
and the sweep goes on; the summary marks it failed and the command exits with status 1.

Searching and pruning:

  --sampler=tpe --num-trials=N   N trials drawn by Optuna's TPE sampler (also grid, random,
                     cmaes, gp, qmc or any optuna.samplers class name) from the file's
                     'search' params, or from its 'grid' lists and 'random' distributions.
  --pruner=median    stops runs whose eval metric (the records with "split": "eval" in
                     metrics.jsonl) falls behind: median, percentile, successive_halving,
                     hyperband, none. A pruned run gets SIGTERM, saves a checkpoint and
                     exits; it is 'pruned' in the summary. --unprune=NAME (repeatable, or all)
                     trains it on from that checkpoint (not pruned again).
  --parallel=N       N runs at once on this machine, each on its own devices: GPUs
                     (CUDA_VISIBLE_DEVICES), TPU chips (TPU_VISIBLE_CHIPS), or CPU cores
                     (affinity and thread counts), split evenly.
  --storage=URL      the study's storage: postgresql://user:pass@host/db (or mysql://...)
                     lets workers on several machines share one study, each running this
                     same command with its own --dir; they take disjoint trials.

Other modes:

  --dry-run          prints the fixed runs still to do as a shell script (one ``python -m
                     swin_jax.main ...`` line per run, finished ones as comments).
  --launcher=TMPL    hands each fixed run still to do to a job launcher instead of running
                     it here (separate TPU jobs): TMPL is a shell command with ``{cmd}`` (the
                     quoted ``python -m swin_jax.main ...`` command), ``{config}``,
                     ``{overrides}`` (its quoted ``--config.KEY=VALUE`` arguments), ``{name}``
                     (the run name), ``{slug}`` (the name in letters, digits, ``._-``),
                     ``{workdir}`` (``<dir>/<name>``) and ``{index}`` (1, 2, ...) filled in,
                     e.g. ``--launcher='my_submit --job=sweep-{index} -- {cmd}'``. The sweep
                     does not wait for the jobs and submits a run only once;
                     ``--summarize-only`` reads their workdirs once they are in ``--dir``.
  --summarize-only   only (re)writes the summary from the study and the workdirs in --dir.
  --metric=M[,M2]    the metric(s) of the table; the first one is optimised, pruned on,
                     ranked and plotted (default: the sweep's ``metric``, else accuracy (and
                     loss) for classification, AP (and AP50) for detection). Metrics named
                     like a loss or error are minimised, the others maximised.

The sweep file is a Python file defining ``get_sweep()``, which returns a dict:

  def get_sweep():
    return {
        'config': 'configs/demo/vit_digits.py',      # --config of every run (':arg' allowed)
        'base': {'num_epochs': 20},                  # overrides of every run
        'grid': {                                    # fixed runs: the cartesian product
            'optimizer.lr': [1e-3, 3e-3],
            'model.drop_path_rate': [0.0, 0.1],
        },
        'random': {                                  # fixed runs: num_samples random draws
            'num_samples': 4, 'seed': 0,
            'params': {'optimizer.weight_decay': ('loguniform', 1e-3, 1e-1),
                       'label_smoothing': ('uniform', 0.0, 0.2),
                       'model.dtype': ('choice', ['float32', 'bfloat16']),
                       'seed': ('randint', 0, 9)},   # both ends included
        },
        'runs': [{'optimizer.lr': 1e-2}],            # explicit runs, added after the others
        'search': {                                  # trials an Optuna sampler draws
            'sampler': 'tpe', 'num_trials': 12, 'seed': 0,
            'sampler_args': {'n_startup_trials': 4},  # keyword arguments of the sampler
            'params': {'optimizer.lr': ('loguniform', 1e-4, 1e-2),
                       'model.drop_path_rate': [0.0, 0.1, 0.2]},  # a list: the choices
        },
        'pruner': {'name': 'median', 'n_startup_trials': 2},  # or 'median', 'hyperband', ...
        'metric': 'accuracy',                        # optional default of --metric
    }

Keys are config fields as ``--config.KEY=VALUE`` spells them (``optimizer.lr``); a value
is what you would write in the config file (tuples for tuple fields, e.g. ``(2, 2, 6, 2)``).
Every run gets ``base``, then its own values. With both ``grid`` and ``random``, every grid
point is crossed with every random draw; ``runs`` are appended as given; the fixed runs are
queued in the study before any drawn trial. Random floats of 'random' are rounded to 4
significant digits, so a run's name shows its exact values (a sampler's values are run as
drawn; names show 6 digits). The sweep is checked before anything runs: unknown keys of the
file, an empty grid, a grid value that is not a list, a bad distribution, an unknown
sampler or pruner (or arguments that do not fit it), a field the config does not have or a
value of the wrong type stop it with a message naming the key.

A run's name, which is also its workdir under ``--dir``, is made from its own values:
``lr=0.001,drop_path_rate=0.1`` (see swin_jax/sweep/spec.py). A run is finished when its
``metrics.jsonl`` has the final evaluation record (the one with ``train_time_s``) and its
``config.json`` still holds the values the sweep gives it; after changing ``base``, the runs
it touches train again from their last checkpoint.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from typing import Optional, Sequence

from swin_jax import cli
from swin_jax.sweep import execute, report
from swin_jax.sweep import study as st
from swin_jax.sweep.spec import (PLAN_FILE, Run, Search, Sweep, SweepError, check_pruner,
                                 command, expand, load_sweep_file, primary_metric, read_json,
                                 resolve, short_names, write_json)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog='python -m swin_jax.sweep', description=__doc__.split('\n\n')[0],
      epilog=__doc__.split('\n\n', 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--sweep', help='sweep file defining get_sweep() (see below)')
  p.add_argument('--dir', required=True, help='sweep directory: one workdir per run, summary')
  p.add_argument('--sampler', default=None,
                 help="override the file's search sampler (grid, random, tpe, cmaes, gp, qmc "
                      "or an optuna.samplers class name); on a file without 'search', its "
                      "grid / random become the search space")
  p.add_argument('--num-trials', type=int, default=None, help='trials the sampler draws')
  p.add_argument('--pruner', default=None,
                 help="override the file's pruner: median, successive_halving, hyperband, "
                      'percentile, none, ...')
  p.add_argument('--parallel', type=int, default=1,
                 help='runs at once on this machine, each on its own share of the devices')
  p.add_argument('--devices', default='auto', choices=('auto', 'cpu', 'gpu', 'tpu'),
                 help='the devices --parallel splits (default: what the machine has)')
  p.add_argument('--storage', default=None,
                 help='Optuna storage: a file (SQLite) or an RDB URL such as '
                      'postgresql://user:pass@host/db for workers on several machines '
                      '(default: <dir>/study.db)')
  p.add_argument('--study', default=None,
                 help="the study's name in the storage (default: the sweep file's name)")
  p.add_argument('--unprune', action='append', default=[], metavar='NAME',
                 help='a pruned run (its name in the summary; repeat the flag for more, or '
                      'all) to train on from its checkpoint, not pruned again')
  p.add_argument('--metric', default=None,
                 help='metric(s) of the table, comma-separated; the first is optimised, '
                      'pruned on, ranked and plotted')
  p.add_argument('--dry-run', action='store_true',
                 help='print the commands of the fixed runs still to do; run and write nothing')
  p.add_argument('--summarize-only', action='store_true',
                 help='only write the summary from the study and the workdirs in --dir')
  p.add_argument('--launcher', default='local',
                 help="'local' (default: run here) or a command template with "
                      '{cmd}, {config}, {overrides}, {name}, {slug}, {workdir}, {index} to '
                      'submit each fixed run as a job')
  p.add_argument('--main', default=None,
                 help='the command that trains one run (default: this python -m '
                      'swin_jax.main); it gets --config, --workdir and the overrides')
  p.add_argument('--poll-secs', type=float, default=execute.POLL_S,
                 help="how often the worker reads its runs' metrics.jsonl (pruning) and "
                      'exit status')
  p.add_argument('--verbose', action='store_true', help="also print each run's output")
  p.add_argument('--no-plot', action='store_true', help='skip the PNGs')
  return p.parse_args(argv)


def _sweep_from_plan(sweep_dir: str) -> tuple:
  plan = read_json(os.path.join(sweep_dir, PLAN_FILE))
  if not plan:
    raise SweepError(f'--dir={sweep_dir} holds no {PLAN_FILE}: give --sweep=FILE too.')
  runs = [Run(name=r['name'], own=r['own'], overrides=r['overrides'],
              values=r.get('values', {})) for r in plan['runs']]
  search = plan.get('search')
  if search:
    search = Search(**dict(search, params={k: tuple(v) for k, v in search['params'].items()}))
  sweep = Sweep(config=plan['config'], base=plan['base'], runs=runs, swept=plan['swept'],
                short=short_names(plan['swept']), search=search, pruner=plan.get('pruner'),
                metric=plan.get('metric'), source=plan.get('source', sweep_dir),
                task=plan.get('task', 'classification'))
  return sweep, plan


def _write_plan(sweep: Sweep, sweep_dir: str, storage: str, study_name: str,
                program: Optional[Sequence[str]]):
  write_json(os.path.join(sweep_dir, PLAN_FILE), {
      'source': sweep.source, 'config': sweep.config, 'base': sweep.base,
      'swept': sweep.swept, 'metric': sweep.metric, 'task': sweep.task,
      'search': None if sweep.search is None else vars(sweep.search),
      'pruner': sweep.pruner, 'storage': st.hide_password(storage),
      'study': study_name,
      'runs': [{'name': r.name, 'own': r.own, 'overrides': r.overrides, 'values': r.values,
                'command': shlex.join(command(sweep, r, os.path.join(sweep_dir, r.name),
                                              program=program))} for r in sweep.runs]})


def _open_existing_study(url: str, name: str):
  """The study for --summarize-only, or None when there is none (launcher sweeps)."""
  if url.startswith('sqlite:///') and not os.path.exists(url[len('sqlite:///'):]):
    return None
  storage = st.open_storage(url)
  try:
    return st.optuna.load_study(study_name=name, storage=storage)
  except KeyError:
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command line; returns the exit status (0: every run done or pruned, 1: some not,
  2: a mistake in the file or the flags, 130: interrupted)."""
  cli.quiet_startup()
  st.quiet()
  args = parse_args(sys.argv[1:] if argv is None else argv)
  program = shlex.split(args.main) if args.main else None
  study = None
  try:
    if args.sweep:
      sweep = expand(load_sweep_file(args.sweep), source=args.sweep, sampler=args.sampler,
                     num_trials=args.num_trials)
      resolve(sweep)
      plan = read_json(os.path.join(args.dir, PLAN_FILE))
    elif args.summarize_only:
      sweep, plan = _sweep_from_plan(args.dir)
    else:
      raise SweepError('--sweep=FILE is required (e.g. '
                       '--sweep=experiments/sweeps/vit_digits_lr_dp.py).')
    if args.pruner is not None:
      sweep.pruner = check_pruner(args.pruner)
    metric = primary_metric(sweep, args.metric)
    names = report.metric_names(sweep, args.metric)
    study_name = args.study or plan.get('study') or (
        os.path.splitext(os.path.basename(args.sweep))[0] if args.sweep else 'sweep')
    url = st.storage_url(args.storage or (plan.get('storage') if '***' not in plan.get(
        'storage', '') else None), args.dir)
    launcher = ' '.join(args.launcher.split())  # one command, even when written over lines
    if launcher != 'local':
      for field in re.findall(r'{(\w*)}', launcher):
        if field not in execute.PLACEHOLDERS:
          raise SweepError(f'--launcher: unknown placeholder {{{field}}}; use '
                           f'{", ".join("{" + p + "}" for p in execute.PLACEHOLDERS)}.')
      if sweep.search is not None:
        raise SweepError('--launcher submits the fixed runs of a sweep; a search needs '
                         'workers that talk to the study: launch `python -m swin_jax.sweep '
                         '... --storage=postgresql://...` on each machine instead (README).')
    if args.summarize_only:
      study = _open_existing_study(url, study_name)
    elif args.dry_run or launcher != 'local':
      if not args.dry_run:  # for --summarize-only once the jobs' workdirs are in --dir
        os.makedirs(args.dir, exist_ok=True)
        _write_plan(sweep, args.dir, url, study_name, program)
      execute.plan_only(sweep, args.dir, dry_run=args.dry_run, launcher=launcher,
                        program=program)
      if args.dry_run:
        return 0
    else:
      st.make_sampler(sweep.search), st.make_pruner(sweep.pruner)  # mistakes before any run
      slots = execute.device_slots(args.parallel, args.devices)
      os.makedirs(args.dir, exist_ok=True)
      study = st.open_study(sweep, st.open_storage(url), study_name, metric)
      _write_plan(sweep, args.dir, url, study_name, program)
      worker = execute.Worker(
          sweep, args.dir, study, metric, slots=slots, program=program, verbose=args.verbose,
          metrics=names, unprune=args.unprune,
          poll_s=args.poll_secs)
      try:
        worker.run()
      except KeyboardInterrupt:
        print('interrupted: the runs saved a checkpoint; run the same command to resume.',
              file=sys.stderr)
        return 130
  except SweepError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  rows, _, md, written = report.write_summary(sweep, args.dir, study, args.metric,
                                              plot=not args.no_plot)
  print('\n' + md)
  print('Wrote ' + ', '.join(os.path.join(args.dir, f) for f in written))
  return 0 if all(r.status in ('done', 'pruned') for r in rows) else 1
