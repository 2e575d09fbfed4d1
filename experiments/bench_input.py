"""Input pipeline speed: the old tf.data pipeline vs the grain one (a script, not a test).

    python experiments/bench_input.py [--task=classification|detection] [--quick]
        [--num_images=2000] [--batch_size=64] [--num_batches=20]
        [--data_dir=/tmp/bench_input] [--settings=1x0,2x0,4x0,1x2,2x2]
        [--repeats=3]

1. Prepares a synthetic dataset through a tfds GeneratorBasedBuilder
   (experiments/bench_input_data.py), once as TFRecord and once as ArrayRecord (two data dirs under
   --data_dir, reused when present), 8 shards each, images real JPEGs:
   * classification (`bench_imagenet`, features as imagenet2012: image jpeg,
     label ClassLabel(1000), file_name): ImageNet-like sizes (long side 500 for
     60 %, else ~N(480, 120); aspect mostly 4:3; 3/4 landscape), content smooth
     random fields at three scales + grey noise, quality 90: ~100-130 KB a
     file, as ImageNet's ~110 KB average;
   * detection (`bench_coco`, features as coco/2017: image, image/filename,
     image/id, objects {area, bbox, id, is_crowd, label ClassLabel(80)}):
     COCO sizes (long side 640, short side mostly 480 or 427), 1..15 random
     boxes (1 % crowd), ~150 KB a file.
2. Times, in one run, images/s (and per core: len(os.sched_getaffinity(0)))
   of the full train recipe after a warm-up, and images per CPU-second (CPU
   time of this process and its grain workers over the timed batches: the
   cost per image, less sensitive than images/s to other load on the host),
   over --repeats rounds that interleave the pipelines (mean, min..max: on
   a shared VM one 20-batch run varies by +-10 %, more than the pipelines
   differ):
   * classification: the Swin recipe of configs/swin/swin_i1k.py:T
     (inception_crop, rand-m9-mstd0.5-inc1, random erasing 0.25, 224,
     ImageNet mean/std);
   * detection: the DETR recipe of configs/detr/detr_coco.py:R50 (flip,
     multi-scale 480..800 max 1333, RandomSelect crop, pad 1344x1344);
   (a) `tf.data`: the pipeline as it was before grain (rebuilt below from
       `git show HEAD:swin_jax/data/input_pipeline.py` make_train_dataset /
       detection_pipeline.py train_dataset, with the library's per-example
       functions) on the TFRecord copy;
   (b) `grain`: `input_pipeline.make_train_iterator` /
       `detection_pipeline.make_detection_train_iterator` on the ArrayRecord
       copy, for each --settings entry THREADSxWORKERS
       (config.input.num_threads x config.input.num_workers).
3. Time to first batch (constructing the iterator -> first batch in hand),
   each in a fresh process as a restarted trainer sees it (graph tracing
   included, imports not): grain at start_step 0 and 10**6 (default read
   settings); tf.data at 0 and at the largest of 10**2, 10**3, 10**4 steps
   that finishes within --tf_resume_budget (its resume reads and skips
   start_step * B records), extrapolated linearly to 10**6 (marked as such).

--quick: 200 images, batch 16 (detection 4), 3 timed batches, settings 2x0,
tf.data resume at 100 steps, first batches timed in-process: a smoke run (about a minute on 2 idle cores; add
--settings=2x0,1x2 to smoke-test grain's worker processes too).
"""
from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import os
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import tensorflow_datasets as tfds

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_input_data import BUILDERS, BenchCoco, BenchImagenet, file_stats, prepare, record_bytes  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESUME_STEP = 10**6


# --------------------------------------------------------------------------
# Configs.
# --------------------------------------------------------------------------


