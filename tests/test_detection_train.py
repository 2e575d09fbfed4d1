"""DETR through the shared trainer, on the embedded digits_detection set (CPU-sized).

One 6-step training of configs/demo/detr_digits.py:quick (freeze_stem=True, the official
setting) is shared by the module: metrics, COCO evaluation, prediction pictures, the frozen
stem, evaluation at another batch size, resume, the predict CLI and the max_boxes error all
read it. A persistent XLA compilation cache (a temporary directory, this module only) lets the
later runs of the same programs (resume, evaluate mode, predict) skip the ~10 s compile.
"""
import contextlib
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, load_config, set_fields

DEMO = 'configs/demo/detr_digits.py'
STATS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')
NUM_TEST = 250  # digits_detection test canvases


def _config(data_dir, **overrides):
  """The quick demo (6 steps, checkpoints every 2), batch 8, all checkpoints kept, with
  DETR's official backbone setting."""
  c = load_config(DEMO, 'quick')
  c.pretrain = None  # the backbone pretraining has a test of its own
  c.input.data_dir = data_dir
  c.progress_bar = False
  c.batch_size = 8
  c.eval_batch_size = 32  # 250 = 7 x 32 + 26: the last eval batch is padded
  c.checkpoint.keep = 10
  # The official backbone setting: FrozenBatchNorm, stem + layer1 not trained (the demo
  # uses GroupNorm: its backbone is pretrained here, with no batch statistics to freeze).
  c.model.freeze_stem = True
  c.model.backbone_norm = 'frozen'
  c.num_prediction_images = 0
  return set_fields(c, overrides)


@contextlib.contextmanager
def _compilation_cache(directory):
  from jax.experimental.compilation_cache import compilation_cache as cc
  new = {'jax_compilation_cache_dir': directory,
         'jax_persistent_cache_min_compile_time_secs': 0.0,
         'jax_persistent_cache_min_entry_size_bytes': 0}
  old = {k: getattr(jax.config, k) for k in new}
  for k, v in new.items():
    jax.config.update(k, v)
  cc.reset_cache()
  try:
    yield
  finally:
    for k, v in old.items():
      jax.config.update(k, v)
    cc.reset_cache()


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('xla_cache'))
  with _compilation_cache(d):
    yield d


def _state_at(workdir, step):
  mngr = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'),
                               item_names=('state', 'meta'),
                               options=ocp.CheckpointManagerOptions(read_only=True))
  return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']


def _steps(workdir):
  d = os.path.join(workdir, 'checkpoints')
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(l) for l in f]


def _flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _is_stem(key):
  """DETR's frozen stem + layer1 (official: requires_grad False)."""
  return key.startswith("['backbone_0']['body']['conv1']") or \
      key.startswith("['backbone_0']['body']['layer1_")


def _spy_evaluators(monkeypatch):
  """Records the CocoEvaluator adapters the trainer makes (their detections)."""
  from swin_jax.train import tasks
  made = []
  make = tasks.DetectionTask.evaluator

  def spy(self, config, split):
    ev = make(self, config, split)
    made.append(ev)
    return ev
  monkeypatch.setattr(tasks.DetectionTask, 'evaluator', spy)
  return made


@pytest.fixture(scope='module')
def trained(detection_tfds_dir, tmp_path_factory, cache_dir):
  """The shared run; also its step-0 params and model_state (never checkpointed) and the
  detections of its final evaluation. Right after training it starts the predict CLI runs of
  test_predict_cli_* in the background: their interpreter start-up (TF, JAX imports) then
  overlaps the in-process tests instead of adding to them."""
  from swin_jax.train import loop
  root = tmp_path_factory.mktemp('detr')
  work = str(root / 'run')
  config = _config(detection_tfds_dir, num_prediction_images=2)
  with pytest.MonkeyPatch.context() as mp:
    evaluators = _spy_evaluators(mp)
    trainer = loop.Trainer(config, work)  # what train_and_evaluate(config, work) does
    try:
      init = jax.device_get(trainer.initial_state())
      final = trainer.train()
    finally:
      trainer.ckpt.close()
  (evaluator,) = evaluators
  cli = _start_predict_runs(config, work, root / 'predict', cache_dir)
  try:
    yield types.SimpleNamespace(workdir=work, config=config, final=final,
                                init_params=_flat(init.params),
                                init_state=_flat(init.model_state),
                                init_variables={'params': init.params, **init.model_state},
                                detections=evaluator.evaluator.detections(),
                                data_dir=detection_tfds_dir, cli=cli)
  finally:
    for proc in cli.procs.values():
      if proc.poll() is None:
        proc.kill()
      proc.communicate()


