"""The Optuna side of a sweep: storage, study, sampler, pruner, and trial <-> run.

Every run of a sweep is one Optuna trial. A trial carries its run in user attributes
(``name``, ``own``: the run's own values, ``origin``: 'plan' for a fixed run of the file,
'sampler' for a drawn one, 'retry' / 'unprune' for a run taken up again) and, while it runs,
the machine and process that run it (``host``, ``pid``); ``after`` (a queued run: the
trial it follows up) and ``duplicate_of`` (a trial that stepped aside for another worker's,
left out of summaries and budgets) settle races between workers. Fixed runs enter the study
through Optuna's queue (``enqueue_trial``), so a worker on any machine pops each one once; drawn
trials come from ``study.ask()`` and the sampler. The study's params are the swept values
as Optuna distributions, so its own plots (history, importances) work on every sweep.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import math
import os
import socket
import time
import warnings
from typing import Any, Dict, List, Optional, Tuple

import optuna
from optuna.distributions import (BaseDistribution, CategoricalDistribution,
                                  FloatDistribution, IntDistribution)
from optuna.trial import FrozenTrial, TrialState

from swin_jax.procs import pid_alive
from swin_jax.sweep.spec import (Run, Search, Sweep, SweepError, lower_is_better, make_run,
                                 unknown)

# A worker records a heartbeat for each trial it runs; a RUNNING trial without one for
# GRACE_S (its machine died) is failed by the next worker that starts, which runs it again.
HEARTBEAT_S = 30
GRACE_S = 120

SAMPLERS = {'grid': 'GridSampler', 'random': 'RandomSampler', 'tpe': 'TPESampler',
            'cmaes': 'CmaEsSampler', 'gp': 'GPSampler', 'qmc': 'QMCSampler',
            'bruteforce': 'BruteForceSampler', 'nsgaii': 'NSGAIISampler'}
PRUNERS = {'none': 'NopPruner', 'median': 'MedianPruner', 'percentile': 'PercentilePruner',
           'successive_halving': 'SuccessiveHalvingPruner', 'asha': 'SuccessiveHalvingPruner',
           'hyperband': 'HyperbandPruner', 'threshold': 'ThresholdPruner',
           'wilcoxon': 'WilcoxonPruner'}
HOST = socket.gethostname()


def quiet() -> None:
  """Optuna's per-trial INFO lines and experimental-feature warnings off: the sweep prints
  its own line per run."""
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  warnings.filterwarnings('ignore', category=optuna.exceptions.ExperimentalWarning)
  warnings.filterwarnings('ignore', message='Fixed parameter')
  # The worker records the heartbeats itself (execute.Worker), not through Study.optimize.
  warnings.filterwarnings('ignore', message='Heartbeat of storage is supposed')


# ------------------------------------------------------------------- storage and study
def storage_url(arg: Optional[str], sweep_dir: str) -> str:
  """--storage: an RDB URL (postgresql://, mysql://, sqlite:///), or a file path (SQLite);
  default: <dir>/study.db."""
  if not arg:
    return 'sqlite:///' + os.path.abspath(os.path.join(sweep_dir, 'study.db'))
  if '://' not in arg:
    return 'sqlite:///' + os.path.abspath(arg)
  return arg


def _driver(url: str) -> str:
  """postgresql:// with psycopg2 (psycopg2-binary, the dev extra) when psycopg 3, which
  SQLAlchemy 2.1 picks for a bare postgresql://, is not installed."""
  if url.startswith('postgresql://') and importlib.util.find_spec('psycopg') is None and (
      importlib.util.find_spec('psycopg2') is not None):
    return 'postgresql+psycopg2://' + url[len('postgresql://'):]
  return url


def open_storage(url: str) -> optuna.storages.RDBStorage:
  """The study storage, its tables created on first use. Workers that start together on a
  fresh database race to create them (a unique-key error in PostgreSQL's catalog for all
  but one): the losers try again and find the tables made."""
  import sqlalchemy.exc  # pylint: disable=g-import-not-at-top  (optuna's dependency)
  url = _driver(url)
  engine = {'connect_args': {'timeout': 60}} if url.startswith('sqlite') else {
      'pool_pre_ping': True}
  for attempt in range(6):
    try:
      return optuna.storages.RDBStorage(url, engine_kwargs=engine,
                                        heartbeat_interval=HEARTBEAT_S,
                                        grace_period=GRACE_S)
    except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
      if attempt == 5:
        raise
      time.sleep(0.5 * (attempt + 1))
    except ImportError as e:
      raise SweepError(f'--storage={hide_password(url)}: the database driver is missing '
                       f'({e}); e.g. pip install psycopg2-binary for postgresql://.') from None
    except Exception as e:  # pylint: disable=broad-except  (sqlalchemy's connection errors)
      raise SweepError(f'--storage={hide_password(url)}: cannot open the study storage '
                       f'({type(e).__name__}: {str(e).splitlines()[0]}).') from None


def hide_password(url: str) -> str:
  head, sep, tail = url.partition('@')
  if not sep or '://' not in head:
    return url
  scheme, _, cred = head.partition('://')
  return f'{scheme}://{cred.split(":")[0]}:***@{tail}' if ':' in cred else url


def make_sampler(search: Optional[Search]) -> optuna.samplers.BaseSampler:
  """The sampler of the search (--sampler), by short name or optuna.samplers class name."""
  if search is None:  # fixed runs only: the queue decides, the sampler is never asked
    return optuna.samplers.RandomSampler(seed=0)
  cls_name = SAMPLERS.get(search.sampler.lower(), search.sampler)
  cls = getattr(optuna.samplers, cls_name, None)
  if not (isinstance(cls, type) and issubclass(cls, optuna.samplers.BaseSampler)):
    raise unknown("sweep search['sampler'] (--sampler)", search.sampler,
                  list(SAMPLERS) + [n for n in dir(optuna.samplers) if n.endswith('Sampler')
                                    and not n.startswith('Base')])
  args = dict(search.sampler_args)
  if cls is optuna.samplers.GridSampler:
    bad = [k for k, d in search.params.items() if d[0] != 'choice']
    if bad:
      raise SweepError(f"sweep search: the grid sampler takes lists of values only; "
                       f"{bad[0]!r} is {search.params[bad[0]]!r}: give it a list (or use "
                       f"--sampler=tpe / random).")
    args.setdefault('search_space', {k: [_encode(v) for v in d[1]]
                                     for k, d in search.params.items()})
  if 'seed' in _parameters(cls):
    args.setdefault('seed', search.seed)
  try:
    return cls(**args)
  except (TypeError, ValueError) as e:
    raise SweepError(f"sweep search['sampler_args']={search.sampler_args!r} do not fit "
                     f'{cls_name}: {e}') from None


def _parameters(cls) -> List[str]:
  return list(inspect.signature(cls).parameters)


def make_pruner(spec: Any) -> optuna.pruners.BasePruner:
  """None / 'none' / 'median' / {'name': 'hyperband', 'min_resource': 2, ...} -> pruner."""
  if spec is None:
    return optuna.pruners.NopPruner()
  args = dict(spec) if isinstance(spec, dict) else {'name': spec}
  name = args.pop('name')
  cls_name = PRUNERS.get(name.lower(), name)
  cls = getattr(optuna.pruners, cls_name, None)
  if not (isinstance(cls, type) and issubclass(cls, optuna.pruners.BasePruner)):
    raise unknown("sweep 'pruner' (--pruner)", name, list(PRUNERS))
  try:
    return cls(**args)
  except (TypeError, ValueError) as e:
    raise SweepError(f"sweep 'pruner': {spec!r} does not fit {cls_name}: {e}") from None


def open_study(sweep: Sweep, storage, study_name: str, metric: str) -> optuna.Study:
  """Creates the study or joins it (another machine may have made it a moment before)."""
  direction = 'minimize' if lower_is_better(metric) else 'maximize'
  study = optuna.create_study(storage=storage, study_name=study_name, direction=direction,
                              sampler=make_sampler(sweep.search),
                              pruner=make_pruner(sweep.pruner), load_if_exists=True)
  if study.direction.name.lower() != direction:
    raise SweepError(f'--study={study_name} was made to {study.direction.name.lower()}; '
                     f'--metric={metric} asks to {direction}: pick another --study or metric.')
  saved = study.user_attrs.get('metric')
  if saved is None:
    study.set_user_attr('metric', metric)
    study.set_user_attr('config', sweep.config)
  elif saved != metric:
    raise SweepError(f'--study={study_name} optimises {saved!r}, not {metric!r}: run with '
                     f'--metric={saved} or pick another --study.')
  return study


# --------------------------------------------------------------- values <-> parameters
def _encode(v: Any) -> Any:
  """A value as an Optuna categorical choice (None, bool, int, float, str): tuples as JSON."""
  return json.dumps(list(v)) if isinstance(v, (list, tuple)) else v


def _decode(v: Any, choices: List[Any]) -> Any:
  for c in choices:
    if _encode(c) == v:
      return c
  return v


def distributions(sweep: Sweep) -> Dict[str, BaseDistribution]:
  """Swept key -> the Optuna distribution its values are recorded under: the search's own,
  else one covering the fixed runs' values (numbers a range, anything else the choices)."""
  out: Dict[str, BaseDistribution] = {}
  for key in sweep.swept:
    if sweep.search is not None and key in sweep.search.params:
      kind, *a = sweep.search.params[key]
      out[key] = (CategoricalDistribution([_encode(v) for v in a[0]]) if kind == 'choice' else
                  IntDistribution(a[0], a[1]) if kind == 'randint' else
                  FloatDistribution(a[0], a[1], log=kind == 'loguniform'))
      continue
    values = [r.own[key] for r in sweep.runs if key in r.own]
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if values and len(nums) == len(values):
      if all(isinstance(v, int) for v in nums):
        out[key] = IntDistribution(min(nums), max(nums))
      else:
        out[key] = FloatDistribution(float(min(nums)), float(max(nums)))
    elif values:
      out[key] = CategoricalDistribution(list(dict.fromkeys(_encode(v) for v in values)))
  return out


def record_params(trial: optuna.Trial, own: Dict[str, Any],
                  dists: Dict[str, BaseDistribution]) -> None:
  """Records a fixed run's values as the trial's params (queued as fixed params). A value
  the study cannot take under that name (a choice added to the grid after the study began)
  is left out of the params; the run still gets it."""
  for key, value in own.items():
    dist = dists.get(key)
    if dist is None:
      continue
    try:
      if isinstance(dist, CategoricalDistribution):
        trial.suggest_categorical(key, dist.choices)
      elif isinstance(dist, IntDistribution):
        trial.suggest_int(key, dist.low, dist.high)
      else:
        trial.suggest_float(key, dist.low, dist.high, log=dist.log)
    except (ValueError, TypeError):
      pass


def draw(trial: optuna.Trial, search: Search) -> Dict[str, Any]:
  """The sampler's values for a new trial: key -> value, as the run gets them."""
  own = {}
  for key, (kind, *a) in search.params.items():
    if kind == 'choice':
      own[key] = _decode(trial.suggest_categorical(key, [_encode(v) for v in a[0]]), a[0])
    elif kind == 'randint':
      own[key] = trial.suggest_int(key, a[0], a[1])
    else:
      own[key] = trial.suggest_float(key, a[0], a[1], log=kind == 'loguniform')
  return own


def queue_params(own: Dict[str, Any], dists: Dict[str, BaseDistribution]) -> Dict[str, Any]:
  """The fixed params to enqueue a run with (only keys the study records)."""
  return {k: _encode(v) for k, v in own.items() if k in dists}


# ------------------------------------------------------------------------- the trials
def run_of(sweep: Sweep, t) -> Optional[Run]:
  """The run a trial (frozen or live) stands for (None: a trial this sweep did not make)."""
  own = t.user_attrs.get('own')
  if own is None or 'name' not in t.user_attrs:
    return None
  run = make_run(sweep, {k: tuple(v) if isinstance(v, list) else v for k, v in own.items()})
  run.name = t.user_attrs['name']
  return run


def heartbeat(trial: optuna.Trial) -> None:
  """Tells the storage the worker of a running trial is alive (see fail_dead_trials)."""
  trial.storage.record_heartbeat(trial._trial_id)  # pylint: disable=protected-access


def latest_trials(study: optuna.Study) -> Dict[str, FrozenTrial]:
  """Run name -> its newest trial (duplicates that stepped aside left out), in order of
  each name's first trial."""
  out: Dict[str, FrozenTrial] = {}
  for t in study.get_trials(deepcopy=False):
    name = t.user_attrs.get('name')
    if name is None or t.user_attrs.get('duplicate_of') is not None:
      continue
    out[name] = t  # trials come in number order: the last one wins, the first sets order
  return out


def previous(study: optuna.Study, name: str, number: int) -> Optional[FrozenTrial]:
  """The newest trial of run `name` before trial `number` (duplicates left out)."""
  out = None
  for t in study.get_trials(deepcopy=False):
    if (t.number < number and t.user_attrs.get('name') == name and
        t.user_attrs.get('duplicate_of') is None):
      out = t
  return out


def fail_dead_trials(study: optuna.Study) -> List[int]:
  """Fails the RUNNING trials whose worker is gone: on this machine a dead pid (at once);
  elsewhere a heartbeat older than GRACE_S (Optuna's fail_stale_trials). Returns their
  numbers; the sweep then runs them again, resuming their workdirs."""
  failed = []
  for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
    pid = t.user_attrs.get('pid')
    if t.user_attrs.get('host') == HOST and isinstance(pid, int) and not pid_alive(pid):
      # Optuna has no public setter for another process's trial; its storage has one.
      storage, trial_id = study._storage, t._trial_id  # pylint: disable=protected-access
      storage.set_trial_user_attr(trial_id, 'outcome', 'interrupted')
      study.tell(t.number, state=TrialState.FAIL)
      failed.append(t.number)
  before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
  optuna.storages.fail_stale_trials(study)
  after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
  return failed + sorted(after - before)


def counts(study: optuna.Study) -> Tuple[int, Dict[str, int]]:
  """(trials the sampler drew so far, state name -> number of trials). A draw that another
  worker was running at that moment (duplicate_of) does not count: it trained nothing."""
  drawn, states = 0, {}
  for t in study.get_trials(deepcopy=False):
    drawn += (t.user_attrs.get('origin') == 'sampler' and
              t.user_attrs.get('duplicate_of') is None)
    states[t.state.name] = states.get(t.state.name, 0) + 1
  return drawn, states


def draws_before(study: optuna.Study, number: int) -> int:
  """The sampler's draws numbered below `number`, counting a trial another worker has just
  asked for and not labelled yet: the draw that takes the budget past num_trials can tell
  it is the one to step aside."""
  n = 0
  for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE,
                                                     TrialState.PRUNED, TrialState.FAIL)):
    if t.number >= number or t.user_attrs.get('duplicate_of') is not None:
      continue
    n += t.user_attrs.get('origin') == 'sampler' or (
        'name' not in t.user_attrs and t.state == TrialState.RUNNING)
  return n


def value_of(final: Dict[str, Any], metric: str) -> Optional[float]:
  v = final.get(metric)
  return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
