"""Reproduce-the-tables (swin_jax/tools/tables.py, paper_numbers.py): a sourced row for every
model, our counts equal to count.py's, Markdown and CSV that agree, and the measured column
through a fake evaluate runner (no checkpoint, no dataset).

Cheap by design: only small models are counted, FLOPs on one.
"""
import csv
import io
import os
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from swin_jax.models import create_model, list_models
from swin_jax.tools import count
from swin_jax.tools import paper_numbers as pn
from swin_jax.tools import tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _by_model(rows):
  return {(r.model, r.label): r for r in rows}


def _parse_flags(cmd):
  """The config that `swin_jax.main` would build from an evaluate command's --config flags."""
  argv = ['main'] + [a for a in cmd if a.startswith('--config')]
  fv = flags.FlagValues()
  # Overrides are defined from the argv they will parse (as absl's app.run passes sys.argv).
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=fv, sys_argv=argv)
  fv(argv)
  return fv.config


# ---------------------------------------------------------------------------- paper rows

def test_every_registered_model_has_a_sourced_row():
  models = [m for m in list_models() if not pn.is_demo(m)]
  assert {'vit_demo', 'swin_demo'} <= set(list_models()) - set(models)
  for m in models:
    rows = pn.rows_for(m)
    assert rows, f'{m} has no row in paper_numbers.PAPER_ROWS'
    for r in rows:
      refs = [x for x in (r.params_m, r.gflops, r.score) if x is not None]
      assert refs, r
      for ref in refs:
        assert ref.source in pn.SOURCES, ref
        float(ref.value)  # a number, as printed by the source
      assert r.metric in ('top-1', 'AP')
  assert {r.model for r in pn.PAPER_ROWS} <= set(models)
  assert len({(r.model, r.label) for r in pn.PAPER_ROWS}) == len(pn.PAPER_ROWS)
  assert sorted(tables.select_models()) == sorted(models)


def test_reused_numbers_match_the_configs_that_pin_them():
  rows = {r.label: r for r in pn.PAPER_ROWS}
  assert rows['Swin-T'].score.value == '81.3'
  assert rows['Swin-L 384 (IN-22K)'].gflops.value == '103.9'
  assert [rows[f'DETR-{k}'].gflops.value for k in ('R50', 'DC5-R50', 'R101', 'DC5-R101')] == [
      '86', '187', '152', '253']
  assert [rows[f'DETR-{k}'].score.value for k in ('R50', 'DC5-R50', 'R101', 'DC5-R101')] == [
      '42.0', '43.3', '43.5', '44.9']
  assert rows['ResNet-50 (torchvision V1)'].score.value == '76.13'


@pytest.mark.parametrize('row', [r for r in pn.PAPER_ROWS if r.config],
                         ids=lambda r: f'{r.model}:{r.label}')
def test_evaluate_command_parses_into_the_rows_model(row, tmp_path):
  """Every row's evaluate command is a valid swin_jax.main config: the model, the input
  size, init_from and data_dir (and the COCO annotations for AP rows) land in the config."""
  cmd = tables.evaluate_command(row, '/ckpts/x.pth', '/data', str(tmp_path),
                                coco_annotations='/ann/instances_val2017.json')
  assert cmd[1:4] == ['-m', 'swin_jax.main', '--mode=evaluate']
  c = _parse_flags(cmd)
  assert c.model.name == row.model
  assert c.init_from == '/ckpts/x.pth' and c.input.data_dir == '/data'
  if row.metric == 'AP':
    assert c.eval.annotation_file == '/ann/instances_val2017.json'
  else:
    assert c.input.image_size == row.img_size[0] == row.img_size[1]
    assert not any('annotation_file' in a for a in cmd)
  if 'AugReg' in row.label:
    assert tuple(c.input.mean) == (0.5, 0.5, 0.5) and tuple(c.input.std) == (0.5, 0.5, 0.5)


# ---------------------------------------------------------------------------- our numbers

