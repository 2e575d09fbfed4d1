#!/usr/bin/env python3
"""Train on a Cloud TPU VM: create or reuse it, install this repository on every worker, and
launch a config on all workers at once (one process per host, joined by jax.distributed).

  python experiments/tpu/launch.py up --name=swin-v4 --zone=us-central2-b \\
      --accelerator-type=v4-32 --config=configs/swin/swin_i1k.py:T \\
      --workdir=gs://BUCKET/swin_t --data-dir=gs://BUCKET/tensorflow_datasets \\
      [--config.FIELD=VALUE ...] [--dry-run]

Subcommands (each takes --name, --zone, [--project], [--dry-run]):
  create   creates the TPU VM unless `gcloud compute tpus tpu-vm describe` finds it (then it
           is reused; a STOPPED one is started)
  install  ships this working tree to every worker (`tpu-vm scp --worker=all` of a tarball of
           `git ls-files --cached --others --exclude-standard`: tracked and untracked files,
           nothing ignored, uncommitted edits included), or `git clone`s --repo there, into
           ~/swin_jax, and `pip install -e`s it with jax[tpu] (`tpu-vm ssh --worker=all`)
  launch   starts `python -m swin_jax.main ... --config.distributed.initialize=True` on every
           worker at once (`ssh --worker=all`), detached with setsid + nohup so it outlives
           the ssh session; each worker logs to ~/swin_jax_runs/RUN/train.log (RUN: --run-name,
           by default the last part of --workdir). Launching again resumes from the last
           checkpoint in --workdir.
  up       create + install + launch
  status   the VM's state, and on every worker whether the run's process is alive
  logs     the last --lines lines of the run's log on --worker (0; 'all' for every worker)
  stop     sends SIGTERM to the run on every worker: it saves a checkpoint and exits
  delete   deletes the TPU VM (checkpoints stay in the bucket)

--dry-run prints every command this would run, one per line, shell-quoted so it can be
copy-pasted, and runs nothing (gcloud need not be installed). Whether the VM exists is then
unknown, so `create` prints `describe ... || create ...`, which decides it the same way.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, TextIO

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REMOTE_DIR = '~/swin_jax'  # the repository on every worker (python -m runs from here)
RUNS_DIR = '~/swin_jax_runs'  # <run>/train.log and <run>/pid on every worker
TARBALL = 'swin_jax-src.tar.gz'  # in the home directory of every worker
LIBTPU_INDEX = 'https://storage.googleapis.com/jax-releases/libtpu_releases.html'
# Runtime (--version) by accelerator family, as the Cloud TPU docs recommend for JAX.
RUNTIMES = {'v2': 'tpu-ubuntu2204-base', 'v3': 'tpu-ubuntu2204-base',
            'v4': 'tpu-ubuntu2204-base', 'v5p': 'v2-alpha-tpuv5',
            'v5litepod': 'v2-alpha-tpuv5-lite', 'v6e': 'v2-alpha-tpuv6e'}
_ACCELERATOR = re.compile(r'(v2|v3|v4|v5p|v5litepod|v6e)-(\d+)')
_VM_NAME = re.compile(r'[a-z]([-a-z0-9]{0,61}[a-z0-9])?')  # GCP resource name rules
_RUN_NAME = re.compile(r'[A-Za-z0-9._-]+')
_GCS = re.compile(r'gs://[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9](/.*)?')
_OVERRIDE = re.compile(r'--config\.[A-Za-z_][A-Za-z0-9_.]*=.*', re.S)
_SKIP_DIRS = {'.git', '.venv', 'runs', 'build', '__pycache__', '.pytest_cache', '.hypothesis'}


class UsageError(ValueError):
  """A mistake on the command line; the message names the flag and the fix."""


class CommandError(RuntimeError):
  """A command (gcloud) exited with an error."""


# ----------------------------------------------------------------------------- inputs
def is_multi_host(accelerator_type: Optional[str]) -> Optional[bool]:
  """Whether a slice spans several hosts (TPU VM workers); None if the type is unknown.

  Single-host slices are at most 8 in the type's count: v2-8, v3-8, v4-8, v5p-8 (TensorCores)
  and v5litepod-8, v6e-8 (chips); anything larger has several hosts.
  """
  m = _ACCELERATOR.fullmatch(accelerator_type or '')
  return None if m is None else int(m.group(2)) > 8


def check_config(spec: str) -> str:
  """``--config=PATH[:ARG]`` -> the same with PATH relative to the repository root (the
  workers run from their copy of it). PATH may be relative to the current directory or to
  the repository root."""
  path, sep, arg = spec.partition(':')
  candidates = [path] if os.path.isabs(path) else [os.path.join(os.getcwd(), path),
                                                   os.path.join(ROOT, path)]
  for c in candidates:
    if os.path.isfile(c):
      rel = os.path.relpath(os.path.realpath(c), os.path.realpath(ROOT))
      if rel.startswith('..'):
        raise UsageError(f'--config={spec}: {c} is outside the repository ({ROOT}); the '
                         f'workers only get the repository. Put the config under configs/.')
      return rel.replace(os.sep, '/') + sep + arg
  known = sorted(os.path.relpath(p, ROOT) for p in glob.glob(
      os.path.join(ROOT, 'configs', '**', '*.py'), recursive=True))
  known = [k for k in known if not os.path.basename(k).startswith('_')
           and os.path.basename(k) != 'common.py']
  raise UsageError(f'--config={spec}: {path} does not exist. Available: {", ".join(known)}')


def check_workdir(workdir: Optional[str], accelerator_type: Optional[str]) -> None:
  """A multi-host slice needs a workdir every host reaches: a GCS bucket."""
  if not workdir:
    raise UsageError('--workdir is required: gs://BUCKET/PATH, where checkpoints, '
                     'metrics.jsonl and config.json go (every host writes there).')
  if workdir.startswith('gs://'):
    if not _GCS.fullmatch(workdir):
      raise UsageError(f'--workdir={workdir} is not a gs://BUCKET/PATH address (bucket names: '
                       f'3-222 lowercase letters, digits, -, _ and .).')
    return
  if '://' in workdir:
    raise UsageError(f'--workdir={workdir}: only gs:// buckets (or a local path on a '
                     f'single-host VM) are supported.')
  multi = is_multi_host(accelerator_type)
  if multi is False:
    return
  what = (f'--accelerator-type={accelerator_type} spans several hosts' if multi else
          'the TPU VM may span several hosts (pass --accelerator-type to tell, e.g. v4-8 for '
          'a single host)')
  raise UsageError(f'--workdir={workdir} is a local path, but {what}: each host would write '
                   f'its own checkpoints to its own disk and the run could not save or '
                   f'resume. Use a bucket the VM can write: --workdir=gs://BUCKET/'
                   f'{os.path.basename(workdir.rstrip("/")) or "run"}.')


def check_overrides(extra: Sequence[str], data_dir: Optional[str]) -> List[str]:
  """The ``--config.FIELD=VALUE`` arguments given after the flags, passed on verbatim."""
  for a in extra:
    if a == '--':
      continue
    if not _OVERRIDE.fullmatch(a):
      raise UsageError(f'unexpected argument {a!r}: config overrides are '
                       f'--config.FIELD=VALUE (one argument, with "="), e.g. '
                       f'--config.optimizer.lr=1e-3.')
    if data_dir and a.startswith('--config.input.data_dir='):
      raise UsageError(f'{a} repeats --data-dir={data_dir}: give the data dir once.')
  return [a for a in extra if a != '--']


def run_name(args) -> str:
  """--run-name, else the last part of --workdir (names the log dir on the workers)."""
  name = args.run_name or os.path.basename((args.workdir or '').rstrip('/'))
  if not name:
    raise UsageError('--run-name (or --workdir, whose last part names the run) is required.')
  if not _RUN_NAME.fullmatch(name):
    raise UsageError(f'run name {name!r} (--run-name, or the end of --workdir): use letters, '
                     f'digits, ".", "_" and "-" only.')
  return name


# ----------------------------------------------------------------------------- commands
def gcloud(args, verb: str, *positional: str, flags: Sequence[str] = ()) -> List[str]:
  """``gcloud compute tpus tpu-vm VERB POSITIONAL... --zone=Z [--project=P] FLAGS...``."""
  cmd = ['gcloud', 'compute', 'tpus', 'tpu-vm', verb, *positional, f'--zone={args.zone}']
  if args.project:
    cmd.append(f'--project={args.project}')
  return cmd + list(flags)


def ssh(args, command: str, worker: str = 'all') -> List[str]:
  """Runs a shell command on the workers (all of them at once by default)."""
  return gcloud(args, 'ssh', args.name, flags=[f'--worker={worker}', '--command', command])


def _q(s: str) -> str:
  """Shell-quotes for the remote command, with double quotes where they are literal, so the
  printed gcloud line (which single-quotes the whole command) stays readable."""
  if shlex.quote(s) == s:
    return s
  if not any(c in s for c in '$`\\"!\n'):
    return f'"{s}"'
  return shlex.quote(s)


def create_command(args) -> List[str]:
  family = _ACCELERATOR.fullmatch(args.accelerator_type)
  version = args.version or (RUNTIMES[family.group(1)] if family else None)
  if not version:
    raise UsageError(f'--version is required for --accelerator-type={args.accelerator_type} '
                     f'(a TPU runtime, e.g. tpu-ubuntu2204-base; see `gcloud compute tpus '
                     f'tpu-vm versions list --zone={args.zone}`).')
  cmd = gcloud(args, 'create', args.name, flags=[
      f'--accelerator-type={args.accelerator_type}', f'--version={version}'])
  if args.spot:
    cmd.append('--spot')
  if args.preemptible:
    cmd.append('--preemptible')
  return cmd


def install_command(args) -> str:
  """The shell command every worker runs to (re)place the repository and pip install it."""
  if args.repo:
    fetch = f'git clone --quiet {_q(args.repo)} {REMOTE_DIR}'
    if args.ref:
      fetch += f' && git -C {REMOTE_DIR} checkout --quiet {_q(args.ref)}'
  else:
    fetch = f'mkdir -p {REMOTE_DIR} && tar -xzf {TARBALL} -C {REMOTE_DIR}'
  return (f'set -e; rm -rf {REMOTE_DIR}; {fetch}; '
          f'python3 -m pip install --quiet --upgrade pip; '
          f'python3 -m pip install --quiet -e {REMOTE_DIR} {_q(args.jax)} '
          f'-f {LIBTPU_INDEX}; '
          f'echo "$(hostname): installed swin_jax in {REMOTE_DIR}"')


def _run_files(name: str) -> Dict[str, str]:
  d = f'{RUNS_DIR}/{name}'
  return {'dir': d, 'log': f'{d}/train.log', 'pid': f'{d}/pid'}


def _alive(pid_file: str) -> str:
  """Shell test: the pid file names a live swin_jax.main process."""
  return f'[ -f {pid_file} ] && grep -qs swin_jax.main /proc/"$(cat {pid_file})"/cmdline'


def train_argv(args, overrides: Sequence[str]) -> List[str]:
  """The training command each worker runs (one process per host)."""
  argv = ['python3', '-m', 'swin_jax.main', f'--config={args.config}',
          f'--workdir={args.workdir}', '--config.distributed.initialize=True']
  if args.data_dir:
    argv.append(f'--config.input.data_dir={args.data_dir}')
  return argv + list(overrides)


def launch_command(args, overrides: Sequence[str]) -> str:
  """Starts training detached (setsid nohup, stdin/out/err redirected, so ssh returns and
  the run outlives the session); the log is appended to, so a resumed run keeps the old one."""
  f = _run_files(args.run_name)
  return (f'set -e; mkdir -p {f["dir"]}; cd {REMOTE_DIR}; '
          f'if {_alive(f["pid"])}; then echo "$(hostname): run {args.run_name} is still '
          f'running (pid $(cat {f["pid"]})): stop it first" >&2; exit 1; fi; '
          f'echo "=== $(date -u +%FT%TZ) launch on $(hostname)" >> {f["log"]}; '
          f'setsid nohup {" ".join(map(_q, train_argv(args, overrides)))} >> {f["log"]} 2>&1 '
          f'< /dev/null & echo $! > {f["pid"]}; '
          f'echo "$(hostname): started {args.run_name} (pid $(cat {f["pid"]})), log {f["log"]}"')


def status_command(name: str) -> str:
  f = _run_files(name)
  return (f'if {_alive(f["pid"])}; then echo "$(hostname): {name} running (pid '
          f'$(cat {f["pid"]}))"; else echo "$(hostname): {name} not running"; fi; '
          f'tail -n 1 {f["log"]} 2>/dev/null || true')


def logs_command(name: str, lines: int) -> str:
  f = _run_files(name)
  return f'tail -n {int(lines)} {f["log"]} | sed "s/^/[$(hostname)] /"'


def stop_command(name: str) -> str:
  f = _run_files(name)
  return (f'if {_alive(f["pid"])}; then kill -TERM "$(cat {f["pid"]})" && echo "$(hostname): '
          f'sent SIGTERM to {name}: it saves a checkpoint and exits"; else echo '
          f'"$(hostname): {name} is not running"; fi')


# ----------------------------------------------------------------------------- running
class Shell:
  """Runs commands, or with dry_run prints them (one per line, shell-quoted) instead."""

  def __init__(self, dry_run: bool, run: Callable = subprocess.run,
               out: Optional[TextIO] = None):
    self.dry_run = dry_run
    self._run = run
    self.out = out or sys.stdout

  def echo(self, line: str):
    print(line, file=self.out, flush=True)

  def note(self, text: str):
    """A comment line: keeps a dry run's output a valid shell script."""
    self.echo(f'# {text}')

  def __call__(self, cmd: Sequence[str], shell_line: Optional[str] = None):
    line = shell_line or shlex.join(cmd)
    if self.dry_run:
      self.echo(line)
      return
    print(f'+ {line}', file=sys.stderr, flush=True)
    try:
      rc = self._run(list(cmd)).returncode
    except FileNotFoundError:
      raise UsageError(f'{cmd[0]} is not installed: install the Google Cloud CLI '
                       f'(https://cloud.google.com/sdk/docs/install), run `gcloud auth '
                       f'login`, or add --dry-run to print the commands.') from None
    if rc:
      raise CommandError(f'exit status {rc}: {line}')


