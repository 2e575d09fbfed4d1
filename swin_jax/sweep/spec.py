"""The sweep file: loading, validation, the fixed runs it lists, the search space it gives,
and each run's ``python -m swin_jax.main`` command. Imports no Optuna.

A run's name, which is also its workdir under ``--dir``, is made from its own values with
the fields' last names, in the order the file gives them: ``lr=0.001,drop_path_rate=0.1``
(the full key where two swept fields share a last name; ``base`` for a run with no values of
its own). It depends only on the run's own values, so adding a value to a grid keeps the
names, and the finished workdirs, of the runs already done; a trial the sampler draws again
with the same values reuses the workdir (and its result) instead of training twice.
"""
from __future__ import annotations

import copy
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
from typing import Any, Dict, List, Optional, Sequence

SWEEP_KEYS = ('config', 'base', 'grid', 'random', 'runs', 'search', 'pruner', 'metric')
_RANDOM_KEYS = ('num_samples', 'seed', 'params')
_SEARCH_KEYS = ('sampler', 'sampler_args', 'num_trials', 'seed', 'params')
_DISTRIBUTIONS = ('uniform', 'loguniform', 'randint', 'choice')
NOT_METRICS = ('train_time_s', 'num_examples', 'step', 'split', 'time', 'epoch')
PLAN_FILE = 'sweep.json'  # in --dir: the sweep as run, so --summarize-only needs no --sweep
RUN_FILE = 'sweep_run.json'  # in each run's workdir: how the sweep last launched it


class SweepError(ValueError):
  """A mistake in the sweep file or the command line; the message names the key."""


@dataclasses.dataclass
class Run:
  """One run of a sweep (a fixed run of the file, or a trial the sampler drew).

  Attributes:
    name: the run's name, also its workdir under the sweep directory.
    own: the run's own values (grid point, random draw, explicit run, sampled trial).
    overrides: base values then own values: every ``--config.KEY=VALUE`` of its command.
    values: the effective value of every swept key for this run (own, else base, else the
      config's default); filled in by ``resolve`` / ``resolve_run``.
  """
  name: str
  own: Dict[str, Any]
  overrides: Dict[str, Any]
  values: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Search:
  """The file's ``search``: trials drawn by an Optuna sampler from ``params``.

  params: key -> ('uniform'|'loguniform'|'randint', lo, hi) or ('choice', [values]).
  """
  sampler: str
  num_trials: int
  params: Dict[str, tuple]
  seed: Optional[int] = 0
  sampler_args: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Sweep:
  """An expanded sweep: the config, the fixed runs, the search and the keys they vary."""
  config: str
  base: Dict[str, Any]
  runs: List[Run]  # the fixed runs (grid x random draws, then 'runs'), in file order
  swept: List[str]  # every key a run or the search sets on its own, in order of appearance
  short: Dict[str, str]  # swept key -> the name shown in run names and tables
  search: Optional[Search] = None
  pruner: Any = None  # None, a name ('median') or {'name': ..., **arguments}
  metric: Optional[str] = None
  source: str = 'get_sweep()'
  progress_bar_field: bool = False  # the config has `progress_bar` (set False in runs)
  task: str = 'classification'  # the config's task: the default metric


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
                     f'with keys {", ".join(SWEEP_KEYS)}.')
  return module.get_sweep()


def unknown(what: str, key: Any, known: Sequence[str]) -> SweepError:
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


def check_distribution(key: str, spec: Any, where: str) -> tuple:
  """('uniform'|'loguniform'|'randint', lo, hi) or ('choice', [values]) as a tuple; a list
  is a choice. Raises SweepError naming the key."""
  if isinstance(spec, list):
    spec = ('choice', spec)
  bad = SweepError(
      f"{where}[{key!r}]={spec!r}: use ('uniform', lo, hi), ('loguniform', lo, hi) with "
      f"0 < lo < hi, ('randint', lo, hi) (both included) or ('choice', [values]).")
  if not isinstance(spec, (tuple, list)) or not spec or spec[0] not in _DISTRIBUTIONS:
    raise bad
  kind = spec[0]
  if kind == 'choice':
    if len(spec) != 2 or not isinstance(spec[1], (list, tuple)) or not spec[1]:
      raise bad
    if any(v is None for v in spec[1]):
      raise SweepError(f'{where}[{key!r}] holds None: the command line cannot set None.')
    return ('choice', list(spec[1]))
  if len(spec) != 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                               for x in spec[1:]):
    raise bad
  lo, hi = spec[1], spec[2]
  if not lo < hi or (kind == 'loguniform' and lo <= 0):
    raise bad
  if kind == 'randint' and not (isinstance(lo, int) and isinstance(hi, int)):
    raise bad
  return (kind, lo, hi)