# ------------------------------------------------------------------ training end to end
def test_training_logs_losses_coco_stats_and_draws_predictions(trained):
  recs = _records(trained.workdir)
  train = [r for r in recs if r['split'] == 'train']
  assert [r['step'] for r in train] == [2, 4, 6]
  for r in train:
    for k in ('loss', 'loss_ce', 'loss_bbox', 'loss_giou', 'class_error', 'cardinality_error',
              'lr', 'grad_norm', 'param_norm'):
      assert np.isfinite(r[k]), (k, r)
    assert r['loss'] > 0 and r['loss_ce'] > 0 and r['loss_bbox'] > 0 and r['loss_giou'] > 0
  assert train[-1]['loss'] != train[0]['loss']
  (ev,) = [r for r in recs if r['split'] == 'eval']
  assert ev['step'] == 6 and ev['num_examples'] == NUM_TEST
  for k in STATS:
    assert -1.0 <= ev[k] <= 1.0, (k, ev)
    assert ev[k] == trained.final[k]
  assert trained.final['num_examples'] == NUM_TEST and trained.final['step'] == 6
  assert _steps(trained.workdir) == [2, 4, 6]
  # One grid of the 2 pictured test canvases per evaluation (only the final one here), and
  # the same image in TensorBoard at that step.
  # (test_evaluate_mode_* adds the folder predictions/evaluate)
  assert [f for f in os.listdir(os.path.join(trained.workdir, 'predictions'))
          if f != 'evaluate'] == ['step_6.png']
  from PIL import Image
  with Image.open(os.path.join(trained.workdir, 'predictions', 'step_6.png')) as im:
    assert im.format == 'PNG' and min(im.size) >= 320
    size = im.size
  import tensorflow as tf
  images = [(e.step, v.image.width, v.image.height)
            for f in glob.glob(os.path.join(trained.workdir, 'tensorboard', 'events.*'))
            for e in tf.compat.v1.train.summary_iterator(f) for v in e.summary.value
            if v.tag == 'eval/predictions']
  assert images == [(6, *size)]


def test_frozen_stem_and_frozen_batchnorm_unchanged(trained):
  state = _state_at(trained.workdir, 6)
  params, model_state = _flat(state['params']), _flat(state['model_state'])
  assert params.keys() == trained.init_params.keys()
  stem = [k for k in params if _is_stem(k)]
  assert any('conv1' in k and 'layer' not in k for k in stem) and any('layer1_' in k for k in stem)
  for k in stem:
    np.testing.assert_array_equal(params[k], trained.init_params[k], err_msg=k)
  moved = [k for k in params if not _is_stem(k) and
           not np.array_equal(params[k], trained.init_params[k])]
  assert any("['layer2_" in k for k in moved) and any('transformer' in k for k in moved)
  # FrozenBatchNorm's vectors: their own collection, never updated.
  assert list(model_state) and all(k.startswith("['frozen']") for k in model_state)
  assert model_state.keys() == trained.init_state.keys()
  for k in model_state:
    np.testing.assert_array_equal(model_state[k], trained.init_state[k], err_msg=k)