def describe_vm(args, run: Callable = subprocess.run) -> Optional[dict]:
  """The TPU VM's description (state, acceleratorType, ...), or None if describe fails (the
  VM does not exist; any other failure shows again in the create that follows)."""
  cmd = gcloud(args, 'describe', args.name, flags=['--format=json'])
  print(f'+ {shlex.join(cmd)}', file=sys.stderr, flush=True)
  try:
    p = run(cmd, capture_output=True, text=True)
  except FileNotFoundError:
    raise UsageError('gcloud is not installed: install the Google Cloud CLI '
                     '(https://cloud.google.com/sdk/docs/install) or add --dry-run.') from None
  if p.returncode:
    return None
  return json.loads(p.stdout or '{}')


def source_files(root: str = ROOT) -> List[str]:
  """Files to ship: git's tracked and untracked, not ignored (the working tree as it is);
  without git, every file but caches, .venv, runs/ and build outputs."""
  try:
    out = subprocess.run(['git', '-C', root, 'ls-files', '-z', '--cached', '--others',
                          '--exclude-standard'], capture_output=True, check=True).stdout
    files = [f for f in out.decode().split('\0') if f]
  except (OSError, subprocess.CalledProcessError):
    files = []
    for d, dirs, names in os.walk(root):
      dirs[:] = [x for x in dirs if x not in _SKIP_DIRS and not x.endswith('.egg-info')]
      files += [os.path.relpath(os.path.join(d, n), root) for n in names]
  return sorted(f for f in files if os.path.isfile(os.path.join(root, f)))  # not deleted ones


