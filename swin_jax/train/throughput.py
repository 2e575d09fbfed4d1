"""How fast training runs: the speed fields of each train log record, the console line, the
MFU estimate, and jax.profiler traces of chosen steps (``config.profile_steps``).

Fields of a train record (over the steps since the previous log step):

* ``images_per_s``: global batch x steps / wall time; ``images_per_s_per_device`` the same
  over ``jax.device_count()``;
* ``step_time_s``: wall time per step;
* ``input_wait_frac``: the fraction of that wall time the training thread spent blocked on
  the next batch (``next(iterator)`` and its transfer to the devices);
* ``mfu``: model FLOPs utilisation, ``images_per_s x train FLOPs per image / (devices x peak
  FLOP/s per device)``, only on the devices of ``PEAK_FLOPS``;
* ``compile_time_s``, in the first record after a start or resume only: the time until the
  first step's metrics arrived (compilation, mostly). Throughput starts after that first
  step, so no record mixes compilation into images/s.

Why wall time: the loop dispatches step s + 1 before it reads step s's metrics (one step
behind, so the host never stalls the device), so the time between the metrics of two log
steps reaching the host is what the steps in between cost. Evaluations in between are taken
out; checkpoint saves are not (they are part of training's cost).
"""
from __future__ import annotations

import logging
import re
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import jax
import numpy as np

from swin_jax.tools import count

log = logging.getLogger('swin_jax')

# Peak dense (no sparsity) matmul FLOP/s of one JAX device, by jax's device_kind and the
# compute dtype (config.model.dtype). On TPU, float32 matmuls run at the bfloat16 rate: JAX's
# default precision computes them in one bfloat16 pass; on NVIDIA GPUs in TF32 ("By default,
# JAX leans toward speed: ... bfloat16 on TPU, TF32 on recent GPUs",
# https://docs.jax.dev/en/latest/201/precision.html). A device kind not listed gets no mfu.
_TPU_PEAKS = {
    # https://cloud.google.com/tpu/docs/v3: 123 TFLOPS (bf16) per chip of 2 TensorCores;
    # JAX has one device per TensorCore on v3.
    'TPU v3': 123e12 / 2,
    # https://cloud.google.com/tpu/docs/v4: 275 TFLOPS (bf16) per chip (one device, megacore).
    'TPU v4': 275e12,
    # https://cloud.google.com/tpu/docs/v5e: 197 TFLOPS (bf16) per chip.
    'TPU v5 lite': 197e12,
    # https://cloud.google.com/tpu/docs/v5p: 459 TFLOPS (bf16) per chip.
    'TPU v5': 459e12,
    # https://cloud.google.com/tpu/docs/v6e: 918 TFLOPS (bf16) per chip.
    'TPU v6 lite': 918e12,
}
PEAK_FLOPS: Dict[str, Dict[str, float]] = {
    kind: {'bfloat16': f, 'float32': f} for kind, f in _TPU_PEAKS.items()}
# NVIDIA datasheets list Tensor Core FLOPS "with sparsity"; dense is half of that.
_GPU_PEAKS: Sequence[Tuple[str, float, float]] = (  # device_kind regex, bf16/fp16, tf32
    # A100 datasheet (SXM4 and PCIe alike): BF16 312 TFLOPS, TF32 156 TFLOPS dense.
    (r'NVIDIA A100.*', 312e12, 156e12),
    # H100 datasheet, H100 PCIe: BF16 1,513 / TF32 756 TFLOPS with sparsity.
    (r'NVIDIA H100 PCIe', 1513e12 / 2, 756e12 / 2),
    # H100 datasheet, H100 SXM ('NVIDIA H100 80GB HBM3'): BF16 1,979 / TF32 989 with sparsity.
    (r'NVIDIA H100 80GB HBM3', 1979e12 / 2, 989e12 / 2),
    # H200 datasheet, H200 SXM: BF16 1,979 / TF32 989 TFLOPS with sparsity (as H100 SXM).
    (r'NVIDIA H200', 1979e12 / 2, 989e12 / 2),
    # GH200 datasheet: the H100 SXM's BF16 1,979 / TF32 989 TFLOPS with sparsity.
    (r'NVIDIA GH200.*', 1979e12 / 2, 989e12 / 2),
)