def test_freeze_stem_false_trains_the_stem(trained):
  """A backbone trained from scratch (freeze_stem=False): the trainer's optimizer mask
  for the config marks the stem trainable and the model passes it gradients (the optimizer
  then moves it: test_optimizers.py; with freeze_stem=True the stem gets none:
  test_detr.py::test_trainable_mask_and_gradients). A full train step would cost a second
  ~15 s compile: the gradient is the backbone's."""
  from swin_jax.train import loop
  params = trained.init_variables['params']  # freeze_stem changes no parameter
  for freeze in (True, False):
    mask = _flat(loop.trainable_from_config(
        _config(trained.data_dir, **{'model.freeze_stem': freeze}))(params))
    assert all(mask[k] != (freeze and _is_stem(k)) for k in mask)
  # The backbone alone (the stem's gradient flows through it whatever the transformer).
  from swin_jax.models import detr as detr_lib
  from swin_jax.train.tasks import task_from_config
  config = _config(trained.data_dir, **{'model.freeze_stem': False})
  model = loop.model_from_config(config)
  assert model.freeze_stem is False
  batch = next(task_from_config(config).train_iterator(config, 0))
  image, mask = batch['image'][:2], batch['image_mask'][:2]
  variables = {'params': trained.init_variables['params']['backbone_0'],
               **{c: v['backbone_0'] for c, v in trained.init_variables.items()
                  if c != 'params' and 'backbone_0' in v}}
  backbone = detr_lib.Backbone(model.backbone, model.dilation, model.backbone_depths,
                               model.train_backbone, model.backbone_kwargs, model.dtype,
                               model.backbone_width, model.freeze_stem, model.backbone_norm)
  g = jax.jit(jax.grad(lambda p: backbone.apply({**variables, 'params': p}, image, mask,
                                                True).sum()))(variables['params'])
  g = _flat(jax.device_get({'backbone_0': g}))
  stem = {k: v for k, v in g.items() if _is_stem(k) and k.endswith("['kernel']")}
  assert len(stem) >= 4
  for k in stem:
    assert np.abs(stem[k]).max() > 0, k