def pack_tree(dest: str, root: str = ROOT) -> int:
  """Writes the tarball of ``source_files`` to dest; returns the number of files."""
  files = source_files(root)
  with tarfile.open(dest, 'w:gz') as tar:
    for f in files:
      tar.add(os.path.join(root, f), arcname=f, recursive=False)
  return len(files)


# ----------------------------------------------------------------------------- steps
def ensure_vm(args, sh: Shell, describe: Optional[Callable]) -> Optional[dict]:
  """Creates the VM unless it exists (then reuses it). Returns its description, or None when
  unknown (a dry run without a describe to ask)."""
  create = create_command(args)
  if describe is None:
    sh.note(f'create TPU VM {args.name} unless it exists (then it is reused):')
    sh(create, shlex.join(gcloud(args, 'describe', args.name, flags=['--format=json'])) +
       ' >/dev/null 2>&1 || ' + shlex.join(create))
    return None
  info = describe(args)
  if info is None:
    sh.note(f'TPU VM {args.name} does not exist in {args.zone}: creating it')
    sh(create)
    return {'acceleratorType': args.accelerator_type, 'state': 'READY'}
  accel, state = info.get('acceleratorType'), info.get('state', 'UNKNOWN')
  if args.accelerator_type and accel and accel != args.accelerator_type:
    raise UsageError(f'TPU VM {args.name} exists as {accel}, not --accelerator-type='
                     f'{args.accelerator_type}: give --accelerator-type={accel} to reuse it, '
                     f'or another --name (or `delete` it first) for a new one.')
  if state in ('PREEMPTED', 'TERMINATED'):
    raise UsageError(f'TPU VM {args.name} is {state} and cannot be restarted: delete it '
                     f'(python experiments/tpu/launch.py delete --name={args.name} '
                     f'--zone={args.zone}) and run this command again; training resumes '
                     f'from the last checkpoint in the workdir.')
  if state == 'STOPPED':
    sh.note(f'TPU VM {args.name} is STOPPED: starting it')
    sh(gcloud(args, 'start', args.name))
  elif state != 'READY':
    raise UsageError(f'TPU VM {args.name} is {state}: wait until `status` says READY, then '
                     f'run this command again.')
  else:
    sh.note(f'reusing TPU VM {args.name} ({accel}, {state})')
  return info