def peak_flops_per_device(device_kind: str, dtype: str) -> Optional[float]:
  """Peak dense FLOP/s of one device of ``device_kind`` computing in ``dtype``, or None."""
  dtype = dtype or 'float32'
  if dtype == 'float32' and jax.config.jax_default_matmul_precision not in (
      None, 'default', 'fastest'):
    return None  # float32 matmuls in several passes: no single peak to compare with
  if device_kind in PEAK_FLOPS:
    return PEAK_FLOPS[device_kind].get(dtype)
  for pattern, half, tf32 in _GPU_PEAKS:
    if re.fullmatch(pattern, device_kind):
      return {'bfloat16': half, 'float16': half, 'float32': tf32}.get(dtype)
  return None


def train_flops_per_example(model, variables, init_inputs) -> float:
  """Training FLOPs per example: 3 x 2 x the multiply-adds of one forward pass.

  The multiply-adds are those ``swin_jax.tools.count`` counts (matmuls and convolutions of
  ``model.apply(variables, *args, train=False, **kwargs)``, from the jaxpr: nothing is
  compiled or allocated); a multiply-add is 2 FLOPs, and the backward pass costs twice the
  forward (gradients of activations and of weights), so a step costs 3 forwards.

  Args:
    model: the flax module.
    variables: {'params': ..., **model_state}, arrays or ShapeDtypeStructs.
    init_inputs: (args, kwargs) of the model's inputs, batch first (task.init_inputs).
  """
  args, kwargs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype),
                              tuple(init_inputs))
  batch = int(np.shape(args[0])[0])
  model = count.counting_model(model)
  closed = jax.make_jaxpr(lambda v, a, k: model.apply(v, *a, train=False, **k))(
      variables, args, kwargs)
  return 6.0 * count.jaxpr_macs(closed) / batch


def mfu_inputs(model, abstract_state, init_inputs, dtype: str,
               device_kind: Optional[str] = None) -> Tuple[Optional[float], Optional[float]]:
  """(train FLOPs per example, peak FLOP/s per device) for the MFU field, or (None, None)
  where the device is not in the peak table (CPU) or the model cannot be counted."""
  kind = device_kind or jax.devices()[0].device_kind
  peak = peak_flops_per_device(kind, dtype)
  if peak is None:
    return None, None
  try:
    flops = train_flops_per_example(
        model, {'params': abstract_state.params, **abstract_state.model_state}, init_inputs)
  except Exception as e:  # pylint: disable=broad-except
    log.warning('No mfu in the logs: counting the FLOPs of the model failed (%s).', e)
    return None, None
  log.info('mfu: %.3g GFLOPs per training example (3 x forward) over %.0f TFLOP/s per %s '
           'device (%s).', flops / 1e9, peak / 1e12, kind, dtype or 'float32')
  return flops, peak


class Meter:
  """Wall-clock speed between log steps, as the training thread sees it (see module doc).

  The loop calls ``start()`` before the first step, ``add_input_wait`` / ``add_pause``
  around the batch fetch / an evaluation, ``step_done(step)`` when a step's metrics reach
  the host, and ``fields()`` at a log step.
  """

  def __init__(self, batch_size: int, num_devices: int,
               flops_per_example: Optional[float] = None, peak_flops: Optional[float] = None,
               clock: Callable[[], float] = time.perf_counter):
    self.batch_size = batch_size
    self.num_devices = num_devices
    self.flops_per_example = flops_per_example
    self.peak_flops = peak_flops
    self.clock = clock
    self.step_time_s: Optional[float] = None  # of the last interval, for the ETA
    self._t0 = None
    self._mark = None  # (step, time) where the current interval starts
    self._last = None  # (step, time) of the latest step_done
    self._compile = None
    self._wait = self._pause = 0.0

  def start(self):
    self._t0 = self.clock()

  def add_input_wait(self, seconds: float):
    self._wait += seconds

  def add_pause(self, seconds: float):
    self._pause += seconds

  def step_done(self, step: int):
    now = self.clock()
    if self._mark is None:  # the first step after (re)start: compile + one step
      self._compile = now - (self._t0 if self._t0 is not None else now)
      self._mark = (step, now)
      self._wait = self._pause = 0.0
    self._last = (step, now)

  def fields(self) -> Dict[str, float]:
    """The speed fields since the previous call (or the first step), then a new interval."""
    out: Dict[str, float] = {}
    if self._last is None:
      return out
    if self._compile is not None:
      out['compile_time_s'] = self._compile
      self._compile = None
    (s0, t0), (s1, t1) = self._mark, self._last
    steps, wall = s1 - s0, t1 - t0 - self._pause
    if steps > 0 and wall > 0:
      ips = self.batch_size * steps / wall
      out.update(images_per_s=ips, images_per_s_per_device=ips / self.num_devices,
                 step_time_s=wall / steps, input_wait_frac=min(1.0, self._wait / wall))
      if self.flops_per_example and self.peak_flops:
        out['mfu'] = mfu(ips, self.flops_per_example, self.num_devices, self.peak_flops)
      self.step_time_s = wall / steps
    self._mark = self._last
    self._wait = self._pause = 0.0
    return out

  def eta_s(self, step: int, total_steps: int) -> Optional[float]:
    if self.step_time_s is None:
      return None
    return max(total_steps - step, 0) * self.step_time_s