def _sample(rng: random_lib.Random, key: str, spec: Any, where: str) -> Any:
  """One draw of a distribution (the file's 'random': Python's RNG, floats to 4 digits)."""
  kind, *args = check_distribution(key, spec, where)
  if kind == 'choice':
    return rng.choice(args[0])
  lo, hi = args
  if kind == 'uniform':
    return _round4(rng.uniform(lo, hi))
  if kind == 'loguniform':
    return _round4(math.exp(rng.uniform(math.log(lo), math.log(hi))))
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


def _random_spec(spec: Any) -> Dict[str, Any]:
  if not isinstance(spec, dict):
    raise SweepError(f"sweep 'random' must be a dict with 'num_samples', 'seed' and "
                     f"'params'; got {spec!r}.")
  for k in spec:
    if k not in _RANDOM_KEYS:
      raise unknown("sweep 'random'", k, _RANDOM_KEYS)
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
  return {'num_samples': n, 'seed': seed, 'params': params}


def _random_points(spec: Dict[str, Any]) -> List[Dict[str, Any]]:
  rng = random_lib.Random(spec['seed'])
  return [{k: _sample(rng, k, d, "sweep random['params']") for k, d in spec['params'].items()}
          for _ in range(spec['num_samples'])]


def _search(spec: Any) -> Search:
  where = "sweep 'search'"
  if not isinstance(spec, dict):
    raise SweepError(f"{where} must be a dict with 'sampler', 'num_trials' and 'params'; "
                     f'got {spec!r}.')
  for k in spec:
    if k not in _SEARCH_KEYS:
      raise unknown(where, k, _SEARCH_KEYS)
  sampler = spec.get('sampler', 'tpe')
  if not isinstance(sampler, str) or not sampler:
    raise SweepError(f"sweep search['sampler'] must be a name such as 'tpe', 'random', "
                     f"'grid' or an optuna.samplers class name; got {sampler!r}.")
  params = spec.get('params')
  if not isinstance(params, dict) or not params:
    raise SweepError("sweep search['params'] must be a non-empty dict of field -> "
                     "distribution, e.g. {'optimizer.lr': ('loguniform', 1e-4, 1e-2)}.")
  _check_overrides("sweep search['params']", {k: 0 for k in params})
  params = {k: check_distribution(k, d, "sweep search['params']") for k, d in params.items()}
  n = spec.get('num_trials')
  if n is None and sampler == 'grid' and all(d[0] == 'choice' for d in params.values()):
    n = math.prod(len(d[1]) for d in params.values())
  if not isinstance(n, int) or isinstance(n, bool) or n < 1:
    raise SweepError(f"sweep search['num_trials'] must be a positive int (the trials to "
                     f"draw; --num-trials=N on the command line); got {n!r}.")
  seed = spec.get('seed', 0)
  if seed is not None and not isinstance(seed, int):
    raise SweepError(f"sweep search['seed'] must be an int or None; got {seed!r}.")
  args = spec.get('sampler_args', {})
  if not isinstance(args, dict):
    raise SweepError(f"sweep search['sampler_args'] must be a dict of keyword arguments of "
                     f'the sampler; got {args!r}.')
  return Search(sampler=sampler, num_trials=n, params=params, seed=seed, sampler_args=args)


def check_pruner(spec: Any) -> Any:
  """None, a name or {'name': ..., **arguments}; the name is checked by study.make_pruner."""
  if spec is None or isinstance(spec, str):
    return spec
  if isinstance(spec, dict) and isinstance(spec.get('name'), str):
    return dict(spec)
  raise SweepError(f"sweep 'pruner' must be a name ('median', 'successive_halving', "
                   f"'hyperband', 'none', ...) or {{'name': 'median', 'n_startup_trials': 2, "
                   f'...}}; got {spec!r}.')


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


def make_run(sweep: Sweep, own: Dict[str, Any]) -> Run:
  """The run of some own values (a sampled trial's), named as the fixed runs are."""
  return Run(name=run_name(own, sweep.short, sweep.swept), own=dict(own),
             overrides=dict(sweep.base, **own))