def load_config(relpath: str, arg: str):
  """get_config(arg) of a config file, as --config=relpath:arg gives."""
  path = os.path.join(ROOT, relpath)
  spec = importlib.util.spec_from_file_location(
      'cfg_' + os.path.basename(path)[:-3], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def input_config(task: str, data_dir: str, threads: Optional[int] = None,
                 workers: Optional[int] = None):
  if task == 'classification':
    cfg = copy.deepcopy(load_config('configs/swin/swin_i1k.py', 'T').input)
    cfg.dataset = BenchImagenet.name
  else:
    cfg = copy.deepcopy(load_config('configs/detr/detr_coco.py', 'R50').input)
    cfg.dataset = BenchCoco.name
  cfg.data_dir = data_dir
  if threads is not None:
    cfg.num_threads = threads
  if workers is not None:
    cfg.num_workers = workers
  return cfg


# --------------------------------------------------------------------------
# (a) The tf.data pipelines as they were (git show HEAD:...).
# --------------------------------------------------------------------------


def _get(cfg, name: str, default):
  try:
    value = getattr(cfg, name)
  except (AttributeError, KeyError):
    return default
  return default if value is None else value


def _tf_options():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  return options


def _tf_read(builder, split: str, seed: int):
  """Old input_pipeline._read: seeded file shuffle, images left encoded."""
  read_config = tfds.ReadConfig(
      options=_tf_options(), try_autocache=False, shuffle_seed=seed,
      shuffle_reshuffle_each_iteration=True)
  return builder.as_dataset(
      split=split, shuffle_files=True,
      decoders={'image': tfds.decode.SkipDecoding()}, read_config=read_config)


def tfdata_classification(input_cfg, builder, *, batch_size: int, seed: int,
                          start_step: int = 0):
  """Old make_train_dataset (one process, no cache, no repeated aug)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from swin_jax.data import augment as augment_lib  # pylint: disable=g-import-not-at-top
  from swin_jax.data import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  kwargs = dict(
      size=int(input_cfg.image_size), augment=input_cfg.train_augment,
      mean=tuple(input_cfg.mean), std=tuple(input_cfg.std),
      rand_augment=(augment_lib.parse_rand_augment(input_cfg.rand_augment)
                    if input_cfg.rand_augment else None),
      color_jitter=float(input_cfg.color_jitter),
      random_erasing=float(input_cfg.random_erasing))
  ds = _tf_read(builder, input_cfg.train_split, seed)
  buffer = int(_get(input_cfg, 'shuffle_buffer', 10_000))
  if buffer > 1:
    ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
  ds = ds.repeat().enumerate().skip(int(start_step) * batch_size)
  base_seed = tf.constant([seed, 0], tf.int64)

  def process(index, example):
    elem_seed = tf.random.experimental.stateless_fold_in(base_seed, index)
    return {'image': ip.preprocess_train(ip.decode_image(example['image']),
                                         elem_seed, **kwargs),
            'label': tf.cast(example['label'], tf.int32)}

  ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return iter(tfds.as_numpy(ds.with_options(_tf_options())))


def tfdata_detection(input_cfg, builder, *, batch_size: int, seed: int,
                     start_step: int = 0):
  """Old detection_pipeline.train_dataset (one process, no cache), from the
  module's per-example functions (parse_config, coco_targets, augment_train,
  pad_and_pack), with the bookkeeping outputs left out."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from swin_jax.data import detection_pipeline as dp  # pylint: disable=g-import-not-at-top
  from swin_jax.data import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  missing = [f for f in ('parse_config', 'coco_targets', 'augment_train',
                         'pad_and_pack') if not hasattr(dp, f)]
  if missing:
    raise RuntimeError(f'detection_pipeline no longer has {missing}: update '
                       f'tfdata_detection in {__file__}.')
  cfg = dp.parse_config(input_cfg)
  ds = _tf_read(builder, input_cfg.train_split, seed)
  buffer = int(_get(input_cfg, 'shuffle_buffer', 10_000))
  if buffer > 1:
    ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
  ds = ds.repeat().enumerate().skip(int(start_step) * batch_size)
  no_autograph = tf.autograph.experimental.do_not_convert

  def decode(index, example):
    objects = example['objects']
    return {'image': ip.decode_image(example['image']),
            'image_id': tf.cast(example['image/id'], tf.int64),
            'objects': {k: objects[k] for k in ('bbox', 'label', 'is_crowd')},
            'index': tf.cast(index, tf.int64)}

  ds = ds.map(no_autograph(decode), num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True).ignore_errors(log_warning=False)
  base_seed = tf.constant([seed, 0], tf.int64)

  def process(example):
    image = example['image']
    boxes, labels, num_clipped = dp.coco_targets(
        tf.shape(image)[:2], example['objects'], cfg.label_map)
    num_boxes = tf.shape(boxes)[0]
    elem_seed = tf.random.experimental.stateless_fold_in(
        base_seed, example['index'])
    image, boxes, labels = dp.augment_train(image, boxes, labels, elem_seed,
                                            cfg)
    out = {k: v for k, v in dp.pad_and_pack(image, boxes, labels, cfg).items()
           if k != 'size' and not k.startswith('_')}
    out.update(_index=example['index'], _num_boxes=num_boxes,
               _num_clipped=num_clipped, _image_id=example['image_id'])
    return out

  ds = ds.map(no_autograph(process), num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return iter(tfds.as_numpy(ds.with_options(_tf_options())))


# --------------------------------------------------------------------------
# (b) The grain pipelines (the library's entry points).
# --------------------------------------------------------------------------


def grain_iterator(task: str, input_cfg, *, batch_size: int, seed: int,
                   start_step: int = 0):
  if task == 'classification':
    from swin_jax.data import input_pipeline as ip  # pylint: disable=g-import-not-at-top
    return ip.make_train_iterator(input_cfg, global_batch_size=batch_size,
                                  seed=seed, start_step=start_step)
  from swin_jax.data import detection_pipeline as dp  # pylint: disable=g-import-not-at-top
  return dp.make_detection_train_iterator(
      input_cfg, global_batch_size=batch_size, seed=seed,
      start_step=start_step)


def close(it) -> None:
  """Stops an iterator's threads / worker processes (grain: close())."""
  for obj in (it, getattr(it, '_it', None)):
    fn = getattr(obj, 'close', None)
    if callable(fn):
      try:
        fn()
      except Exception:  # pylint: disable=broad-except
        pass


def _settle() -> None:
  """After the last reference to an iterator is gone: collect it (tf.data
  stops prefetching) and let its threads wind down before the next run."""
  gc.collect()
  time.sleep(0.5)


# --------------------------------------------------------------------------
# Measurements.
# --------------------------------------------------------------------------


def _cpu_seconds() -> float:
  """CPU time of this process and its live children (grain workers)."""
  import psutil  # pylint: disable=g-import-not-at-top
  me = psutil.Process()
  total = sum(me.cpu_times()[:2])
  for child in me.children(recursive=True):
    try:
      total += sum(child.cpu_times()[:2])
    except psutil.Error:
      pass
  return total


def throughput(make: Callable[[], Any], *, batch_size: int, warmup: int,
               num_batches: int) -> Dict[str, float]:
  """images/s over num_batches after `warmup` batches (and the CPU used)."""
  start = time.perf_counter()
  it = make()
  batch = next(it)
  first = time.perf_counter() - start
  assert len(batch['image']) == batch_size, batch['image'].shape
  for _ in range(warmup - 1):
    next(it)
  cpu0, t0 = _cpu_seconds(), time.perf_counter()
  for _ in range(num_batches):
    next(it)
  wall = time.perf_counter() - t0
  cpu = _cpu_seconds() - cpu0
  close(it)
  del it, batch
  _settle()
  return dict(images_per_s=num_batches * batch_size / wall,
              images_per_cpu_s=num_batches * batch_size / max(cpu, 1e-9),
              cpu_util=cpu / wall, first_batch_s=first)


def time_to_first_batch(make: Callable[[], Any]) -> float:
  start = time.perf_counter()
  it = make()
  next(it)
  elapsed = time.perf_counter() - start
  close(it)
  del it
  _settle()
  return elapsed


def parse_settings(text: str) -> List[Tuple[int, int]]:
  out = []
  for item in text.split(','):
    threads, _, workers = item.strip().partition('x')
    out.append((int(threads), int(workers or 0)))
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python experiments/bench_input.py',
      description='images/s and time to first batch: tf.data vs grain input.')
  parser.add_argument('--task', choices=sorted(BUILDERS),
                      default='classification')
  parser.add_argument('--data_dir', default='/tmp/bench_input')
  parser.add_argument('--num_images', type=int, default=None,
                      help='synthetic train images (default 2000; --quick 200)')
  parser.add_argument('--batch_size', type=int, default=None,
                      help='batch (default 64 classification, 8 detection: '
                           'DETR\'s 64 over 8 hosts; --quick 16 / 4)')
  parser.add_argument('--num_batches', type=int, default=None,
                      help='timed batches (default 20; --quick 3)')
  parser.add_argument('--warmup', type=int, default=None,
                      help='batches before timing (default 4; --quick 1)')
  parser.add_argument('--settings', default=None,
                      help='grain THREADSxWORKERS list (default '
                           '1x0,2x0,4x0,1x2,2x2; --quick 2x0)')
  parser.add_argument('--tf_resume_steps', default=None,
                      help='tf.data resume steps to try, increasing (default '
                           '100,1000,10000; --quick 100); stops before one '
                           'expected to take over --tf_resume_budget s')
  parser.add_argument('--tf_resume_budget', type=float, default=60.0)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--ttfb_repeats', type=int, default=None,
                      help='fresh-process first batches per case (default 3; '
                      '--quick 1)')
  parser.add_argument('--skip_throughput', action='store_true',
                      help='time the first batches only')
  parser.add_argument('--repeats', type=int, default=None,
                      help='interleaved rounds of the throughput runs '
                      '(default 3; --quick 1)')
  parser.add_argument('--quick', action='store_true',
                      help='smoke run: small data, few batches; first batches '
                           'timed in-process')
  parser.add_argument('--ttfb_child', default='', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  quick = args.quick
  det = args.task == 'detection'
  num_images = args.num_images or (200 if quick else 2000)
  batch_size = args.batch_size or ((4 if det else 16) if quick else
                                   (8 if det else 64))
  num_batches = args.num_batches or (3 if quick else 20)
  warmup = args.warmup or (1 if quick else 4)
  args.repeats = args.repeats or (1 if quick else 3)
  args.ttfb_repeats = args.ttfb_repeats or (1 if quick else 3)
  settings = parse_settings(args.settings or (
      '2x0' if quick else '1x0,2x0,4x0,1x2,2x2'))
  resume_steps = [int(s) for s in (args.tf_resume_steps or (
      '100' if quick else '100,1000,10000')).split(',')]
  cores = len(os.sched_getaffinity(0))

  from swin_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top,unused-import  # Hides accelerators from TF.
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():  # grain's worker processes read its flags.
    flags.FLAGS.mark_as_parsed()

  tfr_dir, tfr_builder = prepare(args.task, args.data_dir, num_images,
                                 'tfrecord')
  ar_dir, ar_builder = prepare(args.task, args.data_dir, num_images,
                               'array_record')
  tf_cfg = input_config(args.task, tfr_dir)
  tf_fn = tfdata_detection if det else tfdata_classification

  def tf_make(threads=None, workers=None, start_step=0):
    del threads, workers
    return lambda: tf_fn(tf_cfg, tfr_builder, batch_size=batch_size,
                         seed=args.seed, start_step=start_step)

  lib = ('detection_pipeline.make_detection_train_iterator' if det else
         'input_pipeline.make_train_iterator')

  def grain_make(threads=None, workers=None, start_step=0):
    cfg = input_config(args.task, ar_dir, threads, workers)
    return lambda: grain_iterator(args.task, cfg, batch_size=batch_size,
                                  seed=args.seed, start_step=start_step)

  if args.ttfb_child:  # A fresh process timing one first batch (see first()).
    kind, step = args.ttfb_child.split(':')
    make = (grain_make if kind == 'grain' else tf_make)(start_step=int(step))
    print(f'TTFB {time_to_first_batch(make)!r}', flush=True)
    return 0

  recipe = ('Swin (configs/swin/swin_i1k.py:T): inception_crop, '
            'rand-m9-mstd0.5-inc1, random_erasing 0.25, 224' if not det else
            'DETR (configs/detr/detr_coco.py:R50): flip, scales 480..800 '
            'max 1333, crop p 0.5, pad 1344')
  print(f'task {args.task}: {recipe}; batch {batch_size}, {warmup} warm-up + '
        f'{num_batches} timed batches, {cores} cores')
  record_kb = record_bytes(tfr_builder) / 1e3
  print(f'  tfrecord:     {file_stats(tfr_builder)}')
  print(f'  array_record: {file_stats(ar_builder)}', flush=True)

  print(f'(a) tf.data: the pre-grain pipeline rebuilt here, on TFRecord\n'
        f'(b) grain: {lib}, on ArrayRecord; t = config.input.num_threads, '
        f'w = config.input.num_workers')

  rows = []  # (name, [result of each round])

  def show(name, r, label):
    print(f'  {name:<24} {r["images_per_s"]:7.1f} img/s  '
          f'{r["images_per_s"] / cores:6.1f} img/s/core  '
          f'{r["images_per_cpu_s"]:6.1f} img/cpu-s  '
          f'(busy {r["cpu_util"]:.2f} cores, first batch '
          f'{r["first_batch_s"]:.1f} s){label}', flush=True)

  runs = [('(a) tf.data', lambda: throughput(
      tf_make(), batch_size=batch_size, warmup=warmup,
      num_batches=num_batches))]
  for threads, workers in settings:
    in_flight = threads * max(1, workers)
    # Whole rounds of the concurrently computed batches: unbiased rates.
    w = -(-max(warmup, in_flight) // in_flight) * in_flight
    n = -(-num_batches // in_flight) * in_flight
    runs.append((f'(b) grain t={threads} w={workers}',
                 lambda t=threads, k=workers, w=w, n=n: throughput(
                     grain_make(t, k), batch_size=batch_size, warmup=w,
                     num_batches=n)))
  # Rounds interleave the pipelines, so a slow spell of a shared host (a VM's
  # neighbours) falls on all of them rather than on one.
  print(f'\nthroughput after warm-up ({args.repeats} interleaved round(s)):')
  results = {name: [] for name, _ in runs}
  for round_ in range(0 if args.skip_throughput else args.repeats):
    for name, run in runs:
      results[name].append(run())
      show(name, results[name][-1],
           f'  [round {round_ + 1}]' if args.repeats > 1 else '')
  rows = [(name, rs) for name, rs in results.items() if rs]

  where = ('in this process (--quick: graphs traced earlier may be reused)'
           if quick else 'each in a fresh process, as a restarted trainer: '
           'tracing included, imports not')
  print(f'\ntime to first batch (constructing the iterator -> first batch in '
        f'hand; grain with the default read settings; {where}):', flush=True)
  ttfb = []  # (name, start_step, seconds, note)
  child_args = ['--task', args.task, '--data_dir', args.data_dir,
                '--num_images', str(num_images), '--batch_size',
                str(batch_size), '--seed', str(args.seed)]

  def measure_first(kind, step):
    if quick:
      return time_to_first_batch(
          (grain_make if kind == 'grain' else tf_make)(start_step=step))
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *child_args,
         f'--ttfb_child={kind}:{step}'], capture_output=True, text=True,
        timeout=args.tf_resume_budget + 600, check=False)
    lines = [l for l in out.stdout.splitlines() if l.startswith('TTFB ')]
    if out.returncode or not lines:
      raise RuntimeError(f'first-batch child {kind}:{step} failed:\n'
                         f'{out.stderr[-3000:]}')
    return float(lines[-1].split()[1])

  # Each first batch --ttfb_repeats times (fresh processes, interleaved): one
  # start takes 6-9 s here, and a single pair varies by more than the 20 %
  # the resume goal allows. The median of each is what the summary reports.
  firsts = {}
  for _ in range(args.ttfb_repeats):
    for name, kind, step in (('(b) grain', 'grain', 0),
                             ('(b) grain', 'grain', RESUME_STEP),
                             ('(a) tf.data', 'tf', 0)):
      firsts.setdefault((name, kind, step), []).append(measure_first(kind, step))
  for (name, kind, step), values in firsts.items():
    values = sorted(values)
    median = values[len(values) // 2]
    spread = (f'  (median of {len(values)}: '
              + ', '.join(f'{v:.1f}' for v in values) + ')'
              if len(values) > 1 else '')
    ttfb.append((name, step, median, spread.strip()))
    print(f'  {name:<24} start_step={step:<9,} {median:8.1f} s{spread}',
          flush=True)
  base = ttfb[-1][2]
  measured = None
  for step in resume_steps:
    if measured is not None:
      prev_step, prev = measured
      guess = base + max(prev - base, 0.0) * step / prev_step
      if guess > args.tf_resume_budget:
        print(f'  {"(a) tf.data":<24} start_step={step:<9,} skipped (expected '
              f'~{guess:.0f} s > --tf_resume_budget '
              f'{args.tf_resume_budget:.0f} s)')
        break
    seconds = measure_first('tf', step)
    extra = seconds - base
    note = (f'{step * batch_size / extra:,.0f} skipped records/s'
            if extra > 0.5 else 'within noise of start_step=0')
    ttfb.append(('(a) tf.data', step, seconds, note))
    print(f'  {"(a) tf.data":<24} start_step={step:<9,} {seconds:8.1f} s  '
          f'{note}', flush=True)
    measured = (step, seconds)
  if measured and measured[1] - base > 0.5:
    step, seconds = measured
    extrapolated = base + (seconds - base) * RESUME_STEP / step
    records = RESUME_STEP * batch_size
    note = (f'EXTRAPOLATED linearly from start_step={step:,} '
            f'({extrapolated / 3600:.1f} h: skipping {records:,} records '
            f'read from the page cache; from storage that is '
            f'{records * record_kb / 1e9:,.1f} TB to read)')
    ttfb.append(('(a) tf.data', RESUME_STEP, extrapolated, note))
    print(f'  {"(a) tf.data":<24} start_step={RESUME_STEP:<9,} '
          f'{extrapolated:8.0f} s  {note}')
  elif measured:
    print(f'  (a) tf.data at start_step={RESUME_STEP:,}: not extrapolated '
          f'(resuming at {measured[0]:,} steps costs less than the noise; '
          f'pass larger --tf_resume_steps)')

  print(f'\nsummary ({args.task}, batch {batch_size}, {cores} cores)')
  print(f'  {"pipeline":<24} {"img/s":>8} {"img/s/core":>11} '
        f'{"img/cpu-s":>10}  (mean of {args.repeats} round(s); min..max)')
  for name, rs in rows:
    ips = [r['images_per_s'] for r in rs]
    cps = [r['images_per_cpu_s'] for r in rs]
    spread = (f'  {min(ips):.1f}..{max(ips):.1f} img/s, '
              f'{min(cps):.1f}..{max(cps):.1f} img/cpu-s'
              if len(rs) > 1 else '')
    print(f'  {name:<24} {sum(ips) / len(ips):8.1f} '
          f'{sum(ips) / len(ips) / cores:11.1f} '
          f'{sum(cps) / len(cps):10.1f}{spread}')
  print(f'  {"first batch":<24} {"start_step":>10} {"seconds":>9}')
  for name, step, seconds, note in ttfb:
    star = ' (extrapolated)' if note.startswith('EXTRAPOLATED') else ''
    print(f'  {name:<24} {step:>10,} {seconds:9.1f}{star}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