# ------------------------------------------------------------------ evaluation
def test_evaluate_mode_is_independent_of_the_eval_batch_size(trained, monkeypatch):
  """--mode=evaluate on the workdir with all 250 images in one batch = the end-of-training
  evaluation with batches of 32 (7 x 32 + 26: a padded last batch)."""
  from swin_jax.train import loop
  evaluators = _spy_evaluators(monkeypatch)
  whole = loop.evaluate(_config(trained.data_dir, eval_batch_size=NUM_TEST,
                                num_prediction_images=2), trained.workdir)
  assert trained.config.eval_batch_size == 32
  assert set(whole) == set(STATS) | {'num_examples'} and whole['num_examples'] == NUM_TEST
  assert {k: trained.final[k] for k in whole} == whole  # exact
  # Not only the stats (near zero after 6 steps): every detection is the same. (Not bit for
  # bit: XLA computes a batch of 250 and one of 32 with other vectorisation, ~1e-7 apart.)
  a, b = evaluators[0].evaluator.detections(), trained.detections
  assert len(a) == len(b) == NUM_TEST * 10
  assert [(d['image_id'], d['category_id']) for d in a] == \
      [(d['image_id'], d['category_id']) for d in b]
  np.testing.assert_allclose([d['score'] for d in a], [d['score'] for d in b], atol=1e-5)
  np.testing.assert_allclose([d['bbox'] for d in a], [d['bbox'] for d in b], atol=1e-3)
  # It draws the picture the training drew after its final evaluation (same params, same
  # images), in a folder of its own.
  from PIL import Image
  pictures = os.path.join(trained.workdir, 'predictions')
  assert os.listdir(os.path.join(pictures, 'evaluate')) == ['step_6.png']
  with Image.open(os.path.join(pictures, 'evaluate', 'step_6.png')) as got, \
       Image.open(os.path.join(pictures, 'step_6.png')) as want:
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_padding_does_not_change_detections_with_a_masked_swin_backbone(detection_tfds_dir):
  """A DETR whose backbone masks padding (a tiny Swin): the same eval images (the first 100
  test canvases) padded to 80x80 or to 96x96 give the same detections and COCO stats."""
  from swin_jax.data import detection_pipeline
  from swin_jax.evaluation.coco import CocoEvaluator, postprocess
  from swin_jax.models import create_model
  from swin_jax.train.tasks import DetectionTask
  config = _config(detection_tfds_dir)
  # swin_demo at patch 4, window 4: at pad 80 its second stage (10x10) is padded to 12x12
  # inside Swin, at pad 96 it is 12x12 already; shifted windows in both stages.
  model = create_model('detr_resnet50', backbone='swin_demo',
                       backbone_kwargs=dict(img_size=80, patch_size=4, embed_dim=16,
                                            depths=(2, 2), num_heads=(2, 4), window_size=4),
                       num_classes=10, hidden_dim=32, nheads=4, enc_layers=1, dec_layers=2,
                       dim_feedforward=64, num_queries=10, dropout=0.0, aux_loss=False)
  # Random weights from the shapes (model.init would compile the model once more).
  shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 80, 80, 3)),
                                               mask=jnp.zeros((1, 80, 80), bool)),
                          jax.random.key(0))
  rng = np.random.default_rng(0)

  def draw(path, s):
    name = jax.tree_util.keystr(path)
    if len(s.shape) == 1:  # biases, norm scales
      base = 1.0 if 'scale' in name else 0.0
      return jnp.asarray(base + 0.1 * rng.standard_normal(s.shape), s.dtype)
    fan_in = int(np.prod(s.shape[:-1]))
    return jnp.asarray(rng.standard_normal(s.shape) / np.sqrt(fan_in), s.dtype)
  variables = jax.tree_util.tree_map_with_path(draw, shapes)

  @jax.jit
  def run(batch):
    out = model.apply(variables, batch['image'], mask=batch['image_mask'])
    return out['pred_logits'], out['pred_boxes'], postprocess(
        out['pred_logits'], out['pred_boxes'], batch['orig_size'])

  gt = DetectionTask(config).groundtruth(config, 'test')
  results = {}
  for pad in (80, 96):
    config.input.pad_size = (pad, pad)
    it = detection_pipeline.make_detection_eval_iterator(config.input, split='test[:100]',
                                                         global_batch_size=50)
    evaluator, outs = CocoEvaluator(gt), []
    for batch in it:
      logits, boxes, (scores, labels, xyxy) = jax.device_get(run(batch))
      m = batch['mask']
      assert batch['image_mask'][m][:, 80:].all() and batch['image_mask'][m][:, :, 80:].all()
      evaluator.add(batch['image_id'], scores, labels, xyxy, valid=m)
      outs.append((batch['image_id'][m], logits[m], boxes[m], scores[m], xyxy[m]))
    ids, logits, boxes, scores, xyxy = (np.concatenate(x) for x in zip(*outs))
    results[pad] = dict(ids=ids, logits=logits, boxes=boxes, scores=scores, xyxy=xyxy,
                        stats=evaluator.summarize())
  a, b = results[80], results[96]
  np.testing.assert_array_equal(a['ids'], b['ids'])
  assert len(a['ids']) == 100
  np.testing.assert_allclose(b['logits'], a['logits'], atol=1e-4, rtol=0)
  np.testing.assert_allclose(b['boxes'], a['boxes'], atol=1e-4, rtol=0)
  np.testing.assert_allclose(b['scores'], a['scores'], atol=1e-4, rtol=0)
  np.testing.assert_allclose(b['xyxy'], a['xyxy'], atol=1e-2, rtol=0)  # pixels: 1e-4 x 112
  # Non-vacuous: the random model's detections differ between images and queries.
  assert np.std(a['boxes']) > 1e-2 and np.std(a['scores']) > 1e-3
  assert a['stats'] == b['stats'], (a['stats'], b['stats'])