def expand(spec: Any, source: str = 'get_sweep()', sampler: Optional[str] = None,
           num_trials: Optional[int] = None) -> Sweep:
  """Validates a sweep dict and expands it into its fixed runs and its search.

  sampler / num_trials (--sampler, --num-trials): override the file's search; on a file
  without 'search', its 'grid' (as choices) and 'random' params become the search space
  instead of fixed runs, and only 'runs' stay fixed.
  """
  if not isinstance(spec, dict):
    raise SweepError(f'{source} must return a dict; got {type(spec).__name__}.')
  for k in spec:
    if k not in SWEEP_KEYS:
      raise unknown(f'sweep file {source}', k, SWEEP_KEYS)
  config = spec.get('config')
  if not isinstance(config, str) or not config:
    raise SweepError(f"sweep 'config' is missing: give the --config of every run, e.g. "
                     f"'config': 'configs/demo/vit_digits.py' ({source}).")
  base = _check_overrides("sweep 'base'", spec.get('base', {}))
  metric = spec.get('metric')
  if metric is not None and not isinstance(metric, str):
    raise SweepError(f"sweep 'metric' must be a metric name such as 'accuracy'; got "
                     f'{metric!r}.')
  grid = _grid_points(spec['grid']) if 'grid' in spec else None
  rand = _random_spec(spec['random']) if 'random' in spec else None
  search_spec = spec.get('search')
  if search_spec is None and sampler is not None:  # the file's grid / random as a space
    if grid is None and rand is None:
      raise SweepError(f'--sampler={sampler}: {source} has no search space: give it a '
                       f"'search' (or 'grid' / 'random') section.")
    params = {k: list(v) for k, v in spec['grid'].items()} if grid is not None else {}
    params.update(rand['params'] if rand is not None else {})
    search_spec = {'sampler': sampler, 'params': params, 'num_trials': num_trials,
                   'seed': rand['seed'] if rand else 0}
    grid = rand = None
  elif search_spec is not None:
    search_spec = dict(search_spec) if isinstance(search_spec, dict) else search_spec
    if isinstance(search_spec, dict):
      if sampler is not None:
        search_spec['sampler'] = sampler
      if num_trials is not None:
        search_spec['num_trials'] = num_trials
  elif num_trials is not None:
    raise SweepError(f'--num-trials applies to a search: {source} has none; give it a '
                     f"'search' section or add --sampler=tpe.")
  search = _search(search_spec) if search_spec is not None else None

  points: List[Dict[str, Any]] = [{}] if grid is None else grid
  if rand is not None:
    draws = _random_points(rand)
    points = [dict(p, **d) for p in points for d in draws]
  if grid is None and rand is None:
    points = []
  explicit = spec.get('runs', [])
  if not isinstance(explicit, list):
    raise SweepError(f"sweep 'runs' must be a list of override dicts, e.g. "
                     f"[{{'optimizer.lr': 1e-3}}]; got {explicit!r}.")
  points += [_check_overrides(f"sweep runs[{i}]", r) for i, r in enumerate(explicit)]
  if not points and search is None:
    raise SweepError(f"the sweep defines no runs: add 'grid', 'random', 'runs' or 'search' "
                     f'to {source}.')
  swept = list(dict.fromkeys([k for p in points for k in p] +
                             list(search.params if search else [])))
  short = short_names(swept)
  sweep = Sweep(config=config, base=base, runs=[], swept=swept, short=short, search=search,
                pruner=check_pruner(spec.get('pruner')), metric=metric, source=source)
  seen = {}
  for i, own in enumerate(points):
    run = make_run(sweep, own)
    if run.name in seen:
      j = seen[run.name]
      raise SweepError(
          f'runs {j} and {i} of the sweep have the same name {run.name!r} (values '
          f'{points[j]} and {own}): remove the duplicate from the grid / runs.')
    seen[run.name] = i
    sweep.runs.append(run)
  return sweep


# --------------------------------------------------------------------------- the config
_CONFIGS: Dict[str, Any] = {}  # config argument -> its loaded ConfigDict (copied per run)


