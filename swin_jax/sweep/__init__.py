"""Hyper-parameter sweeps on Optuna (``python -m swin_jax.sweep --help`` for the commands and
the sweep file's format).

  spec.py     the sweep file: validation, fixed runs, search space, each run's command
  study.py    Optuna: storage, study, sampler, pruner, trial <-> run
  execute.py  running trials N at once on this machine's devices, pruning, --launcher
  report.py   summary.csv / .md / .png and Optuna's plots
  app.py      the command line
"""
from swin_jax.sweep.app import main, parse_args
from swin_jax.sweep.execute import Worker, detect_devices, device_slots
from swin_jax.sweep.report import collect, markdown, table, write_summary
from swin_jax.sweep.spec import (PLAN_FILE, RUN_FILE, Run, Search, Sweep, SweepError,
                                 command, expand, final_record, format_value,
                                 load_sweep_file, lower_is_better, override_args,
                                 read_metrics, resolve, run_name, run_status, short_names, slug)