# ------------------------------------------------------------------ resume
def test_resume_after_a_stop_at_step_4_equals_the_uninterrupted_run(trained, tmp_path):
  """The shared run, as if killed right after its step-4 checkpoint, run again to step 6."""
  from swin_jax.train import loop
  work = str(tmp_path / 'resume')
  shutil.copytree(trained.workdir, work)
  shutil.rmtree(os.path.join(work, 'checkpoints', '6'))
  shutil.rmtree(os.path.join(work, 'predictions'))
  with open(os.path.join(work, 'metrics.jsonl'), 'w') as f:  # the log up to step 4
    f.writelines(json.dumps(r) + '\n' for r in _records(trained.workdir) if r['step'] <= 4)
  assert _steps(work) == [2, 4]
  # Training is the same config; the final evaluation looks at 32 canvases only (cheaper).
  loop.train_and_evaluate(_config(trained.data_dir, **{'input.eval_split': 'test[:32]'}), work)
  assert _steps(work) == [2, 4, 6]
  got, want = _state_at(work, 6), _state_at(trained.workdir, 6)
  assert int(got['step']) == 6
  close = lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  jax.tree.map(close, got['params'], want['params'])
  jax.tree.map(close, got['opt_state'], want['opt_state'])
  jax.tree.map(np.testing.assert_array_equal, got['model_state'], want['model_state'])
  # The step-6 log (mean of steps 5 and 6: same batches, same losses) is the first run's.
  r_got, r_want = _records(work), _records(trained.workdir)
  assert [r['step'] for r in r_got if r['split'] == 'train'] == [2, 4, 6]
  last = lambda recs: [r for r in recs if r['split'] == 'train'][-1]
  for k in ('loss', 'loss_ce', 'loss_bbox', 'loss_giou', 'grad_norm', 'param_norm', 'lr'):
    np.testing.assert_allclose(last(r_got)[k], last(r_want)[k], rtol=1e-5, err_msg=k)
  assert r_got[-1]['split'] == 'eval' and r_got[-1]['num_examples'] == 32