@pytest.mark.parametrize('name', ['vit_tiny_patch16_224', 'shunted_t'])
def test_params_equal_count_py(name):
  (row,) = tables.build_rows([name], flops=False)
  model = create_model(name)
  assert row.params == count.count_params(
      count.abstract_variables(model, count.input_shape_for(model)))
  assert row.macs is None


def test_resnet_params_counted_as_torchvision():
  """torchvision counts BatchNorm weight / bias (kept in 'frozen' here): its num_params."""
  rows = _by_model(tables.build_rows(['resnet50', 'resnet101'], flops=False))
  assert rows['resnet50', 'ResNet-50 (torchvision V1)'].params == 25_557_032
  assert rows['resnet101', 'ResNet-101 (torchvision V1)'].params == 44_549_160


def test_flops_path_on_a_small_model():
  (row,) = tables.build_rows(['vit_tiny_patch16_224'])
  model = create_model('vit_tiny_patch16_224')
  assert row.macs == count.count_flops(model, (1, 224, 224, 3))
  assert abs(row.macs / 1.26e9 - 1) < 0.02  # timm's benchmark: 1.26 GMACs
  line = tables.markdown_lines([row])[2]
  assert f'| {row.macs / 1e9:.2f} / 1.26 |' in line and '| 5.72 / 5 |' in line


# ---------------------------------------------------------------------------- outputs

def _table_lines(md):
  return [l for l in md.splitlines() if l.startswith('| ') and not l.startswith('| model')]


def test_cli_writes_markdown_and_csv_that_agree(tmp_path, capsys):
  out = tmp_path / 'tables'
  assert tables.main(['--family', 'resnet', '--skip-flops', '--out', str(out)]) == 0
  stdout = capsys.readouterr().out
  md = (out / 'tables.md').read_text()
  assert stdout == md
  lines = _table_lines(md)
  recs = list(csv.DictReader(io.StringIO((out / 'tables.csv').read_text())))
  assert [r['model'] for r in recs] == ['resnet50', 'resnet101'] and len(lines) == 2
  for line, rec in zip(lines, recs):
    cells = [c.strip() for c in line.strip('|').split('|')]
    assert cells[0] == rec['model'] and cells[1] == rec['row'] and cells[2] == rec['input']
    ours, paper = cells[3].split(' / ')
    assert float(ours) == pytest.approx(int(rec['params_ours']) / 1e6, abs=1e-6)
    assert paper == rec['params_paper_m'] and cells[6] == rec['score_paper']
    assert cells[4] == '- / ' + rec['gflops_paper'] and rec['macs_ours'] == ''
    assert cells[7] == '-' and rec['score_measured'] == ''
  assert '- torchvision: ' in md and 'Notes:' in md


# ---------------------------------------------------------------------------- measured column