def _load_config(config_arg: str):
  """get_config(arg) of ``path[:arg]``, as main's --config loads it (a fresh copy)."""
  if config_arg not in _CONFIGS:
    path, _, arg = config_arg.partition(':')
    if not os.path.isfile(path):
      raise SweepError(f"sweep 'config': {path!r} does not exist (paths are relative to the "
                       f'directory you run the sweep from; run it from the repository root).')
    spec = importlib.util.spec_from_file_location(
        'sweep_config_' + re.sub(r'\W', '_', os.path.basename(path)[:-3]), path)
    module = importlib.util.module_from_spec(spec)
    try:
      spec.loader.exec_module(module)
      _CONFIGS[config_arg] = module.get_config(arg) if arg else module.get_config()
    except Exception as e:  # pylint: disable=broad-except
      raise SweepError(f"sweep 'config': {config_arg} failed to load: {e}") from None
  return copy.deepcopy(_CONFIGS[config_arg])  # keeps field references and their types


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


def resolve_run(sweep: Sweep, run: Run) -> None:
  """Checks a run's overrides against the config (field exists, value fits its type) and
  fills its effective ``values``. Raises SweepError naming the key."""
  cfg = _load_config(sweep.config)
  sweep.progress_bar_field = 'progress_bar' in cfg
  sweep.task = cfg.get('task', 'classification')
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


def resolve(sweep: Sweep) -> None:
  """resolve_run for every fixed run, and the search space checked with its end points
  (a field that does not exist or a value of the wrong type stops the sweep here)."""
  for run in sweep.runs:
    resolve_run(sweep, run)
  if sweep.search is not None:
    for pick in (0, -1):
      own = {k: (d[1][pick] if d[0] == 'choice' else d[1 if pick == 0 else 2])
             for k, d in sweep.search.params.items()}
      resolve_run(sweep, make_run(sweep, own))
  if not sweep.runs and sweep.search is None:
    resolve_run(sweep, make_run(sweep, {}))


def primary_metric(sweep: Sweep, requested: Optional[str] = None) -> str:
  """The metric the study optimises: the first of --metric, else the file's, else the
  task's usual one (accuracy; AP for detection)."""
  names = metric_list(requested or sweep.metric)
  if names:
    return names[0]
  return 'AP' if sweep.task == 'detection' else 'accuracy'


def metric_list(requested: Optional[str]) -> List[str]:
  return [m.strip() for m in (requested or '').split(',') if m.strip()]


def lower_is_better(metric: str) -> bool:
  return any(w in metric.lower() for w in ('loss', 'error', 'err', 'time'))


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


def command(sweep: Sweep, run: Run, workdir: str, python: str = 'python',
            program: Optional[Sequence[str]] = None) -> List[str]:
  """The ``python -m swin_jax.main ...`` command of one run (program: another trainer
  command in place of ``python -m swin_jax.main``, --main)."""
  head = list(program) if program else [python, '-m', 'swin_jax.main']
  return [*head, f'--config={sweep.config}', f'--workdir={workdir}',
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


def read_json(path: str) -> Dict[str, Any]:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return {}


def write_json(path: str, obj: Dict[str, Any]):
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, default=str)
  os.replace(tmp, path)


def _same(a: Any, b: Any) -> bool:
  a, b = json.loads(json.dumps(a)), json.loads(json.dumps(b))  # tuples -> lists, as saved
  if isinstance(a, (int, float)) and isinstance(b, (int, float)):
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
  if isinstance(a, list) and isinstance(b, list):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  return a == b


def config_matches(workdir: str, sweep: Sweep, run: Run) -> bool:
  """Whether the workdir's config.json (and sweep_run.json) hold this run's settings."""
  info = read_json(os.path.join(workdir, RUN_FILE))
  if info and info.get('config') != sweep.config:
    return False
  saved = read_json(os.path.join(workdir, 'config.json'))
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
  """From the workdir alone: 'done', 'pruned', 'failed', 'submitted', 'changed' (finished with other
  settings: trains again), 'incomplete' (started, not finished) or 'pending' (not started)."""
  if not os.path.isdir(workdir):
    return 'pending'
  records = read_metrics(workdir)
  final = final_record(records)
  if final and config_matches(workdir, sweep, run):
    return 'done'
  info = read_json(os.path.join(workdir, RUN_FILE))
  if info.get('pruned') and not final:
    return 'pruned'
  if info.get('returncode') not in (None, 0) and not info.get('interrupted'):
    return 'failed'
  if final:
    return 'changed'
  if info.get('submitted') and not records:
    return 'submitted'
  return 'incomplete' if records or info else 'pending'