# ------------------------------------------------------------------ predict CLI
def _predict(args, cache_dir):
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  env.pop('SWIN_JAX_DEBUG', None)
  return subprocess.Popen([sys.executable, '-m', 'swin_jax.predict', *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _start_predict_runs(config, workdir, d, cache_dir):
  """`python -m swin_jax.predict` on the first test canvas (written with PIL), and on a
  workdir that does not exist; started, not waited for."""
  from PIL import Image
  from swin_jax.data import input_pipeline
  os.makedirs(d)
  builder = input_pipeline.get_builder(config.input)
  ex = builder.as_data_source(split='test')[0]  # image decoded by tfds
  image, out = str(d / 'in.png'), str(d / 'out' / 'out.png')
  Image.fromarray(ex['image']).save(image)
  procs = {
      'ok': _predict(['--workdir', workdir, '--image', image, '--out', out,
                      '--threshold', '0'], cache_dir),
      'no_workdir': _predict(['--workdir', str(d / 'nope'), '--image', image, '--out',
                              str(d / 'x.png')], cache_dir),
  }
  return types.SimpleNamespace(procs=procs, dir=d, image=image, out=out,
                               shape=ex['image'].shape)


def test_predict_cli_draws_detections_and_names_bad_arguments(trained, tmp_path):
  from PIL import Image
  from swin_jax import predict
  cli = trained.cli
  # A non-image: the same ValueError -> exit 1 path of main() as a missing workdir, checked
  # in-process to spare a third interpreter.
  not_image = str(tmp_path / 'notes.png')
  with open(not_image, 'w') as f:
    f.write('not a picture\n')
  with pytest.raises(ValueError, match=r'--image=.*notes\.png is not a readable image'):
    predict.predict_file(trained.workdir, not_image, str(tmp_path / 'y.png'))
  assert not os.path.exists(tmp_path / 'y.png')
  res = {k: (p.communicate(timeout=300), p.returncode) for k, p in cli.procs.items()}
  (stdout, stderr), rc = res['ok']
  assert rc == 0, stderr[-3000:]
  # threshold 0: every query is drawn and listed (class, score, box)
  assert '10 detections with score >= 0.0 (checkpoint step 6)' in stdout, stdout
  assert len([l for l in stdout.splitlines() if l.count('\t') == 2]) == 10, stdout
  with Image.open(cli.out) as im:
    im.load()
    assert im.format == 'PNG'
    assert im.size[0] > cli.shape[1] and im.size[1] > cli.shape[0]  # drawn upscaled
  (stdout, stderr), rc = res['no_workdir']
  assert rc == 1 and '--workdir' in stderr and 'Traceback' not in stderr, stderr[-3000:]
  assert not os.path.exists(cli.dir / 'x.png')


# ------------------------------------------------------------------ bad input
def _tree_digest(d):
  h = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(d)):
    dirs.sort()
    for f in sorted(files):
      p = os.path.join(root, f)
      h.update(os.path.relpath(p, d).encode())
      with open(p, 'rb') as fh:
        h.update(fh.read())
  return h.hexdigest()


def test_too_many_boxes_fails_naming_max_boxes_and_keeps_checkpoints(trained, tmp_path):
  from swin_jax.train import loop
  # digits_detection canvases hold up to 4 digits. The workdir of a previous run, resumed
  # for 2 more steps: the first batch fails, and the run's checkpoints stay as they were.
  work = str(tmp_path / 'previous')
  shutil.copytree(trained.workdir, work)
  before = _tree_digest(os.path.join(work, 'checkpoints'))
  with pytest.raises(ValueError, match=r'config\.input\.max_boxes=2'):
    loop.train_and_evaluate(
        _config(trained.data_dir, total_steps=8, **{'input.max_boxes': 2}), work)
  assert _steps(work) == [2, 4, 6]
  assert _tree_digest(os.path.join(work, 'checkpoints')) == before
  from swin_jax.train.checkpointing import load_variables
  variables, step = load_variables(work)
  assert step == 6
  jax.tree.map(np.testing.assert_array_equal, variables['params'],
               _state_at(trained.workdir, 6)['params'])


# ------------------------------------------------------------------ backbone pretraining
def test_pretrain_runs_first_and_starts_the_backbone(detection_tfds_dir, tfds_dir, tmp_path):
  """config.pretrain (the demo's digits classifier) trains in <workdir>/pretrain before
  DETR's first step; DETR's backbone starts from its final weights, the transformer and
  heads from their fresh initialisation; a finished pretraining is not run again."""
  from swin_jax.train import checkpointing, loop
  c = load_config(DEMO, 'quick')
  c.input.data_dir = detection_tfds_dir
  c.pretrain.input.data_dir = tfds_dir
  c.progress_bar = False
  c.batch_size = 8
  c.pretrain.batch_size = 16
  work = str(tmp_path / 'run')
  trainer = loop.Trainer(c, work)
  try:
    state = jax.device_get(trainer.initial_state())
    fresh = jax.device_get(jax.jit(trainer._create)())  # pylint: disable=protected-access
  finally:
    trainer.ckpt.close()
  pre_dir = os.path.join(work, 'pretrain')
  assert _steps(pre_dir)[-1] == 6
  assert any(r['split'] == 'eval' and 'accuracy' in r for r in _records(pre_dir))
  body = _flat(checkpointing.load_variables(pre_dir)[0]['params']['body'])
  got = _flat(state.params['backbone_0']['body'])
  init = _flat(fresh.params['backbone_0']['body'])
  assert body.keys() == got.keys()
  for k in body:
    np.testing.assert_array_equal(got[k], body[k], err_msg=k)
  assert any(not np.array_equal(body[k], init[k]) for k in body)  # pretraining moved them
  for part in ('transformer', 'class_embed', 'bbox_embed', 'query_embed', 'input_proj'):
    a, b = _flat(state.params[part]), _flat(fresh.params[part])
    assert all(np.array_equal(a[k], b[k]) for k in a), part
  pre = c.pretrain.copy_and_resolve_references()
  pre.progress_bar = False
  assert loop.train_and_evaluate(pre, pre_dir, skip_finished=True) == {'step': 6,
                                                                      'skipped': True}
