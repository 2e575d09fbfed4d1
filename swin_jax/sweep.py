"""Hyper-parameter sweeps: many runs of ``swin_jax.main`` from one declarative file.

  python -m swin_jax.sweep --sweep=experiments/sweeps/vit_digits_lr_dp.py --dir=runs/sweep_vit

runs every run of the sweep one after the other, each as its own ``python -m swin_jax.main``
process (fresh JAX state) in ``<dir>/<run name>/`` with its output in ``log.txt`` there, then
writes ``summary.csv``, ``summary.md`` and ``summary.png`` into ``<dir>``. Running the same
command again skips the runs that finished, resumes the interrupted ones (the trainer
auto-resumes from the workdir) and retries the failed ones. A failed run is reported and the
sweep goes on; the summary marks it failed and the command exits with status 1.

Other modes:

  --dry-run          prints the plan as a shell script (one ``python -m swin_jax.main ...``
                     line per run still to do, finished ones as comments); writes nothing.
  --launcher=TMPL    hands each run still to do to a job launcher instead of running it here
                     (separate TPU jobs): TMPL is a shell command with ``{cmd}`` (the quoted
                     ``python -m swin_jax.main ...`` command), ``{config}``, ``{overrides}``
                     (its quoted ``--config.KEY=VALUE`` arguments), ``{name}`` (the run
                     name), ``{slug}`` (the name in letters, digits, ``._-``: ``lr-0.001_
                     drop_path_rate-0.1``), ``{workdir}`` (``<dir>/<name>``) and ``{index}``
                     (1, 2, ...) filled in, e.g.
                     ``--launcher='my_submit --job=sweep-{index} -- {cmd}'``.
                     The sweep does not wait for the jobs and submits a run only once;
                     ``--summarize-only`` reads their workdirs once they are in ``--dir``.
  --summarize-only   only (re)writes the summary from what is in ``--dir``.
  --metric=M[,M2]    the metric(s) of the table; the first one is plotted and ranked
                     (default: the sweep's ``metric``, else ``accuracy,loss`` for
                     classification, ``AP,AP50`` for detection). Metrics named like a loss or
                     error are minimised, the others maximised.

The sweep file is a Python file defining ``get_sweep()``, which returns a dict:

  def get_sweep():
    return {
        'config': 'configs/demo/vit_digits.py',      # --config of every run (':arg' allowed)
        'base': {'num_epochs': 20},                  # overrides of every run
        'grid': {                                    # the cartesian product of the lists
            'optimizer.lr': [1e-3, 3e-3],
            'model.drop_path_rate': [0.0, 0.1],
        },
        'random': {                                  # num_samples random draws
            'num_samples': 4, 'seed': 0,
            'params': {'optimizer.weight_decay': ('loguniform', 1e-3, 1e-1),
                       'label_smoothing': ('uniform', 0.0, 0.2),
                       'model.dtype': ('choice', ['float32', 'bfloat16']),
                       'seed': ('randint', 0, 9)},   # both ends included
        },
        'runs': [{'optimizer.lr': 1e-2}],            # explicit runs, added after the others
        'metric': 'accuracy',                        # optional default of --metric
    }

Keys are config fields as ``--config.KEY=VALUE`` spells them (``optimizer.lr``); a value
is what you would write in the config file (tuples for tuple fields, e.g. ``(2, 2, 6, 2)``).
Every run gets ``base``, then its own values. With both ``grid`` and ``random``, every grid
point is crossed with every random draw; ``runs`` are appended as given. Random floats are
rounded to 4 significant digits, so a run's name shows its exact values. The sweep is
checked before anything runs: unknown keys of the file, an empty grid, a grid value that is
not a list, a field the config does not have or a value of the wrong type stop it with a
message naming the key.

A run's name, which is also its workdir under ``--dir``, is made from its own values with
the fields' last names, in the order the file gives them: ``lr=0.001,drop_path_rate=0.1``
(the full key where two swept fields share a last name; ``base`` for a run with no values of
its own). It depends only on the run's own values, so adding a value to a grid keeps the
names, and the finished workdirs, of the runs already done.

A run is finished when its ``metrics.jsonl`` has the final evaluation record (the one with
``train_time_s``) and its ``config.json`` still holds the values the sweep gives it; after
changing ``base``, the runs it touches train again from their last checkpoint.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import difflib
import hashlib
import importlib.util
import itertools
import json
import math
import os
import random as random_lib
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from swin_jax import cli

_SWEEP_KEYS = ('config', 'base', 'grid', 'random', 'runs', 'metric')
_RANDOM_KEYS = ('num_samples', 'seed', 'params')
_DISTRIBUTIONS = ('uniform', 'loguniform', 'randint', 'choice')
_NOT_METRICS = ('train_time_s', 'num_examples', 'step', 'split', 'time', 'epoch')
_PLACEHOLDERS = ('cmd', 'config', 'overrides', 'name', 'slug', 'workdir', 'index')  # --launcher
PLAN_FILE = 'sweep.json'  # in --dir: the expanded runs, so --summarize-only needs no --sweep
RUN_FILE = 'sweep_run.json'  # in each run's workdir: how the sweep last launched it


class SweepError(ValueError):
  """A mistake in the sweep file or the command line; the message names the key."""


@dataclasses.dataclass
class Run:
  """One run of a sweep.

  Attributes:
    name: the run's name, also its workdir under the sweep directory.
    own: the run's own values (grid point, random draw or explicit run), key -> value.
    overrides: base values then own values: every ``--config.KEY=VALUE`` of its command.
    values: the effective value of every swept key for this run (own, else base, else the
      config's default); filled in by ``resolve``.
  """
  name: str
  own: Dict[str, Any]
  overrides: Dict[str, Any]
  values: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Sweep:
  """An expanded sweep: the config, the runs and the keys they vary."""
  config: str
  base: Dict[str, Any]
  runs: List[Run]
  swept: List[str]  # every key some run sets on its own, in order of first appearance
  short: Dict[str, str]  # swept key -> the name shown in run names and tables
  metric: Optional[str] = None
  source: str = 'get_sweep()'
  progress_bar_field: bool = False  # the config has `progress_bar` (set False in runs)


# ----------------------------------------------------------------------------- the file
def load_sweep_file(path: str) -> Dict[str, Any]:
  """Imports a sweep file and returns its ``get_sweep()`` dict."""
  if not os.path.isfile(path):
    raise SweepError(f'sweep file {path!r} (--sweep) does not exist.')
  spec = importlib.util.spec_from_file_location(
      'sweep_' + re.sub(r'\W', '_', os.path.basename(path)[:-3]), path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise SweepError(f'sweep file {path} (--sweep) must define get_sweep() returning a dict '
                     f'with keys {", ".join(_SWEEP_KEYS)}.')
  return module.get_sweep()


def _unknown(what: str, key: Any, known: Sequence[str]) -> SweepError:
  close = difflib.get_close_matches(str(key), list(known), n=1)
  hint = f'; did you mean {close[0]!r}?' if close else '.'
  return SweepError(f'{what}: unknown key {key!r}{hint} Known keys: {", ".join(known)}.')


def _check_overrides(where: str, d: Any) -> Dict[str, Any]:
  if not isinstance(d, dict):
    raise SweepError(f"{where} must be a dict of config fields, e.g. {{'optimizer.lr': "
                     f'1e-3}}; got {d!r}.')
  for k, v in d.items():
    if not isinstance(k, str) or not re.fullmatch(r'[A-Za-z_]\w*(\.[A-Za-z_]\w*)*', k):
      raise SweepError(f"{where}: key {k!r} is not a config field path such as "
                       f"'optimizer.lr'.")
    if v is None:
      raise SweepError(f'{where}[{k!r}] is None: a run cannot set a field to None from '
                       f'the command line; leave the key out to keep the config default.')
  return dict(d)


def _round4(x: float) -> float:
  return float(f'{x:.4g}')


def _sample(rng: random_lib.Random, key: str, spec: Any, where: str) -> Any:
  """One draw of ('uniform'|'loguniform'|'randint', lo, hi) or ('choice', [values])."""
  bad = SweepError(
      f"{where}[{key!r}]={spec!r}: use ('uniform', lo, hi), ('loguniform', lo, hi) with "
      f"0 < lo < hi, ('randint', lo, hi) (both included) or ('choice', [values]).")
  if not isinstance(spec, (tuple, list)) or not spec or spec[0] not in _DISTRIBUTIONS:
    raise bad
  kind = spec[0]
  if kind == 'choice':
    if len(spec) != 2 or not isinstance(spec[1], (list, tuple)) or not spec[1]:
      raise bad
    return rng.choice(list(spec[1]))
  if len(spec) != 3 or not all(isinstance(x, (int, float)) for x in spec[1:]):
    raise bad
  lo, hi = spec[1], spec[2]
  if not lo < hi or (kind == 'loguniform' and lo <= 0):
    raise bad
  if kind == 'uniform':
    return _round4(rng.uniform(lo, hi))
  if kind == 'loguniform':
    return _round4(math.exp(rng.uniform(math.log(lo), math.log(hi))))
  if not (isinstance(lo, int) and isinstance(hi, int)):
    raise bad
  return rng.randint(lo, hi)


def _grid_points(grid: Any) -> List[Dict[str, Any]]:
  if not isinstance(grid, dict):
    raise SweepError(f"sweep 'grid' must be a dict of field -> list of values, e.g. "
                     f"{{'optimizer.lr': [1e-3, 3e-3]}}; got {grid!r}.")
  if not grid:
    raise SweepError("sweep 'grid' is empty: give at least one field -> [values], or leave "
                     "'grid' out.")
  _check_overrides("sweep 'grid'", {k: 0 for k in grid})
  for k, values in grid.items():
    if not isinstance(values, list):
      raise SweepError(
          f"sweep grid[{k!r}] must be a list of values, e.g. [{values!r}, ...]; got "
          f'{values!r} ({type(values).__name__}). For a tuple field write a list of tuples.')
    if not values:
      raise SweepError(f'sweep grid[{k!r}] is an empty list: give at least one value.')
    if any(v is None for v in values):
      raise SweepError(f'sweep grid[{k!r}] holds None: the command line cannot set None; '
                       f'leave the value out.')
  keys = list(grid)
  return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _random_points(spec: Any) -> List[Dict[str, Any]]:
  if not isinstance(spec, dict):
    raise SweepError(f"sweep 'random' must be a dict with 'num_samples', 'seed' and "
                     f"'params'; got {spec!r}.")
  for k in spec:
    if k not in _RANDOM_KEYS:
      raise _unknown("sweep 'random'", k, _RANDOM_KEYS)
  n = spec.get('num_samples')
  if not isinstance(n, int) or isinstance(n, bool) or n < 1:
    raise SweepError(f"sweep random['num_samples'] must be a positive int; got {n!r}.")
  seed = spec.get('seed', 0)
  if not isinstance(seed, int):
    raise SweepError(f"sweep random['seed'] must be an int; got {seed!r}.")
  params = spec.get('params')
  if not isinstance(params, dict) or not params:
    raise SweepError("sweep random['params'] must be a non-empty dict of field -> "
                     "distribution, e.g. {'optimizer.lr': ('loguniform', 1e-4, 1e-2)}.")
  _check_overrides("sweep random['params']", {k: 0 for k in params})
  rng = random_lib.Random(seed)
  return [{k: _sample(rng, k, d, "sweep random['params']") for k, d in params.items()}
          for _ in range(n)]


def format_value(v: Any) -> str:
  """A value as run names and tables show it: 0.001, 1e-05, 2-2-6-2, True, vit_demo."""
  if isinstance(v, bool):
    return str(v)
  if isinstance(v, float):
    return f'{v:.6g}'
  if isinstance(v, (list, tuple)):
    return '-'.join(format_value(x) for x in v)
  return str(v)


def short_names(keys: Sequence[str]) -> Dict[str, str]:
  """Swept key -> its last name ('optimizer.lr' -> 'lr'), the full key where two clash."""
  last = [k.rsplit('.', 1)[-1] for k in keys]
  return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def run_name(own: Dict[str, Any], short: Dict[str, str], order: Sequence[str]) -> str:
  """Deterministic, filesystem-safe name of a run from its own values."""
  parts = [f'{short[k]}={format_value(own[k])}' for k in order if k in own]
  name = re.sub(r'[^A-Za-z0-9._+=,-]', '_', ','.join(parts)) or 'base'
  if len(name) > 120:  # stay well below the 255-byte file-name limit
    name = name[:100] + '-' + hashlib.sha1(name.encode()).hexdigest()[:8]
  return name


def slug(name: str) -> str:
  """A run name in letters, digits, '.', '_' and '-' only (job and log names):
  'lr=0.001,drop_path_rate=0.1' -> 'lr-0.001_drop_path_rate-0.1'."""
  return re.sub(r'[^A-Za-z0-9._-]', '_', name.replace('=', '-').replace(',', '_'))


def expand(spec: Any, source: str = 'get_sweep()') -> Sweep:
  """Validates a sweep dict and expands it into its runs (see the module docstring)."""
  if not isinstance(spec, dict):
    raise SweepError(f'{source} must return a dict; got {type(spec).__name__}.')
  for k in spec:
    if k not in _SWEEP_KEYS:
      raise _unknown(f'sweep file {source}', k, _SWEEP_KEYS)
  config = spec.get('config')
  if not isinstance(config, str) or not config:
    raise SweepError(f"sweep 'config' is missing: give the --config of every run, e.g. "
                     f"'config': 'configs/demo/vit_digits.py' ({source}).")
  base = _check_overrides("sweep 'base'", spec.get('base', {}))
  metric = spec.get('metric')
  if metric is not None and not isinstance(metric, str):
    raise SweepError(f"sweep 'metric' must be a metric name such as 'accuracy'; got "
                     f'{metric!r}.')
  points: List[Dict[str, Any]] = [{}]
  if 'grid' in spec:
    points = _grid_points(spec['grid'])
  if 'random' in spec:
    draws = _random_points(spec['random'])
    points = [dict(p, **d) for p in points for d in draws]
  if 'grid' not in spec and 'random' not in spec:
    points = []
  explicit = spec.get('runs', [])
  if not isinstance(explicit, list):
    raise SweepError(f"sweep 'runs' must be a list of override dicts, e.g. "
                     f"[{{'optimizer.lr': 1e-3}}]; got {explicit!r}.")
  points += [_check_overrides(f"sweep runs[{i}]", r) for i, r in enumerate(explicit)]
  if not points:
    raise SweepError(f"the sweep defines no runs: add 'grid', 'random' or 'runs' to "
                     f'{source}.')
  swept = list(dict.fromkeys(k for p in points for k in p))
  short = short_names(swept)
  runs, seen = [], {}
  for i, own in enumerate(points):
    name = run_name(own, short, swept)
    if name in seen:
      j = seen[name]
      raise SweepError(
          f'runs {j} and {i} of the sweep have the same name {name!r} (values '
          f'{points[j]} and {own}): remove the duplicate from the grid / runs.')
    seen[name] = i
    runs.append(Run(name=name, own=own, overrides=dict(base, **own)))
  return Sweep(config=config, base=base, runs=runs, swept=swept, short=short,
               metric=metric, source=source)


# --------------------------------------------------------------------------- the config
def _load_config(config_arg: str):
  """get_config(arg) of ``path[:arg]``, as main's --config loads it."""
  path, _, arg = config_arg.partition(':')
  if not os.path.isfile(path):
    raise SweepError(f"sweep 'config': {path!r} does not exist (paths are relative to the "
                     f'directory you run the sweep from; run it from the repository root).')
  spec = importlib.util.spec_from_file_location(
      'sweep_config_' + re.sub(r'\W', '_', os.path.basename(path)[:-3]), path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise SweepError(f"sweep 'config': {config_arg} failed to load: {e}") from None


def _field_paths(cfg, prefix: str = '') -> List[str]:
  out = []
  for k, v in cfg.items():
    out.append(prefix + k)
    if hasattr(v, 'items'):
      out += _field_paths(v, prefix + k + '.')
  return out


def _holder(cfg, key: str, where: str, config_arg: str):
  node, parts = cfg, key.split('.')
  for i, p in enumerate(parts):
    if not hasattr(node, 'items') or p not in node:
      close = difflib.get_close_matches(key, _field_paths(cfg), n=1)
      hint = f'; did you mean {close[0]!r}?' if close else '.'
      raise SweepError(f'{where}: {key!r} is not a field of {config_arg}{hint}')
    if i < len(parts) - 1:
      node = node[p]
  return node, parts[-1]


def resolve(sweep: Sweep) -> None:
  """Checks every override against the config (field exists, value fits its type) and
  fills each run's effective ``values``. Raises SweepError naming the key."""
  for run in sweep.runs:
    cfg = _load_config(sweep.config)
    sweep.progress_bar_field = 'progress_bar' in cfg
    for key, value in run.overrides.items():
      where = "sweep 'base'" if key not in run.own else f'sweep run {run.name!r}'
      holder, field = _holder(cfg, key, where, sweep.config)
      try:
        holder[field] = tuple(value) if isinstance(value, list) else value
      except (TypeError, ValueError) as e:
        raise SweepError(f'{where}: {key}={value!r} does not fit the field in '
                         f'{sweep.config} ({e}).') from None
    for key in sweep.swept:
      holder, field = _holder(cfg, key, f'sweep run {run.name!r}', sweep.config)
      run.values[key] = holder[field]


def _cli_value(v: Any) -> str:
  if isinstance(v, float):
    return repr(v)
  if isinstance(v, (list, tuple)):
    return repr(tuple(v))
  return str(v)


def override_args(sweep: Sweep, run: Run) -> List[str]:
  """The ``--config.KEY=VALUE`` arguments of one run."""
  args = [f'--config.{k}={_cli_value(v)}' for k, v in run.overrides.items()]
  if sweep.progress_bar_field and 'progress_bar' not in run.overrides:
    args.append('--config.progress_bar=False')  # a log file, not a terminal
  return args


def command(sweep: Sweep, run: Run, workdir: str, python: str = 'python') -> List[str]:
  """The ``python -m swin_jax.main ...`` command of one run."""
  return [python, '-m', 'swin_jax.main', f'--config={sweep.config}', f'--workdir={workdir}',
          *override_args(sweep, run)]


# ---------------------------------------------------------------------------- run state
def read_metrics(workdir: str) -> List[Dict[str, Any]]:
  """The records of <workdir>/metrics.jsonl (a line cut by a kill is ignored)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  records = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError:
          pass
  return records


def final_record(records: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
  """The last final evaluation (written once the run reached its last step)."""
  finals = [r for r in records if r.get('split') == 'eval' and 'train_time_s' in r]
  return finals[-1] if finals else None


def _read_json(path: str) -> Dict[str, Any]:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return {}


def _same(a: Any, b: Any) -> bool:
  a, b = json.loads(json.dumps(a)), json.loads(json.dumps(b))  # tuples -> lists, as saved
  if isinstance(a, (int, float)) and isinstance(b, (int, float)):
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
  if isinstance(a, list) and isinstance(b, list):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  return a == b


def config_matches(workdir: str, sweep: Sweep, run: Run) -> bool:
  """Whether the workdir's config.json (and sweep_run.json) hold this run's settings."""
  info = _read_json(os.path.join(workdir, RUN_FILE))
  if info and info.get('config') != sweep.config:
    return False
  saved = _read_json(os.path.join(workdir, 'config.json'))
  for key, value in run.overrides.items():
    node = saved
    for p in key.split('.'):
      if not isinstance(node, dict) or p not in node:
        return False
      node = node[p]
    if not _same(node, value):
      return False
  return True


def run_status(workdir: str, sweep: Sweep, run: Run) -> str:
  """'done', 'failed', 'submitted', 'changed' (finished with other settings: trains again),
  'incomplete' (started, not finished) or 'pending' (not started)."""
  if not os.path.isdir(workdir):
    return 'pending'
  records = read_metrics(workdir)
  final = final_record(records)
  matches = config_matches(workdir, sweep, run)
  if final and matches:
    return 'done'
  info = _read_json(os.path.join(workdir, RUN_FILE))
  if info.get('returncode') not in (None, 0) and not info.get('interrupted'):
    return 'failed'
  if final:
    return 'changed'
  if info.get('submitted') and not records:
    return 'submitted'
  return 'incomplete' if records or info else 'pending'


# ------------------------------------------------------------------------------ running
class _Stop:
  """SIGTERM to the sweep: forwarded to the running child (which checkpoints), then stop."""

  def __init__(self):
    self.requested = False
    self.child: Optional[subprocess.Popen] = None
    self._old = None

  def __enter__(self):
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      self._old = None
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    self.requested = True
    if self.child is not None and self.child.poll() is None:
      self.child.send_signal(signal.SIGTERM)

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def run_local(cmd: List[str], workdir: str, verbose: bool = False,
              stop: Optional[_Stop] = None) -> Tuple[int, str]:
  """Runs one command, appending its stdout and stderr to <workdir>/log.txt (and to the
  console when verbose). Returns (exit status, the error line it printed or '')."""
  os.makedirs(workdir, exist_ok=True)
  tail: deque = deque(maxlen=30)
  with open(os.path.join(workdir, 'log.txt'), 'a') as log:
    log.write(f'\n=== {time.strftime("%Y-%m-%d %H:%M:%S")} {shlex.join(cmd)}\n')
    log.flush()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, errors='replace')
    if stop is not None:
      stop.child = proc
    try:
      for line in proc.stdout:
        log.write(line)
        log.flush()
        tail.append(line.rstrip())
        if verbose:
          print('    ' + line, end='', flush=True)
      rc = proc.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the child too; let it finish its exit
      rc = proc.wait()
      raise
    finally:
      if stop is not None:
        stop.child = None
  lines = [l for l in tail if l.strip()]
  errors = [l for l in lines if l.startswith('error:')]
  return rc, (errors[-1] if errors else (lines[-1] if lines and rc else ''))


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f'{seconds // 60} min {seconds % 60:02d} s' if seconds >= 60 else f'{seconds} s'


def _write_json(path: str, obj: Dict[str, Any]):
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, default=str)
  os.replace(tmp, path)


Runner = Callable[[List[str], str, bool, Optional[_Stop]], Tuple[int, str]]


def execute(sweep: Sweep, sweep_dir: str, *, dry_run: bool = False,
            launcher: str = 'local', verbose: bool = False, metrics: Optional[str] = None,
            runner: Runner = run_local, out=None) -> Dict[str, str]:
  """Runs (or plans, or submits) the runs not finished yet; returns name -> status.

  Args:
    sweep: the expanded, resolved sweep.
    sweep_dir: the directory of the run workdirs and the summary.
    dry_run: print the plan as a shell script and write nothing.
    launcher: 'local' (run here, one after the other) or a command template with {cmd},
      {name}, {workdir} and {index} (submit and do not wait).
    verbose: also print each run's output (always in <run>/log.txt).
    metrics: the --metric value, for the one-line result of each run.
    runner: runs one command (tests replace it).
    out: where the progress lines go (stdout).
  """
  out = out or sys.stdout
  say = lambda s: print(s, file=out, flush=True)
  n = len(sweep.runs)
  statuses = {}
  workdirs = {r.name: os.path.join(sweep_dir, r.name) for r in sweep.runs}
  before = {r.name: run_status(workdirs[r.name], sweep, r) for r in sweep.runs}
  todo = sum(s != 'done' for s in before.values())
  prefix = '# ' if dry_run else ''
  say(f'{prefix}sweep {sweep.source}: {n} runs in {sweep_dir} ({n - todo} done, {todo} to '
      f'{"run" if launcher == "local" else "submit"})')
  if not dry_run:
    os.makedirs(sweep_dir, exist_ok=True)
    _write_json(os.path.join(sweep_dir, PLAN_FILE), {
        'source': sweep.source, 'config': sweep.config, 'base': sweep.base,
        'swept': sweep.swept, 'metric': sweep.metric,
        'runs': [{'name': r.name, 'own': r.own, 'overrides': r.overrides,
                  'values': r.values, 'command': shlex.join(command(sweep, r, workdirs[
                      r.name]))} for r in sweep.runs]})
  with _Stop() as stop:
    for i, run in enumerate(sweep.runs, 1):
      wd = workdirs[run.name]
      tag = f'[{i}/{n}] {run.name}'
      status = before[run.name]
      if status == 'done':
        final = final_record(read_metrics(wd)) or {}
        say(f'{prefix}{tag}: done, skipped ({_result_line(final, metrics or sweep.metric)})')
        statuses[run.name] = 'done'
        continue
      if dry_run:
        say(f'# {tag}: {status}')
        say(shlex.join(command(sweep, run, wd)))
        statuses[run.name] = status
        continue
      if stop.requested:
        statuses[run.name] = status
        continue
      info = _read_json(os.path.join(wd, RUN_FILE))
      if launcher != 'local' and info.get('submitted') and status in ('submitted',
                                                                      'incomplete'):
        say(f'{tag}: {status}, submitted before: not submitted again (it may still be '
            f'running; delete {os.path.join(wd, RUN_FILE)} to submit it anew)')
        statuses[run.name] = status
        continue
      info = {'name': run.name, 'config': sweep.config, 'overrides': run.overrides,
              'command': shlex.join(command(sweep, run, wd)), 'started': time.time()}
      os.makedirs(wd, exist_ok=True)
      if launcher != 'local':
        line = launcher.format(cmd=shlex.quote(info['command']), name=run.name, workdir=wd,
                               index=i, config=shlex.quote(sweep.config), slug=slug(run.name),
                               overrides=shlex.join(override_args(sweep, run)))
        rc = subprocess.run(line, shell=True, check=False).returncode
        info.update(submitted=line, returncode=rc or None)
        _write_json(os.path.join(wd, RUN_FILE), info)
        say(f'{tag}: submitted' if rc == 0 else f'{tag}: launcher FAILED (exit {rc}): {line}')
        statuses[run.name] = 'submitted' if rc == 0 else 'failed'
        continue
      _write_json(os.path.join(wd, RUN_FILE), info)
      say(f'{tag}: {"resuming" if status in ("incomplete", "failed", "changed") else "running"}'
          f' (log: {os.path.join(wd, "log.txt")})')
      t0 = time.time()
      try:
        rc, err = runner(command(sweep, run, wd, python=sys.executable), wd, verbose, stop)
      except KeyboardInterrupt:
        info.update(returncode=130, interrupted=True, finished=time.time())
        _write_json(os.path.join(wd, RUN_FILE), info)
        say(f'{tag}: interrupted; run the same command to resume.')
        raise
      info.update(returncode=rc, error=err, finished=time.time())
      _write_json(os.path.join(wd, RUN_FILE), info)
      statuses[run.name] = run_status(wd, sweep, run)
      took = _duration(time.time() - t0)
      if statuses[run.name] == 'done':
        final = final_record(read_metrics(wd))
        say(f'{tag}: done in {took} ({_result_line(final, metrics or sweep.metric)})')
      elif stop.requested:
        say(f'{tag}: stopped by SIGTERM after {took}; run the same command to resume.')
      else:
        say(f'{tag}: FAILED (exit {rc}) after {took}: {err or "no error line"}; see '
            f'{os.path.join(wd, "log.txt")}. Going on with the next run.')
  return statuses


def _result_line(final: Dict[str, Any], metrics: Optional[str]) -> str:
  names = _metric_names([final], metrics)
  return ', '.join(f'{m}={final[m]:.4f}' for m in names if m in final) or 'no metrics'


# ------------------------------------------------------------------------------ summary
def _metric_names(finals: List[Dict[str, Any]], requested: Optional[str]) -> List[str]:
  """The table's metrics: --metric (comma list), else the task's usual ones."""
  if requested:
    return [m.strip() for m in requested.split(',') if m.strip()]
  keys = [k for f in finals for k in f if k not in _NOT_METRICS]
  if 'accuracy' in keys:
    return ['accuracy', 'loss']
  if 'AP' in keys:
    return ['AP', 'AP50']
  return list(dict.fromkeys(keys))[:3]


def lower_is_better(metric: str) -> bool:
  return any(w in metric.lower() for w in ('loss', 'error', 'err', 'time'))


@dataclasses.dataclass
class Row:
  """One run's line of the summary, and the records its curves are drawn from."""
  run: Run
  status: str
  final: Dict[str, Any]
  best: Optional[float]
  best_step: Optional[int]
  train_loss: Optional[float]
  steps: Optional[int]
  train_time_s: Optional[float]
  records: List[Dict[str, Any]]


def collect(sweep: Sweep, sweep_dir: str, metrics: Optional[str] = None
            ) -> Tuple[List[Row], List[str]]:
  """Reads every run's workdir: (rows in sweep order, metric names, primary first)."""
  rows = []
  for run in sweep.runs:
    wd = os.path.join(sweep_dir, run.name)
    records = read_metrics(wd)
    status = run_status(wd, sweep, run)
    final = (final_record(records) or {}) if status in ('done', 'changed') else {}
    train = [r for r in records if r.get('split') == 'train']
    rows.append(Row(run=run, status=status, final=final, best=None, best_step=None,
                    train_loss=train[-1].get('loss') if train else None,
                    steps=max((r['step'] for r in records), default=None),
                    train_time_s=final.get('train_time_s'), records=records))
  names = _metric_names([r.final for r in rows] +
                        [x for r in rows for x in r.records if x.get('split') == 'eval'],
                        metrics or sweep.metric)
  primary = names[0] if names else None
  for row in rows:
    evals = [(r['step'], r[primary]) for r in row.records
             if r.get('split') == 'eval' and primary in r]
    if evals:
      pick = min if lower_is_better(primary) else max
      row.best_step, row.best = pick(evals, key=lambda sv: sv[1])
  return rows, names


def _fmt_metric(v: Any) -> str:
  return '' if v is None else (f'{v:.4f}' if isinstance(v, float) else str(v))


def table(sweep: Sweep, rows: List[Row], names: List[str]) -> Tuple[List[str], List[list]]:
  """Header and cells of the summary (the same for CSV, Markdown and the console)."""
  primary = names[0] if names else 'metric'
  header = (['run'] + [sweep.short[k] for k in sweep.swept] + [f'final {m}' for m in names] +
            [f'best {primary}', 'best step', 'final train loss', 'steps', 'train time (s)',
             'status'])
  cells = []
  for r in rows:
    cells.append([r.run.name] + [r.run.values.get(k, r.run.own.get(k)) for k in sweep.swept] +
                 [r.final.get(m) for m in names] +
                 [r.best, r.best_step, r.train_loss, r.steps, r.train_time_s, r.status])
  return header, cells


def best_row(rows: List[Row], names: List[str]) -> Optional[Row]:
  done = [r for r in rows if names and r.final.get(names[0]) is not None]
  if not done:
    return None
  pick = min if lower_is_better(names[0]) else max
  return pick(done, key=lambda r: r.final[names[0]])


def markdown(sweep: Sweep, rows: List[Row], names: List[str]) -> str:
  header, cells = table(sweep, rows, names)
  n_params = len(sweep.swept)

  def cell(j, v):
    if v is None:
      return ''
    if 1 <= j <= n_params:
      return format_value(v)
    if header[j] == 'train time (s)':
      return f'{v:.0f}'
    return _fmt_metric(v)

  numeric = [1 <= j <= n_params or h not in ('run', 'status') for j, h in enumerate(header)]
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join('---:' if num else '---' for num in numeric) + '|']
  lines += ['| ' + ' | '.join(cell(j, v) for j, v in enumerate(c)) + ' |' for c in cells]
  best = best_row(rows, names)
  if best is not None:
    lines += ['', f'Best final {names[0]}: {best.final[names[0]]:.4f} ({best.run.name}).']
  failed = [r.run.name for r in rows if r.status == 'failed']
  if failed:
    lines += ['', f'Failed: {", ".join(failed)} (see <run>/log.txt).']
  return '\n'.join(lines) + '\n'


def write_summary(sweep: Sweep, sweep_dir: str, metrics: Optional[str] = None,
                  plot: bool = True) -> Tuple[List[Row], List[str], str]:
  """Writes summary.csv, summary.md and summary.png; returns (rows, metrics, markdown)."""
  rows, names = collect(sweep, sweep_dir, metrics)
  os.makedirs(sweep_dir, exist_ok=True)
  header, cells = table(sweep, rows, names)
  with open(os.path.join(sweep_dir, 'summary.csv'), 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows([['' if v is None else v for v in c] for c in cells])
  md = markdown(sweep, rows, names)
  with open(os.path.join(sweep_dir, 'summary.md'), 'w') as f:
    f.write(f'# Sweep {sweep.source}\n\n`--config={sweep.config}`, base: '
            f'{json.dumps(sweep.base) if sweep.base else "none"}\n\n{md}')
  if plot and any(r.records for r in rows):  # nothing to draw before a run has logged
    plot_summary(sweep, rows, names, os.path.join(sweep_dir, 'summary.png'))
  return rows, names, md


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def plot_summary(sweep: Sweep, rows: List[Row], names: List[str], path: str) -> None:
  """summary.png: the final metric against each swept value (runs that differ only in that
  value joined by a line), the training-loss curves and, where runs evaluated more than
  once, the eval-metric curves."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  primary = names[0] if names else None
  varying = [k for k in sweep.swept
             if len({json.dumps(r.run.values.get(k), default=str) for r in rows}) > 1]
  multi_eval = primary and any(
      sum(1 for x in r.records if x.get('split') == 'eval' and primary in x) > 1 for r in rows)
  panels = ([('param', k) for k in varying] + [('train', None)] +
            ([('eval', None)] if multi_eval else []))
  cols = 2 if len(panels) == 4 else min(3, len(panels))
  nrows = math.ceil(len(panels) / cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(5.4 * cols, 4.2 * nrows), squeeze=False)
  for ax in axes.flat[len(panels):]:
    ax.axis('off')
  colors = plt.get_cmap('tab10' if len(rows) <= 10 else 'tab20')
  run_color = {r.run.name: colors(i % colors.N) for i, r in enumerate(rows)}
  best = best_row(rows, names)

  for ax, (kind, key) in zip(axes.flat, panels):
    if kind == 'param':
      _param_panel(ax, key, varying, sweep.short, rows, primary, best, plt)
    else:
      metric = 'loss' if kind == 'train' else primary
      for r in rows:
        pts = [(x['step'], x[metric]) for x in r.records
               if x.get('split') == kind and metric in x]
        if pts:
          ax.plot(*zip(*pts), marker='.' if kind == 'eval' else None, lw=1.4,
                  color=run_color[r.run.name], label=r.run.name)
      ax.set_title(f'{"training loss" if kind == "train" else "eval " + metric} vs step')
      ax.set_xlabel('step')
      ax.set_ylabel(f'train {metric}' if kind == 'train' else f'eval {metric}')
      ys = [l.get_ydata() for l in ax.get_lines()]
      lo = min((min(y) for y in ys), default=1.0)
      hi = max((max(y) for y in ys), default=1.0)
      if kind == 'train' and lo > 0 and hi / lo > 20:
        ax.set_yscale('log')
      if ax.get_lines() and len(rows) <= 12:
        ax.legend(fontsize=7, title='run', title_fontsize=7)
      ax.grid(alpha=0.3)
  title = f'Sweep {os.path.basename(sweep.source)}: {len(rows)} runs of {sweep.config}'
  if best is not None:
    title += f'; best final {primary} {best.final[primary]:.4f} ({best.run.name})'
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _param_panel(ax, key, varying, short, rows, metric, best, plt):
  """Final metric against one swept value; runs equal in every other swept value form one
  line, labelled by those values; failed runs are red crosses on the x axis."""
  import matplotlib.transforms as mtransforms  # pylint: disable=g-import-not-at-top
  others = [k for k in varying if k != key]
  values = [r.run.values.get(key) for r in rows]
  numeric = all(_is_number(v) for v in values)
  if numeric:
    xs = {id(r): float(v) for r, v in zip(rows, values)}
  else:
    cats = list(dict.fromkeys(format_value(v) for v in values))
    xs = {id(r): float(cats.index(format_value(v))) for r, v in zip(rows, values)}
    ax.set_xticks(range(len(cats)), cats, rotation=20 if len(cats) > 4 else 0)
  finished = [r for r in rows if r.final.get(metric) is not None]
  groups: Dict[str, List[Row]] = {}
  for r in finished:
    label = ', '.join(f'{short[k]}={format_value(r.run.values.get(k))}' for k in others)
    groups.setdefault(label, []).append(r)
  if len(groups) <= 10:
    cmap = plt.get_cmap('tab10')
    for j, (label, grp) in enumerate(groups.items()):
      grp = sorted(grp, key=lambda r: xs[id(r)])
      ax.plot([xs[id(r)] for r in grp], [r.final[metric] for r in grp], marker='o',
              color=cmap(j), label=label or None)
  else:  # a random search: too many combinations for a legend
    ax.scatter([xs[id(r)] for r in finished], [r.final[metric] for r in finished], s=18)
  if best is not None and any(r is best for r in finished):
    ax.plot([xs[id(best)]], [best.final[metric]], marker='*', ms=16, color='gold',
            markeredgecolor='black', ls='none', zorder=5, label='best run')
  failed = [r for r in rows if r.status == 'failed']
  if failed:  # x in data units, y at the bottom of the axes, below the points
    ax.margins(y=0.15)
    ax.plot([xs[id(r)] for r in failed], [0.03] * len(failed), marker='x', ms=9, mew=2,
            color='red', ls='none', label='failed', clip_on=False,
            transform=mtransforms.blended_transform_factory(ax.transData, ax.transAxes))
  missing = len(rows) - len(finished) - len(failed)
  if missing:
    ax.text(0.99, 0.01, f'{missing} unfinished run(s) not shown', transform=ax.transAxes,
            ha='right', va='bottom', fontsize=7, color='gray')
  pos = [x for x in xs.values() if x > 0]
  if numeric and pos and len(pos) == len(xs) and max(pos) / min(pos) >= 10:
    ax.set_xscale('log')  # lr-like values spanning 10x or more
  if numeric and 0 < len(set(xs.values())) <= 8:  # label the swept values themselves
    shown = {xs[id(r)]: format_value(v) for r, v in zip(rows, values)}
    ax.set_xticks(sorted(shown), [shown[t] for t in sorted(shown)])
    ax.minorticks_off()
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)
  ax.set_title(f'final {metric} vs {short[key]}')
  ax.set_xlabel(key + (' (log scale)' if ax.get_xscale() == 'log' else ''))
  ax.set_ylabel(f'final eval {metric}')
  ax.grid(alpha=0.3)


# ---------------------------------------------------------------------------------- CLI
def _sweep_from_plan(sweep_dir: str) -> Sweep:
  plan = _read_json(os.path.join(sweep_dir, PLAN_FILE))
  if not plan:
    raise SweepError(f'--dir={sweep_dir} holds no {PLAN_FILE}: give --sweep=FILE too.')
  runs = [Run(name=r['name'], own=r['own'], overrides=r['overrides'],
              values=r.get('values', {})) for r in plan['runs']]
  return Sweep(config=plan['config'], base=plan['base'], runs=runs, swept=plan['swept'],
               short=short_names(plan['swept']), metric=plan.get('metric'),
               source=plan.get('source', sweep_dir))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog='python -m swin_jax.sweep', description=__doc__.split('\n\n')[0],
      epilog=__doc__.split('\n\n', 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--sweep', help='sweep file defining get_sweep() (see the module docstring)')
  p.add_argument('--dir', required=True, help='sweep directory: one workdir per run, summary')
  p.add_argument('--dry-run', action='store_true',
                 help='print the commands of the runs still to do; run and write nothing')
  p.add_argument('--summarize-only', action='store_true',
                 help='only write summary.csv / .md / .png from the workdirs in --dir')
  p.add_argument('--metric', default=None,
                 help='metric(s) of the table, comma-separated; the first is plotted')
  p.add_argument('--launcher', default='local',
                 help="'local' (default: run here, one by one) or a command template with "
                      '{cmd}, {config}, {overrides}, {name}, {slug}, {workdir}, {index} to '
                      'submit each run as a job')
  p.add_argument('--verbose', action='store_true', help="also print each run's output")
  p.add_argument('--no-plot', action='store_true', help='skip summary.png')
  return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None, runner: Runner = run_local) -> int:
  """The command line; returns the exit status (0: every run done, 1: some not, 2: error)."""
  cli.quiet_startup()
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    if args.sweep:
      sweep = expand(load_sweep_file(args.sweep), source=args.sweep)
      resolve(sweep)
    elif args.summarize_only:
      sweep = _sweep_from_plan(args.dir)
    else:
      raise SweepError('--sweep=FILE is required (e.g. '
                       '--sweep=experiments/sweeps/vit_digits_lr_dp.py).')
    if args.launcher != 'local':
      for field in re.findall(r'{(\w*)}', args.launcher):
        if field not in _PLACEHOLDERS:
          raise SweepError(f'--launcher: unknown placeholder {{{field}}}; use '
                           f'{", ".join("{" + p + "}" for p in _PLACEHOLDERS)}.')
  except SweepError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if not args.summarize_only:
    launcher = ' '.join(args.launcher.split())  # one command, even when written over lines
    execute(sweep, args.dir, dry_run=args.dry_run, launcher=launcher,
                       verbose=args.verbose, metrics=args.metric, runner=runner)
    if args.dry_run:
      return 0
  rows, _, md = write_summary(sweep, args.dir, args.metric, plot=not args.no_plot)
  print('\n' + md)
  written = ['summary.csv', 'summary.md']
  if not args.no_plot and any(r.records for r in rows):
    written.append('summary.png')
  print('Wrote ' + ', '.join(os.path.join(args.dir, f) for f in written))
  return 0 if all(r.status == 'done' for r in rows) else 1


if __name__ == '__main__':
  sys.exit(main())
