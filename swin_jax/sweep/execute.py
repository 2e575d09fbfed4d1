"""Running a sweep's trials: N at once on this machine, each ``python -m swin_jax.main`` in
its own process, workdir and devices; pruning from the eval records it logs.

One process (the worker) owns the study connection and watches its trials: every POLL_S it
reads each running trial's ``metrics.jsonl``, reports each new eval record's metric to
Optuna and, when the pruner says so, sends the run SIGTERM, on which the trainer saves a
checkpoint and exits (``swin_jax/train/loop.py``): a pruned run can be taken up again
(``--unprune``) from that checkpoint. Runs are started in their own session (a Ctrl-C
reaches the worker, which stops them cleanly) and get SIGTERM if the worker dies
(PR_SET_PDEATHSIG), so a killed worker leaves no orphan training into a workdir.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import glob
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any, Dict, List, Optional, Sequence, Set, TextIO

import optuna
from optuna.trial import TrialState

from swin_jax.sweep import study as st
from swin_jax.sweep.spec import (RUN_FILE, Run, Sweep, SweepError, command, config_matches,
                                 final_record, make_run, override_args, read_json,
                                 read_metrics, resolve_run, run_status, slug, write_json)

POLL_S = 0.5
MAX_REPEATS = 20  # draws in a row of values other trials had: the space is used up
PLACEHOLDERS = ('cmd', 'config', 'overrides', 'name', 'slug', 'workdir', 'index')  # --launcher
_TPU_BOUNDS = {1: '1,1,1', 2: '1,2,1', 4: '2,2,1', 8: '2,4,1'}  # chips of one process


# ------------------------------------------------------------------------------ devices
@dataclasses.dataclass
class Slot:
  """Where one of the N concurrent runs goes: its environment and CPU cores."""
  label: str
  env: Dict[str, str]
  cpus: Optional[List[int]] = None


def detect_devices() -> tuple:
  """(kind, ids): 'gpu' with CUDA_VISIBLE_DEVICES or nvidia-smi's GPUs, 'tpu' with the
  chips of /dev/accel* or /dev/vfio/N (TPU VMs), else 'cpu' with this process's cores.
  Nothing imports jax here: the worker must not take the accelerators its runs need."""
  visible = os.environ.get('CUDA_VISIBLE_DEVICES')
  if visible:
    return 'gpu', [d for d in visible.split(',') if d.strip()]
  if visible is None and shutil.which('nvidia-smi'):
    try:
      out = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True, timeout=20,
                           check=False).stdout
      gpus = [l for l in out.splitlines() if l.startswith('GPU ')]
      if gpus:
        return 'gpu', [str(i) for i in range(len(gpus))]
    except (OSError, subprocess.TimeoutExpired):
      pass
  chips = sorted(glob.glob('/dev/accel[0-9]*')) or sorted(
      p for p in glob.glob('/dev/vfio/[0-9]*'))
  if chips:
    return 'tpu', [str(i) for i in range(len(chips))]
  return 'cpu', [str(c) for c in sorted(os.sched_getaffinity(0))]


def device_slots(parallel: int, kind: str = 'auto') -> List[Slot]:
  """Splits this machine's devices evenly over `parallel` runs (--parallel, --devices).

  GPU: CUDA_VISIBLE_DEVICES; TPU: TPU_VISIBLE_CHIPS with the bounds and ports that make
  each process a one-host slice of its own chips; CPU: the cores (sched_setaffinity, which
  the input pipeline's thread count follows) and OMP / TF thread counts. With parallel=1 a
  run sees the machine as it is."""
  if parallel < 1:
    raise SweepError(f'--parallel={parallel}: give the number of runs at once (>= 1).')
  if parallel == 1:
    return [Slot('all devices', {})]
  found, ids = detect_devices()
  kind = found if kind == 'auto' else kind
  if kind != found:
    raise SweepError(f'--devices={kind}: this machine shows {found} devices only; use '
                     f'--devices=auto or {found}.')
  if len(ids) < parallel:
    raise SweepError(f'--parallel={parallel}: this machine has {len(ids)} {kind.upper()} '
                     f'device(s) ({",".join(ids)}); give --parallel={len(ids)} or fewer.')
  per = len(ids) // parallel
  slots = []
  for i in range(parallel):
    mine = ids[i * per:(i + 1) * per]
    joined = ','.join(mine)
    if kind == 'gpu':
      slots.append(Slot(f'GPU {joined}', {'CUDA_VISIBLE_DEVICES': joined}))
    elif kind == 'tpu':
      if per not in _TPU_BOUNDS:
        raise SweepError(f'--parallel={parallel}: {per} TPU chips per run; give a '
                         f'--parallel that leaves 1, 2, 4 or 8 chips to each run.')
      port = 8476 + i
      slots.append(Slot(f'TPU chips {joined}', {
          'TPU_VISIBLE_CHIPS': joined, 'TPU_CHIPS_PER_PROCESS_BOUNDS': _TPU_BOUNDS[per],
          'TPU_PROCESS_BOUNDS': '1,1,1', 'TPU_PROCESS_PORT': str(port),
          'TPU_PROCESS_ADDRESSES': f'localhost:{port}', 'CLOUD_TPU_TASK_ID': '0',
          'ALLOW_MULTIPLE_LIBTPU_LOAD': '1'}))
    else:
      n = str(len(mine))
      slots.append(Slot(f'CPU {joined}', {'OMP_NUM_THREADS': n, 'TF_NUM_INTRAOP_THREADS': n,
                                          'TF_NUM_INTEROP_THREADS': '1'},
                        cpus=[int(c) for c in mine]))
  return slots


_libc = ctypes.CDLL(ctypes.util.find_library('c') or None, use_errno=True) \
    if sys.platform.startswith('linux') else None
_PR_SET_PDEATHSIG = 1


def _child_setup(cpus: Optional[List[int]]):
  """Runs in the child between fork and exec: only syscalls, no Python-level locks."""

  def setup():
    if _libc is not None:
      _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)  # the worker dies: checkpoint, exit
    if cpus:
      os.sched_setaffinity(0, cpus)

  return setup


# -------------------------------------------------------------------------------- jobs
@dataclasses.dataclass
class Job:
  """A running trial: its Optuna trial, run, process and what was reported of it."""
  trial: optuna.Trial
  run: Run
  workdir: str
  slot: int
  proc: subprocess.Popen
  info: Dict[str, Any]
  started: float
  no_prune: bool = False
  reported: Set[int] = dataclasses.field(default_factory=set)
  pruned_at: Optional[int] = None
  tail: deque = dataclasses.field(default_factory=lambda: deque(maxlen=30))
  reader: Optional[threading.Thread] = None


def _pump(proc: subprocess.Popen, log: TextIO, tail: deque, echo: Optional[str]):
  """Copies a run's output to its log.txt (and the console when verbose)."""
  for line in proc.stdout:
    log.write(line)
    log.flush()
    tail.append(line.rstrip())
    if echo is not None:
      print(f'    {echo}| {line}', end='', flush=True)
  log.close()


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f'{seconds // 60} min {seconds % 60:02d} s' if seconds >= 60 else f'{seconds} s'


def result_line(final: Dict[str, Any], metrics: Sequence[str]) -> str:
  return ', '.join(f'{m}={final[m]:.4f}' for m in metrics
                   if isinstance(final.get(m), (int, float))) or 'no metrics'


class Worker:
  """Runs a sweep's trials against its study, `parallel` at once (see the module doc)."""

  def __init__(self, sweep: Sweep, sweep_dir: str, study: optuna.Study, metric: str, *,
               slots: List[Slot], program: Optional[Sequence[str]] = None,
               verbose: bool = False, metrics: Sequence[str] = (),
               unprune: Sequence[str] = (), out=None, poll_s: float = POLL_S):
    self.sweep, self.dir, self.study, self.metric = sweep, sweep_dir, study, metric
    self.slots, self.program, self.verbose = slots, program, verbose
    self.metrics = list(metrics) or [metric]
    self.unprune, self.poll_s = set(unprune), poll_s
    self.out = out or sys.stdout
    self.dists = st.distributions(sweep)
    self.jobs: Dict[int, Job] = {}  # slot -> job
    self.stop_requested = False
    self.statuses: Dict[str, str] = {}
    self._last_beat = 0.0
    self.repeats = 0  # draws in a row that repeated another worker's trial

  def say(self, s: str):
    print(s, file=self.out, flush=True)

  def workdir(self, run: Run) -> str:
    return os.path.join(self.dir, run.name)

  # ------------------------------------------------------------------ what is to do
  def todo(self) -> List[tuple]:
    """(run, origin) of the fixed runs and failed / interrupted / un-pruned trials to run
    (again), in file then trial order. Finished and pruned ones are skipped."""
    latest = st.latest_trials(self.study)
    items, names = [], set()
    unknown = self.unprune - set(latest) - {'all'}
    if unknown:
      raise SweepError(f'--unprune: no trial named {sorted(unknown)[0]!r} in the study; '
                       f'give names of pruned runs from the summary, or all.')
    runs = list(self.sweep.runs) + [r for r in (st.run_of(self.sweep, t) for t in
                                                latest.values()) if r is not None]
    for run in runs:
      if run.name in names:
        continue
      names.add(run.name)
      t = latest.get(run.name)
      done = run_status(self.workdir(run), self.sweep, run) == 'done'
      if t is None:  # a fixed run no trial has taken yet
        items.append((run, 'plan'))
        continue
      if t.state == TrialState.COMPLETE and done:
        self.statuses[run.name] = 'done'
      elif t.state == TrialState.PRUNED:
        if run.name in self.unprune or 'all' in self.unprune:
          items.append((run, 'unprune'))
        else:
          self.statuses[run.name] = 'pruned'
      elif t.state == TrialState.RUNNING:
        self.statuses[run.name] = 'running'  # a worker elsewhere has it
      elif t.state == TrialState.WAITING:  # queued by a worker that died before taking it
        items.append((run, 'waiting'))
      else:
        items.append((run, 'retry'))
    return items

  def waiting(self) -> List[tuple]:
    """(run, 'waiting') of the queued trials no worker has taken (a worker that queued one
    and took another's, or died before taking it)."""
    out = []
    for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
      run = st.run_of(self.sweep, t)
      if run is not None:
        out.append((run, 'waiting'))
    return out

  def budget(self) -> int:
    """Trials the sampler may still draw (its draws so far count, whatever their state)."""
    if self.sweep.search is None:
      return 0
    return self.sweep.search.num_trials - st.counts(self.study)[0]

  # ------------------------------------------------------------------------ claiming
  def claim(self, run: Optional[Run], origin: str) -> Optional[tuple]:
    """A new trial for a fixed / retried run (through Optuna's queue) or, run None, one
    drawn by the sampler. Returns (trial, run, origin) or None (taken elsewhere)."""
    if run is not None:
      t = st.latest_trials(self.study).get(run.name)
      if t is not None and (t.state == TrialState.RUNNING or (
          t.state == TrialState.COMPLETE and origin != 'retry' and
          run_status(self.workdir(run), self.sweep, run) == 'done') or (
              t.state == TrialState.PRUNED and origin != 'unprune')):
        return None  # another worker took it since todo()
      if t is None or t.state != TrialState.WAITING:  # else it is in the queue already
        # 'after': the trial it follows up; a second trial of the same run after it is the
        # same work (two workers that queued it at the same instant).
        self.study.enqueue_trial(st.queue_params(run.own, self.dists),
                                 user_attrs={'name': run.name, 'own': run.own,
                                             'origin': origin,
                                             'after': -1 if t is None else t.number})
    trial = self.study.ask()
    attrs = trial.user_attrs
    if 'name' in attrs:  # from the queue (ours, or one another worker put there)
      got = st.run_of(self.sweep, trial)
      st.record_params(trial, got.own, self.dists)
      origin = attrs.get('origin', origin)
    elif self.sweep.search is None:  # the waiting trial was taken elsewhere meanwhile
      trial.set_user_attr('duplicate_of', -1)
      self.study.tell(trial, state=TrialState.FAIL)
      return None
    else:  # drawn by the sampler
      got = make_run(self.sweep, st.draw(trial, self.sweep.search))
      origin = 'sampler'
      # 'origin' before 'name': st.draws_before counts a trial as a draw by its origin, or
      # while it has no name yet; named first, another worker could see a draw that is
      # neither for a moment and draw one trial past num_trials (seen once: 9 of 8).
      trial.set_user_attr('origin', origin)
      trial.set_user_attr('name', got.name)
      trial.set_user_attr('own', got.own)
      if st.draws_before(self.study, trial.number) >= self.sweep.search.num_trials:
        trial.set_user_attr('duplicate_of', -1)  # workers that asked at once: budget spent
        self.study.tell(trial, state=TrialState.FAIL)
        return None
      prev = st.previous(self.study, got.name, trial.number)
      if prev is not None and prev.state != TrialState.FAIL and (
          prev.user_attrs.get('host'), prev.user_attrs.get('pid')) != (st.HOST, os.getpid()):
        # Another worker drew these values (workers seeded alike draw alike): step aside and
        # go another way. Our own repeat draws count (start() reuses the finished run).
        trial.set_user_attr('duplicate_of', prev.number)
        self.study.tell(trial, state=TrialState.FAIL)
        self.study.sampler.reseed_rng()
        self.say(f'[trial {trial.number}] {got.name}: drawn by trial {prev.number} already')
        self.repeats += 1
        if self.repeats == MAX_REPEATS:
          self.say(f'the sampler drew {MAX_REPEATS} values in a row that trials had already: '
                   f'the space looks exhausted; drawing no more here')
        return None
      self.repeats = 0
    trial.set_user_attr('host', st.HOST)
    trial.set_user_attr('pid', os.getpid())
    st.heartbeat(trial)
    # Two workers that took the same run at once: the lower trial number runs it; a queued
    # run that another trial since 'after' already ran or runs is not run again.
    after = attrs.get('after')
    for other in self.study.get_trials(deepcopy=False, states=(
        TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)):
      if other.number == trial.number or other.user_attrs.get('name') != got.name or (
          other.user_attrs.get('duplicate_of') is not None):
        continue
      if (other.state == TrialState.RUNNING and other.number < trial.number) or (
          after is not None and other.number > after and (
              other.state != TrialState.RUNNING or other.number < trial.number)):
        trial.set_user_attr('duplicate_of', other.number)
        self.study.tell(trial, state=TrialState.FAIL)
        if origin == 'sampler':  # workers seeded alike draw alike: this one goes its own way
          self.study.sampler.reseed_rng()
        self.say(f'[trial {trial.number}] {got.name}: trial {other.number} runs it already')
        return None
    return trial, got, origin

  # -------------------------------------------------------------------------- running
  def start(self, slot: int, trial: optuna.Trial, run: Run, origin: str) -> None:
    wd = self.workdir(run)
    tag = f'[trial {trial.number}] {run.name}'
    resolve_run(self.sweep, run)
    if run_status(wd, self.sweep, run) == 'done':  # finished before (an earlier study)
      self._report_all(trial, read_metrics(wd), set())
      self._tell_done(trial, run, wd, tag, skipped=True)
      return
    if origin == 'sampler':  # drawn again with the values of a pruned trial: pruned too
      before = st.previous(self.study, run.name, trial.number)
      if before is not None and before.state == TrialState.PRUNED:
        for step, v in sorted(before.intermediate_values.items()):
          trial.report(v, step)
        self.study.tell(trial, state=TrialState.PRUNED)
        self.statuses[run.name] = 'pruned'
        self.say(f'{tag}: the values of pruned trial {before.number}: pruned too')
        return
    cmd = command(self.sweep, run, wd, python=sys.executable, program=self.program)
    prior = read_json(os.path.join(wd, RUN_FILE))
    info = {'name': run.name, 'config': self.sweep.config, 'overrides': run.overrides,
            'command': shlex.join(cmd), 'started': time.time(), 'trial': trial.number,
            'study': self.study.study_name, 'origin': origin}
    os.makedirs(wd, exist_ok=True)
    write_json(os.path.join(wd, RUN_FILE), info)
    log = open(os.path.join(wd, 'log.txt'), 'a')
    log.write(f'\n=== {time.strftime("%Y-%m-%d %H:%M:%S")} trial {trial.number} '
              f'{shlex.join(cmd)}\n')
    log.flush()
    env = dict(os.environ, **self.slots[slot].env)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, errors='replace', env=env, start_new_session=True,
                            preexec_fn=_child_setup(self.slots[slot].cpus))
    job = Job(trial=trial, run=run, workdir=wd, slot=slot, proc=proc, info=info,
              started=time.time(), no_prune=origin == 'unprune' or bool(prior.get('unpruned')))
    if origin == 'unprune':
      info['unpruned'] = True  # its later trials (a retry after a kill) are not pruned either
      write_json(os.path.join(wd, RUN_FILE), info)
    job.reader = threading.Thread(target=_pump, daemon=True, args=(
        proc, log, job.tail, run.name if self.verbose else None))
    job.reader.start()
    self.jobs[slot] = job
    where = f' on {self.slots[slot].label}' if len(self.slots) > 1 else ''
    verb = {'retry': 'resuming', 'unprune': 'un-pruned, resuming'}.get(origin, 'running')
    if verb == 'running' and os.path.exists(os.path.join(wd, 'metrics.jsonl')):
      verb = 'resuming'
    self.say(f'{tag}: {verb}{where} (log: {os.path.join(wd, "log.txt")})')

  def _report_all(self, trial: optuna.Trial, records, reported: Set[int],
                  check_prune: bool = False) -> Optional[tuple]:
    """Reports the eval records not reported yet, in step order; with check_prune, stops at
    the first the pruner prunes on and returns its (step, value)."""
    for r in records:
      if r.get('split') != 'eval' or 'train_time_s' in r or r.get('step') in reported:
        continue
      v = st.value_of(r, self.metric)
      if v is None:
        continue
      trial.report(v, r['step'])
      reported.add(r['step'])
      if check_prune and trial.should_prune():
        return r['step'], v
    return None

  def watch(self, job: Job) -> None:
    check = not job.no_prune and job.pruned_at is None
    hit = self._report_all(job.trial, read_metrics(job.workdir), job.reported, check)
    if hit is not None:
      step, v = hit
      job.pruned_at = step
      self.say(f'[trial {job.trial.number}] {job.run.name}: pruned at step {step} '
               f'({self.metric}={v:.4f}); stopping it after a checkpoint')
      job.proc.send_signal(signal.SIGTERM)

  def _tell_done(self, trial, run, wd, tag, skipped=False, took=''):
    final = final_record(read_metrics(wd)) or {}
    v = st.value_of(final, self.metric)
    if v is None:
      trial.set_user_attr('error', f'no {self.metric!r} in the final eval record')
      self.study.tell(trial, state=TrialState.FAIL)
      self.statuses[run.name] = 'failed'
      self.say(f'{tag}: FAILED: its final eval record has no {self.metric!r} (has '
               f'{", ".join(k for k in final if k not in ("step", "split", "time"))}): '
               f'give --metric=NAME')
      return
    self.study.tell(trial, v)
    self.statuses[run.name] = 'done'
    what = 'done, skipped' if skipped else f'done in {took}'
    self.say(f'{tag}: {what} ({result_line(final, self.metrics)})')

  def finish(self, job: Job) -> None:
    rc = job.proc.wait()
    if job.reader is not None:
      job.reader.join(timeout=10)
    if job.pruned_at is None:
      self._report_all(job.trial, read_metrics(job.workdir), job.reported)
    tag = f'[trial {job.trial.number}] {job.run.name}'
    took = _duration(time.time() - job.started)
    final = final_record(read_metrics(job.workdir))
    lines = [l for l in job.tail if l.strip()]
    errors = [l for l in lines if l.startswith('error:')]
    err = errors[-1] if errors else (lines[-1] if lines and rc else '')
    info = dict(job.info, returncode=rc, error=err, finished=time.time())
    if final and config_matches(job.workdir, self.sweep, job.run):
      info.pop('pruned', None)
      self._tell_done(job.trial, job.run, job.workdir, tag, took=took)
    elif job.pruned_at is not None:
      info.update(pruned=True, pruned_step=job.pruned_at, returncode=rc)
      job.trial.set_user_attr('pruned_step', job.pruned_at)
      self.study.tell(job.trial, state=TrialState.PRUNED)
      self.statuses[job.run.name] = 'pruned'
      self.say(f'{tag}: pruned, stopped after {took} (resume it with '
               f'--unprune={job.run.name})')
    elif self.stop_requested:
      info['interrupted'] = True
      job.trial.set_user_attr('outcome', 'interrupted')
      self.study.tell(job.trial, state=TrialState.FAIL)
      self.statuses[job.run.name] = 'incomplete'
      self.say(f'{tag}: stopped after {took}; run the same command to resume.')
    else:
      why = f'killed by signal {-rc}' if rc < 0 else f'exit {rc}'
      job.trial.set_user_attr('outcome', 'failed')
      job.trial.set_user_attr('error', err or why)
      self.study.tell(job.trial, state=TrialState.FAIL)
      self.statuses[job.run.name] = 'failed'
      self.say(f'{tag}: FAILED ({why}) after {took}: {err or "no error line"}; see '
               f'{os.path.join(job.workdir, "log.txt")}. Going on.')
    write_json(os.path.join(job.workdir, RUN_FILE), info)

  def _heartbeat(self):
    if time.time() - self._last_beat >= st.HEARTBEAT_S / 2:
      for job in self.jobs.values():
        st.heartbeat(job.trial)
      self._last_beat = time.time()

  def request_stop(self, *unused):
    """SIGTERM / Ctrl-C to the worker: each run gets SIGTERM (checkpoints), none starts."""
    self.stop_requested = True
    for job in self.jobs.values():
      if job.proc.poll() is None:
        job.proc.send_signal(signal.SIGTERM)

  def run(self) -> Dict[str, str]:
    """Runs until nothing is left to do (or a stop); returns run name -> status."""
    dead = st.fail_dead_trials(self.study)
    if dead:
      self.say(f'trial(s) {", ".join(map(str, dead))} had lost their worker: marked failed, '
               f'to run again')
    queue = self.todo()
    _, states = st.counts(self.study)
    left = self.budget()
    self.say(f'sweep {self.sweep.source}: study {self.study.study_name!r}, '
             f'{sum(states.values())} trial(s) so far' +
             (f' ({", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))})'
              if states else '') +
             f'; to do here: {len(queue)} run(s)' +
             (f' + {max(left, 0)} of {self.sweep.search.num_trials} '
              f'{self.sweep.search.sampler} trial(s)' if self.sweep.search else '') +
             f'; {len(self.slots)} at once')
    old = None
    try:
      old = signal.signal(signal.SIGTERM, self.request_stop)
    except ValueError:  # not the main thread
      pass
    try:
      while True:
        for slot, job in list(self.jobs.items()):
          self.watch(job)
          if job.proc.poll() is not None:
            del self.jobs[slot]
            self.finish(job)
        self._heartbeat()
        if not self.stop_requested:
          for slot in range(len(self.slots)):
            if slot in self.jobs:
              continue
            got = None
            if not queue and self.budget() <= 0:  # runs queued by other workers, not taken
              queue = self.waiting()
            while got is None and queue:
              got = self.claim(*queue.pop(0))
            if got is None and self.budget() > 0 and self.repeats < MAX_REPEATS:
              got = self.claim(None, 'sampler')
            if got is None:
              break
            self.start(slot, *got)
        if not self.jobs and (self.stop_requested or (not queue and (
            self.budget() <= 0 or self.repeats >= MAX_REPEATS))):
          break
        time.sleep(self.poll_s)
    except KeyboardInterrupt:
      self.request_stop()
      for job in list(self.jobs.values()):
        job.proc.wait()
        self.finish(job)
      raise
    finally:
      if old is not None:
        signal.signal(signal.SIGTERM, old)
    return self.statuses