def test_measured_column_with_a_fake_runner(tmp_path, monkeypatch):
  ckpts = tmp_path / 'ckpts'
  ckpts.mkdir()
  (ckpts / 'swin_tiny_patch4_window7_224.pth').write_bytes(b'')
  (ckpts / 'shunted_t.pth').write_bytes(b'')  # no official name: <model>.pth
  (ckpts / 'resnet50-0676ba61.pth').write_bytes(b'')  # a checkpoint, but no config
  calls = []

  def fake(cmd):
    calls.append(cmd)
    if any('shunted' in a for a in cmd):
      raise tables.EvaluateError('exit 2: error: config.input.dataset=imagenet2012 is not '
                                 'prepared')
    return {'accuracy': 0.81234, 'top5_accuracy': 0.95, 'num_examples': 50000}

  monkeypatch.setattr(tables, 'count_model', lambda name, size, flops=True: (1, None))
  monkeypatch.setattr(tables, 'run_evaluate', fake)
  rows = tables.build_rows(['swin_tiny_patch4_window7_224', 'shunted_t', 'shunted_s',
                            'resnet50'], checkpoints=str(ckpts), data_dir='/data')
  by = _by_model(rows)
  swin = by['swin_tiny_patch4_window7_224', 'Swin-T']
  assert swin.measured == pytest.approx(81.234) and swin.status == ''
  assert by['shunted_t', 'Shunted-T'].measured is None
  assert by['shunted_t', 'Shunted-T'].status.startswith('failed: exit 2')
  assert by['shunted_s', 'Shunted-S'].status == 'no checkpoint'
  assert by['resnet50', 'ResNet-50 (torchvision V1)'].status == 'no config'
  assert len(calls) == 2
  swin_cmd = calls[0]
  assert f'--config={os.path.join(ROOT, "configs/swin/swin_i1k.py")}:T' in swin_cmd
  assert f'--config.init_from={ckpts / "swin_tiny_patch4_window7_224.pth"}' in swin_cmd
  workdir = [a for a in swin_cmd if a.startswith('--workdir=')][0].split('=', 1)[1]
  assert not os.path.exists(workdir)  # the throw-away workdir is removed

  md = tables.to_markdown(rows)
  cells = {l.split('|')[1].strip(): [c.strip() for c in l.split('|')[1:-1]]
           for l in _table_lines(md)}
  assert cells['swin_tiny_patch4_window7_224'][7] == '81.23'
  assert cells['shunted_t'][7] == 'failed'
  assert cells['shunted_s'][7] == '-' and cells['resnet50'][7] == '-'
  assert 'shunted_t (Shunted-T): evaluate failed: exit 2: error: config.input.dataset' in md
  assert 'resnet50 (ResNet-50 (torchvision V1)): no config to evaluate' in md
  rec = {r['model']: r for r in csv.DictReader(io.StringIO(tables.to_csv(rows)))}
  assert rec['swin_tiny_patch4_window7_224']['score_measured'] == '81.234'
  assert rec['shunted_t']['measured_status'].startswith('failed')


def test_detection_rows_read_ap():
  row = pn.rows_for('detr_resnet50')[0]
  got = tables.measure(row, '/c/detr-r50-e632da11.pth', '/data',
                       runner=lambda cmd: {'AP': 0.4201, 'AP50': 0.62})
  assert got == pytest.approx(42.01)
  with pytest.raises(tables.EvaluateError, match="no 'AP'"):
    tables.measure(row, '/c/x.pth', '/data', runner=lambda cmd: {'accuracy': 0.5})


def test_run_evaluate_subprocess_success_and_failure():
  ok = tables.run_evaluate([sys.executable, '-c',
                            'print("progress"); print(\'{"accuracy": 0.5}\')'])
  assert ok == {'accuracy': 0.5}
  with pytest.raises(tables.EvaluateError, match=r'exit 2: error: boom'):
    tables.run_evaluate([sys.executable, '-c',
                         'import sys; print("log", file=sys.stderr); '
                         'print("error: boom", file=sys.stderr); sys.exit(2)'])
  with pytest.raises(tables.EvaluateError, match='no JSON'):
    tables.run_evaluate([sys.executable, '-c', 'print("nothing")'])


@pytest.mark.parametrize('argv, flag', [
    (['--checkpoints', '{tmp}'], '--data_dir'),
    (['--data_dir', '{tmp}'], '--checkpoints'),
    (['--checkpoints', '{tmp}/missing', '--data_dir', '{tmp}'], '--checkpoints'),
    (['--family', 'vitt'], '--family'),
])
def test_cli_errors_name_the_flag(argv, flag, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    tables.main([a.format(tmp=tmp_path) for a in argv] + ['--out', str(tmp_path / 'o')])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert flag in err
  assert not (tmp_path / 'o').exists()


def test_a_model_without_a_paper_row_still_gets_a_row(monkeypatch):
  """A newly registered model shows up with our numbers and '-' for the paper's."""
  monkeypatch.setattr(pn, 'rows_for', lambda name: ())
  monkeypatch.setattr(tables, 'count_model', lambda name, size, flops=True: (1_500_000, None))
  rows = tables.build_rows(['shunted_t'], checkpoints='/nowhere', data_dir='/data')
  assert rows[0].label == '-' and rows[0].status == 'no paper row'
  line = tables.markdown_lines(rows)[2]
  assert line == '| shunted_t | - | - | 1.50 / - | - / - | - | - | - | - |'