def install(args, sh: Shell):
  if not args.repo:
    tarball = os.path.join(tempfile.gettempdir(), f'swin_jax-src-{args.name}.tar.gz')
    if sh.dry_run:
      sh.note(f'pack the working tree of {ROOT} (git ls-files --cached --others '
              f'--exclude-standard) into {tarball}')
    else:
      n = pack_tree(tarball)
      sh.note(f'packed {n} files of {ROOT} into {tarball}')
    sh(gcloud(args, 'scp', tarball, f'{args.name}:{TARBALL}', flags=['--worker=all']))
  sh(ssh(args, install_command(args)))


def launch(args, sh: Shell, overrides: Sequence[str]):
  sh.note(f'every worker runs: cd {REMOTE_DIR} && '
          f'{" ".join(map(_q, train_argv(args, overrides)))}')
  sh(ssh(args, launch_command(args, overrides)))
  sh.note(f'logs: python experiments/tpu/launch.py logs --name={args.name} '
          f'--zone={args.zone} --run-name={args.run_name}  (on each worker: '
          f'{_run_files(args.run_name)["log"]}); checkpoints: {args.workdir}/checkpoints')


def check_launch_args(args, extra: Sequence[str], accelerator_type: Optional[str]):
  if not args.config:
    raise UsageError('--config=configs/....py[:ARG] is required (the experiment to train).')
  args.config = check_config(args.config)
  check_workdir(args.workdir, accelerator_type)
  args.run_name = run_name(args)
  return check_overrides(extra, args.data_dir)


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
  common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  common.add_argument('--name', required=True, help='TPU VM name, e.g. swin-v4-32.')
  common.add_argument('--zone', required=True, help='e.g. us-central2-b (v4), us-west4-a.')
  common.add_argument('--project', help='GCP project (default: gcloud config).')
  common.add_argument('--dry-run', action='store_true',
                      help='Print every command (shell-quoted), run nothing.')
  vm = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  vm.add_argument('--accelerator-type', help='e.g. v4-8, v4-32, v5litepod-16, v6e-8.')
  vm.add_argument('--version', help='TPU runtime, e.g. tpu-ubuntu2204-base (default: the '
                  'recommended one of the accelerator family).')
  vm.add_argument('--spot', action='store_true', help='Create a Spot TPU VM.')
  vm.add_argument('--preemptible', action='store_true', help='Create a preemptible TPU VM.')
  src = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  src.add_argument('--repo', help='git clone this URL on the workers instead of shipping '
                   'the local working tree.')
  src.add_argument('--ref', help='With --repo: the branch, tag or commit to check out.')
  src.add_argument('--jax', default='jax[tpu]', help='pip requirement for JAX on TPU.')
  run = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  run.add_argument('--config', help='configs/....py[:ARG], relative to the repository.')
  run.add_argument('--workdir', help='gs://BUCKET/PATH: checkpoints, metrics, config.json.')
  run.add_argument('--data-dir', help='tfds data dir, e.g. gs://BUCKET/tensorflow_datasets.')
  run.add_argument('--run-name', help='Names the log dir on the workers (default: the last '
                   'part of --workdir).')
  logs = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  logs.add_argument('--worker', default='0', help="Worker index, or 'all'.")
  logs.add_argument('--lines', type=int, default=50)

  p = argparse.ArgumentParser(
      prog='python experiments/tpu/launch.py', allow_abbrev=False, description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog='Config overrides (--config.FIELD=VALUE) follow the flags of launch / up.')
  sub = p.add_subparsers(dest='command', required=True)
  helps = {'create': 'Create the TPU VM, or reuse it.',
           'install': 'Install this repository and jax[tpu] on every worker.',
           'launch': 'Start training on every worker at once.',
           'up': 'create + install + launch.',
           'status': 'VM state and whether the run lives on each worker.',
           'logs': "Tail a worker's log.", 'stop': 'SIGTERM the run (it saves, then exits).',
           'delete': 'Delete the TPU VM.'}
  parents = {'create': [common, vm], 'install': [common, src], 'launch': [common, vm, run],
             'up': [common, vm, src, run], 'status': [common, run], 'logs': [common, run, logs],
             'stop': [common, run], 'delete': [common]}
  for name, ps in parents.items():
    sub.add_parser(name, parents=ps, help=helps[name], allow_abbrev=False)
  return p