# -------------------------------------------------------------- dry run and launcher
def plan_only(sweep: Sweep, sweep_dir: str, *, dry_run: bool, launcher: str,
              program: Optional[Sequence[str]] = None, out=None) -> Dict[str, str]:
  """--dry-run (print the fixed runs still to do as a script) or --launcher (submit each
  fixed run as a job, once; the sweep does not wait). No study: a job launcher decides
  where and when each run trains."""
  out = out or sys.stdout
  say = lambda s: print(s, file=out, flush=True)
  n, statuses = len(sweep.runs), {}
  before = {r.name: run_status(os.path.join(sweep_dir, r.name), sweep, r) for r in sweep.runs}
  todo = sum(s not in ('done', 'pruned') for s in before.values())
  prefix = '# ' if dry_run else ''
  say(f'{prefix}sweep {sweep.source}: {n} fixed runs in {sweep_dir} ({n - todo} finished, '
      f'{todo} to {"run" if dry_run else "submit"})')
  if sweep.search is not None and dry_run:
    say(f'# and {sweep.search.num_trials} trial(s) drawn by the {sweep.search.sampler} '
        f'sampler from {", ".join(sweep.search.params)} (each depends on the results before '
        f'it, so they are not listed)')
  for i, run in enumerate(sweep.runs, 1):
    wd = os.path.join(sweep_dir, run.name)
    tag, status = f'[{i}/{n}] {run.name}', before[run.name]
    statuses[run.name] = status
    if status in ('done', 'pruned'):
      final = final_record(read_metrics(wd)) or {}
      say(f'{prefix}{tag}: {status}, skipped' + (f' ({result_line(final, ["accuracy", "loss"])})'
                                                 if final else ''))
      continue
    cmd = command(sweep, run, wd, program=program)
    if dry_run:
      say(f'# {tag}: {status}')
      say(shlex.join(cmd))
      continue
    info = read_json(os.path.join(wd, RUN_FILE))
    if info.get('submitted') and status in ('submitted', 'incomplete'):
      say(f'{tag}: {status}, submitted before: not submitted again (it may still be '
          f'running; delete {os.path.join(wd, RUN_FILE)} to submit it anew)')
      continue
    os.makedirs(wd, exist_ok=True)
    line = launcher.format(cmd=shlex.quote(shlex.join(cmd)), name=run.name, workdir=wd,
                           index=i, config=shlex.quote(sweep.config), slug=slug(run.name),
                           overrides=shlex.join(override_args(sweep, run)))
    rc = subprocess.run(line, shell=True, check=False).returncode
    write_json(os.path.join(wd, RUN_FILE), {
        'name': run.name, 'config': sweep.config, 'overrides': run.overrides,
        'command': shlex.join(cmd), 'started': time.time(), 'submitted': line,
        'returncode': rc or None})
    say(f'{tag}: submitted' if rc == 0 else f'{tag}: launcher FAILED (exit {rc}): {line}')
    statuses[run.name] = 'submitted' if rc == 0 else 'failed'
  return statuses
