"""The training loop shared by every task: resume, train, log, checkpoint, evaluate.

Resume is automatic: if ``<workdir>/checkpoints`` holds a step, training continues from it
with the same data order and randomness as an uninterrupted run (the input pipeline is a
pure function of (seed, step) and the step rng is fold_in(seed, step)).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import threading
import time
from typing import Any, Dict, Optional, Sequence

import flax
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from swin_jax.data import input_pipeline
from swin_jax.models.build import model_from_config, model_overrides, trainable_from_config
from swin_jax.train import checkpointing, optimizers, sharding as shd, steps as steps_lib
from swin_jax.train import throughput, validate, workdir as workdir_lib
from swin_jax.train.metric_writer import MetricWriter  # loop.MetricWriter, as before
from swin_jax.train.tasks import task_from_config

log = logging.getLogger('swin_jax')



def summarize_paths(paths: Sequence[str], depth: int = 1) -> str:
  """The modules named by the first ``depth`` keys of each path, in order, with counts.

  E.g. paths ``['transformer']['encoder']['layers_0']['norm1']['bias']``, ... ->
  ``transformer (96 arrays), class_embed (2 arrays)``.
  """
  counts: Dict[str, int] = {}
  for path in paths:
    keys = re.findall(r"\['([^']*)'\]|\[(\d+)\]", path)
    name = '/'.join(a or b for a, b in keys[:depth]) or path
    counts[name] = counts.get(name, 0) + 1
  return ', '.join(f'{k} ({n} array{"s" * (n != 1)})' for k, n in counts.items()) or 'none'


class NonFiniteLossError(FloatingPointError):
  pass


def save_config(config, workdir: str):
  """Writes the resolved config to <workdir>/config.json; a different old one is kept aside.

  workdir may be local or remote (gs://), through checkpointing.as_path."""
  path = checkpointing.as_path(os.path.join(workdir, 'config.json'))
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if path.exists():
    if path.read_text() == text:
      return
    path.rename(checkpointing.as_path(
        os.path.join(workdir, f'config.{time.strftime("%Y%m%d-%H%M%S")}.json')))
  path.write_text(text)


class _Preemption:
  """Sets a flag on SIGTERM (TPU VM preemption) so the loop saves and exits cleanly."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    # Several processes: JAX's own preemption notifier takes SIGTERM (_should_stop).
    if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    self.requested = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _should_stop(step: int, preempt: _Preemption) -> bool:
  """Whether to save and stop after ``step``. One process: on its own SIGTERM. Several
  (a TPU pod): only when every host agrees on the step, through JAX's preemption sync
  (jax.distributed's coordination service spreads the notice and picks the first step all
  hosts can reach), so no host waits in a save the others never start."""
  if jax.process_count() > 1:
    try:
      return bool(multihost_utils.reached_preemption_sync_point(step))
    except RuntimeError:  # preemption service unavailable: rely on periodic checkpoints
      return False
  return preempt.requested


class Trainer:
  """Builds model, data, optimizer and state from a config; train() and evaluate()."""

  def __init__(self, config, workdir: str):
    shd.maybe_initialize_distributed(config)
    validate.check_config(config)  # every field checkable without data or model, up front
    self.config = config
    self.workdir = checkpointing.resolve_path(workdir)  # local: absolute; gs://: as is
    self.is_main = jax.process_index() == 0
    try:
      checkpointing.makedirs(self.workdir)
    except OSError as e:
      raise workdir_lib.not_writable(self.workdir, e) from e
    self.model = model_from_config(config)
    self.model_overrides = model_overrides(config)
    self.task = task_from_config(config)
    self.mesh = shd.create_mesh()
    shd.check_process_rows(self.mesh, config.batch_size)  # what each host's pipeline reads
    if getattr(self.task, 'mixup', None) and (config.batch_size // jax.device_count()) % 2:
      raise ValueError(
          f'config.batch_size={config.batch_size} gives {config.batch_size // jax.device_count()}'
          f' examples per device; Mixup / CutMix (config.mixup) pair them within each device '
          f'and need an even number: use a multiple of {2 * jax.device_count()}.')
    self.num_train = input_pipeline.get_num_examples(config.input, config.input.train_split)
    validate.check_eval_input(config)  # eval_split / eval_resize now, not after training
    self.steps_per_epoch = max(self.num_train // config.batch_size, 1)
    self.total_steps = int(config.get('total_steps') or
                           math.ceil(config.num_epochs * self.steps_per_epoch))
    self.schedule = optimizers.make_schedule(config, self.total_steps, self.steps_per_epoch)
    self.tx = optimizers.make_optimizer(config, self.schedule, trainable_from_config(config))
    rng = jax.random.PRNGKey(config.seed)
    self.init_rng, self.dropout_rng = jax.random.split(rng)
    self.use_ema = bool(config.optimizer.get('ema_decay', 0.0))
    self._create = lambda: steps_lib.create_train_state(
        self.model, self.tx, self.init_rng, self.task.init_inputs(config), self.use_ema)
    self.abstract_state = jax.eval_shape(self._create)
    self.state_sharding = shd.state_shardings(self.abstract_state, self.mesh,
                                              config.get('sharding', {}).get('fsdp', False))
    self.meta = checkpointing.model_meta(config.model.name, self.abstract_state.params)
    ck = config.checkpoint
    try:
      self.ckpt = checkpointing.Checkpointer(self.workdir, keep=ck.keep,
                                             async_save=ck.get('async_save', True))
    except OSError as e:
      raise workdir_lib.not_writable(self.workdir, e) from e

  # ---------------------------------------------------------------- state
  def initial_state(self, set_aside_damaged: bool = True):
    """Latest intact checkpoint in the workdir if any (resume), else a fresh (or init_from)
    state. A damaged newer checkpoint is skipped with a warning and moved to
    <workdir>/checkpoints_damaged/ (checkpointing.Checkpointer.restore_latest);
    set_aside_damaged=False (evaluation, which only reads) leaves it in place."""
    if self.ckpt.latest_step() is not None:
      target = jax.tree.map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
          self.abstract_state, self.state_sharding)
      state, step = self.ckpt.restore_latest(target, self.meta, self.workdir,
                                             set_aside=set_aside_damaged)
      log.info('Resumed from %s at step %d.', self.ckpt.directory, step)
      return state
    state = jax.jit(self._create, out_shardings=self.state_sharding)()
    init_from = self.config.get('init_from')
    if not init_from and self.config.get('pretrain'):
      init_from = self.pretrain()
    if init_from:
      variables, skipped = checkpointing.load_variables_for_init(
          init_from, self.config.model.name,
          jax.device_get({'params': state.params, **state.model_state}),
          model_overrides=self.model_overrides, model=self.model)
      params, reset = optimizers.finetune_head(  # config.finetune.new_head / freeze='head'
          self.config, variables.pop('params'), jax.device_get(state.params), skipped)
      params = jax.device_put(params, self.state_sharding.params)
      model_state = jax.device_put(variables, self.state_sharding.model_state)
      state = state.replace(params=params, model_state=model_state, opt_state=jax.jit(
          self.tx.init, out_shardings=self.state_sharding.opt_state)(params))
      if self.use_ema:
        state = state.replace(ema_params=jax.tree.map(jnp.copy, params))
      log.info('Initialised weights from %s (kept fresh: %s).', init_from,
               summarize_paths(skipped + reset))
    return state

  def pretrain(self) -> str:
    """Runs ``config.pretrain`` (a whole config of its own, e.g. a classifier of the
    detector's backbone) in <workdir>/pretrain and returns that directory, which then
    initialises this run as ``config.init_from`` would. Resumes there if interrupted."""
    pre_dir = os.path.join(self.workdir, 'pretrain')
    log.info('config.pretrain: training %s in %s before this run starts.',
             self.config.pretrain.model.name, pre_dir)
    pre = self.config.pretrain.copy_and_resolve_references()
    with pre.unlocked():  # how to show progress is the caller's choice, not the recipe's
      pre.progress_bar = self.config.get('progress_bar', True)
    train_and_evaluate(pre, pre_dir, skip_finished=True)
    return pre_dir

  # ---------------------------------------------------------------- eval
  def evaluate(self, state, split: Optional[str] = None) -> Dict[str, float]:
    split = split or self.config.input.eval_split
    params = state.ema_params if state.ema_params is not None else state.params
    if not hasattr(self, '_eval_step'):
      self._eval_step = steps_lib.jit_eval_step(
          steps_lib.make_eval_step(self.model, self.task), self.state_sharding.params,
          self.state_sharding.model_state, self.mesh)
    evaluator = self.task.evaluator(self.config, split)
    for local in self.task.eval_iterator(self.config, split):
      out = jax.device_get(self._eval_step(params, state.model_state,
                                           shd.global_batch(local, self.mesh)))
      evaluator.add(out, local)
    try:
      return evaluator.result()
    except ValueError as e:
      raise ValueError(f'config.input.eval_split={split!r}: {e}') from None

  def eval_pictures(self, state, step: int, writer=None, outdir: Optional[str] = None) -> None:
    """The task's pictures of this evaluation (detection: a grid PNG in ``outdir``, by
    default <workdir>/predictions), also written to TensorBoard at ``step`` when a writer is
    given; drawn on process 0, none when the task has none. Every process calls it: params
    sharded over several processes (FSDP) are gathered first, a collective."""
    draw = getattr(self.task, 'eval_pictures', None)
    if draw is None or not self.config.get('num_prediction_images', 0):
      return
    try:
      state = state.replace(**shd.host_readable(dict(
          params=state.params, ema_params=state.ema_params, model_state=state.model_state),
          self.mesh))
      if not self.is_main:
        return
      grid = draw(self.config, state, step, self.workdir, outdir=outdir)
    except Exception as e:  # pylint: disable=broad-except
      # Pictures are for eyes: a failure to draw them must not end a long run.
      log.warning('Drawing the predictions of step %d failed (training goes on): %r', step, e)
      return
    if grid is not None and writer is not None:
      writer.write_image(step, 'eval/predictions', grid)

  # ---------------------------------------------------------------- train
  def jit_train_step(self):
    """The jitted, sharded train_step(state, global batch) -> (state, metrics)."""
    return steps_lib.jit_train_step(
        steps_lib.make_train_step(
            self.model, self.task, self.tx, self.schedule, base_rng=self.dropout_rng,
            grad_accum_steps=self.config.optimizer.get('grad_accum_steps', 1),
            ema_decay=self.config.optimizer.get('ema_decay', 0.0),
            gather_params=bool(self.config.get('sharding', {}).get('fsdp', False))),
        self.state_sharding, self.mesh)

  def train(self) -> Dict[str, Any]:
    config = self.config
    profile_steps = throughput.parse_profile_steps(config.get('profile_steps'))
    state = self.initial_state()  # checks a resumed checkpoint fits before writing anything
    if self.is_main:
      save_config(config, self.workdir)
    start = int(jax.device_get(state.step))
    train_step = self.jit_train_step()
    it = self.task.train_iterator(config, start)
    flops, peak = (throughput.mfu_inputs(self.model, self.abstract_state,
                                         self.task.init_inputs(config), config.model.get('dtype'))
                   if self.is_main else (None, None))
    meter = throughput.Meter(config.batch_size, jax.device_count(), flops, peak)
    profile = throughput.ProfileWindow(
        profile_steps, checkpointing.native_path(os.path.join(self.workdir, 'tensorboard')),
        start + 1, self.total_steps)
    writer = MetricWriter(self.workdir, self.is_main, resume_step=start,
                          flush_secs=config.get('metrics_flush_secs'))
    every_ckpt = config.checkpoint.every_steps
    every_eval = config.get('eval_every_steps', 0)
    every_log = config.get('log_every_steps', 10)
    history, pending, speed = [], None, {}
    eval_metrics: Dict[str, float] = {}
    show_bar = config.get('progress_bar', True)
    bar = tqdm(total=self.total_steps, initial=start, desc='train', dynamic_ncols=True,
               disable=not (self.is_main and show_bar))

    def consume(step, metrics):
      m = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not all(math.isfinite(m[k]) for k in ('loss', 'grad_norm', 'param_norm')):
        self.ckpt.wait()
        good = self.ckpt.latest_step()
        raise NonFiniteLossError(
            f'loss={m["loss"]} grad_norm={m["grad_norm"]} param_norm={m["param_norm"]} at step '
            f'{step}: training stopped. '
            f'The last good checkpoint (step {good}) is kept in {self.ckpt.directory}; the '
            f'failed step was not saved. Lower config.optimizer.lr or set '
            f'config.optimizer.clip_grad_norm, then run the same command to resume.')
      history.append(m)
      meter.step_done(step)
      bar.update(step - bar.n)
      bar.set_postfix(loss=f'{m["loss"]:.4f}', lr=f'{m["lr"]:.2e}', **speed)
      if step % every_log == 0 or step == self.total_steps:
        avg = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
        avg['epoch'] = step / self.steps_per_epoch
        avg.update(meter.fields())  # images/s, step time, input wait, MFU: throughput.py
        writer.write(step, 'train', avg)
        history.clear()
        if 'images_per_s' in avg:
          speed['img/s'] = f'{avg["images_per_s"]:,.0f}'
        if self.is_main and not show_bar:  # TPU launcher, sweeps: one line per log step
          print(throughput.console_line(step, self.total_steps, avg,
                                        meter.eta_s(step, self.total_steps)), flush=True)

    t0 = time.time()
    meter.start()
    try:
      with _Preemption() as preempt:
        for step in range(start + 1, self.total_steps + 1):
          profile.before_step(step)
          t_input = time.perf_counter()
          batch = shd.global_batch(next(it), self.mesh)
          meter.add_input_wait(time.perf_counter() - t_input)
          state, metrics = train_step(state, batch)
          profile.after_step(step, state, self.total_steps)
          if pending is not None:  # one step behind: the host never stalls the device
            consume(*pending)
          pending = (step, metrics)
          stop = _should_stop(step, preempt)
          if step % every_ckpt == 0 or step == self.total_steps or stop:
            consume(*pending)  # never save a non-finite state
            pending = None
            self.ckpt.save(step, state, self.meta, force=True)
            writer.flush()  # async: the log up to this checkpoint reaches a gs:// workdir
          if every_eval and step % every_eval == 0 and step != self.total_steps:
            t_eval = time.perf_counter()
            eval_metrics = self.evaluate(state)
            writer.write(step, 'eval', eval_metrics)
            self.eval_pictures(state, step, writer)
            meter.add_pause(time.perf_counter() - t_eval)  # not training time
          if stop:
            self.ckpt.wait()
            bar.close()
            log.warning('SIGTERM: saved step %d to %s and stopped; run the same command to '
                        'resume.', step, self.ckpt.directory)
            return {'step': step, 'preempted': True}
        if pending is not None:
          consume(*pending)
      _close(it)  # its read threads / workers stop before the final evaluation
      bar.close()
      train_time = time.time() - t0
      eval_metrics = self.evaluate(state)
      eval_metrics['train_time_s'] = train_time
      writer.write(self.total_steps, 'eval', eval_metrics)
      self.eval_pictures(state, self.total_steps, writer)
      if self.is_main:
        self.task.end_of_run(config, state, self.workdir)
      if self.is_main:
        print(f'step {self.total_steps}: ' + ', '.join(
            f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}'
            for k, v in eval_metrics.items()), flush=True)
      return dict(eval_metrics, step=self.total_steps)
    except BaseException:
      profile.close()
      writer.close(raise_errors=False)  # flushes; the error that stopped training is raised
      raise
    finally:
      _close(it)
      profile.close()
      bar.close()
      self.ckpt.wait()
      writer.close()  # flushes everything queued; raises a background write error


def _close(iterator) -> None:
  """Stops an input iterator's prefetch threads and worker processes (grain), if any."""
  close = getattr(iterator, 'close', None)
  if close is not None:
    close()


def train_and_evaluate(config, workdir: str, skip_finished: bool = False) -> Dict[str, Any]:
  """Trains (resuming from the workdir) and evaluates. skip_finished: a workdir whose run
  already reached its last step is left as it is ({'step': ..., 'skipped': True}).

  One run at a time per workdir: process 0 holds <workdir>/lock.json from before anything is
  written until this returns or raises (swin_jax.train.workdir); a second run started into
  the workdir meanwhile raises WorkdirLockedError, and a lock left by a killed run is taken
  over with a warning."""
  trainer = Trainer(config, workdir)
  lock = workdir_lib.WorkdirLock(trainer.workdir)
  try:
    lock.acquire()
    if skip_finished and (trainer.ckpt.latest_step() or 0) >= trainer.total_steps:
      return {'step': trainer.ckpt.latest_step(), 'skipped': True}
    return trainer.train()
  finally:
    trainer.ckpt.close()  # waits for the last save: the lock outlives every write
    lock.release()


def evaluate(config, workdir: str) -> Dict[str, float]:
  """Evaluates the workdir's latest checkpoint (or config.init_from) on the eval split.

  Reads only: no workdir lock (it may run beside a training run there, or on a read-only
  copy), and a damaged newest checkpoint is skipped with a warning but not moved."""
  trainer = Trainer(config, workdir)
  try:
    if trainer.ckpt.latest_step() is None and not config.get('init_from'):
      raise FileNotFoundError(
          f'--workdir={workdir} holds no checkpoint to evaluate: train there first, or set '
          f'--config.init_from=PATH to evaluate converted weights.')
    state = trainer.initial_state(set_aside_damaged=False)
    metrics = trainer.evaluate(state)
    print(json.dumps(metrics), flush=True)
    # The task's pictures (detection, config.num_prediction_images > 0) beside the training
    # run's, in their own folder: an evaluation may run beside the training in this workdir.
    # A read-only workdir only loses the pictures (a warning).
    trainer.eval_pictures(state, int(jax.device_get(state.step)), outdir=os.path.join(
        trainer.workdir, 'predictions', 'evaluate'))
    return metrics
  finally:
    trainer.ckpt.close()