def main(argv: Optional[Sequence[str]] = None, *, describe: Optional[Callable] = None,
         run: Callable = subprocess.run, out: Optional[TextIO] = None) -> int:
  """The CLI. ``describe(args) -> dict | None`` (does the VM exist?) and ``run`` (executes a
  command) are injectable for tests; by default describe asks gcloud, except in a dry run
  (unknown: the printed commands decide)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  sh = Shell(args.dry_run, run=run, out=out)
  if describe is None and not args.dry_run:
    describe = lambda a: describe_vm(a, run=run)  # pylint: disable=unnecessary-lambda-assignment
  try:
    if args.command not in ('launch', 'up') and extra:
      hint = (' (config overrides go to launch and up only)'
              if any(a.startswith('--config.') for a in extra) else '')
      raise UsageError(f'{args.command} does not take {" ".join(extra)}{hint}; see '
                       f'`python experiments/tpu/launch.py {args.command} --help`.')
    if not re.fullmatch(r'all|\d+(,\d+)*', getattr(args, 'worker', 'all')):
      raise UsageError(f"--worker={args.worker}: give a worker index (0, 1, ...) or 'all'.")
    if not _VM_NAME.fullmatch(args.name):
      raise UsageError(f'--name={args.name}: TPU VM names are 1-63 lowercase letters, '
                       f'digits and "-", starting with a letter.')
    if args.command in ('create', 'up'):
      if not args.accelerator_type:
        raise UsageError(f'--accelerator-type is required to {args.command} (e.g. v4-8, '
                         f'v4-32, v5litepod-16), also to check a reused VM matches.')
      if args.spot and args.preemptible:
        raise UsageError('give --spot or --preemptible, not both.')
      create_command(args)  # checks --version before anything runs
    if args.command == 'create':
      ensure_vm(args, sh, describe)
    elif args.command == 'install':
      install(args, sh)
    elif args.command == 'launch':
      accel = args.accelerator_type
      if accel is None and describe is not None:
        info = describe(args)
        if info is None:
          raise UsageError(f'TPU VM {args.name} does not exist in --zone={args.zone}: use '
                           f'`up` (create + install + launch), or `create` and `install` '
                           f'first.')
        accel = info.get('acceleratorType')
      overrides = check_launch_args(args, extra, accel)
      launch(args, sh, overrides)
    elif args.command == 'up':
      overrides = check_launch_args(args, extra, args.accelerator_type)  # before creating
      ensure_vm(args, sh, describe)
      install(args, sh)
      launch(args, sh, overrides)
    elif args.command == 'status':
      name = run_name(args)
      sh(gcloud(args, 'describe', args.name, flags=['--format=value(state,acceleratorType)']))
      sh(ssh(args, status_command(name)))
    elif args.command == 'logs':
      sh(ssh(args, logs_command(run_name(args), args.lines), worker=args.worker))
    elif args.command == 'stop':
      sh(ssh(args, stop_command(run_name(args))))
    elif args.command == 'delete':
      sh(gcloud(args, 'delete', args.name, flags=['--quiet']))
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except CommandError as e:
    print(f'error: a command failed ({e}); nothing after it ran.', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