def mfu(images_per_s: float, flops_per_example: float, num_devices: int,
        peak_flops_per_device: float) -> float:
  """Achieved model FLOP/s over the devices' peak: a fraction in [0, 1] (ideally)."""
  return images_per_s * flops_per_example / (num_devices * peak_flops_per_device)


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}:{m:02d}:{s:02d}'


def console_line(step: int, total_steps: int, record: Dict[str, float],
                 eta_s: Optional[float]) -> str:
  """'step 120/1320  loss 0.4123  2,345 img/s (293/device)  input 2%  MFU 41.2%  ETA 0:12:34'
  (speed fields where the record has them; the first after a start says the compile time)."""
  parts = [f'step {step}/{total_steps}', f'loss {record["loss"]:.4f}']
  if 'images_per_s' in record:
    parts.append(f'{record["images_per_s"]:,.0f} img/s '
                 f'({record["images_per_s_per_device"]:,.0f}/device)')
    parts.append(f'input {100 * record["input_wait_frac"]:.0f}%')
  if 'mfu' in record:
    parts.append(f'MFU {100 * record["mfu"]:.1f}%')
  if 'compile_time_s' in record:
    parts.append(f'first step {record["compile_time_s"]:.1f}s (compile)')
  if eta_s is not None:
    parts.append(f'ETA {_duration(eta_s)}')
  return '  '.join(parts)


# ---------------------------------------------------------------------- profiler traces
def parse_profile_steps(value) -> Optional[Tuple[int, int]]:
  """config.profile_steps -> (start, stop), or None (off: (), None, '').

  (start, stop) traces steps start .. stop - 1, as ``range(start, stop)``."""
  if value is None or (isinstance(value, (tuple, list, str)) and len(value) == 0):
    return None
  ok = (isinstance(value, (tuple, list)) and len(value) == 2 and
        all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value) and
        1 <= value[0] < value[1])
  if not ok:
    raise ValueError(f'config.profile_steps={value!r}: use (start, stop) with 1 <= start < '
                     f'stop, e.g. --config.profile_steps="(100, 105)" traces steps 100-104 '
                     f'(after compilation); () turns tracing off.')
  return int(value[0]), int(value[1])


class ProfileWindow:
  """A jax.profiler trace of steps [start, stop), written under ``logdir`` (the run's
  tensorboard/ directory: ``plugins/profile/<run>/<host>.xplane.pb``, TensorBoard's profile
  tab). Every process traces its own host."""

  def __init__(self, steps: Optional[Tuple[int, int]], logdir: str, first_step: int,
               last_step: int):
    self.logdir = logdir
    self.active = False
    self.done = steps is None
    self.start, self.stop = steps or (0, 0)
    if steps is not None and (self.stop - 1 < first_step or self.start > last_step):
      log.warning('config.profile_steps=%s: no step of it is run (this run trains steps %d-%d); '
                  'nothing is traced.', steps, first_step, last_step)
      self.done = True

  def before_step(self, step: int):
    if not self.done and not self.active and self.start <= step < self.stop:
      jax.profiler.start_trace(self.logdir)
      self.active, self.first = True, step

  def after_step(self, step: int, state, last_step: int):
    """After dispatching ``step``: stops once the window's last step has run."""
    if self.active and (step >= self.stop - 1 or step >= last_step):
      jax.block_until_ready(state)
      self.close()
      log.info('Traced steps %d-%d into %s (TensorBoard: Profile).', self.first, step,
               self.logdir)

  def close(self):
    if self.active:
      self.active = False
      self.done = True
      jax.profiler.stop_trace()
