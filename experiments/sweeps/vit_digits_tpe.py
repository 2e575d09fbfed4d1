"""A TPE search with pruning over the ViT quickstart, shortened to 10 epochs (220 steps each,
an eval every 44): learning rate on a log scale x drop-path rate, 8 trials, the median pruner
stopping trials that fall behind the finished ones' eval accuracy at the same step.
Measured on a 2-core CPU beside other jobs: 9 min 27 s wall with --parallel=2, 11 min 47 s
with one run at a time; 2 trials finished, 6 pruned (README, "Search and pruning").

  python -m swin_jax.sweep --sweep=experiments/sweeps/vit_digits_tpe.py --dir=runs/sweep_tpe
  python -m swin_jax.sweep --sweep=experiments/sweeps/vit_digits_tpe.py --dir=runs/sweep_tpe \
      --parallel=2    # two trials at once, each on its own share of the devices

The format of this file: python -m swin_jax.sweep --help.
"""


def get_sweep():
  return {
      'config': 'configs/demo/vit_digits.py',
      'base': {
          'num_epochs': 10,  # the demo's 60 epochs / 6: 220 steps of batch 64
          'eval_every_steps': 44,  # every 2 epochs: what the pruner compares
      },
      'search': {
          'sampler': 'tpe',
          'num_trials': 8,
          'seed': 0,
          'sampler_args': {'n_startup_trials': 3},  # random draws before TPE models them
          'params': {
              'optimizer.lr': ('loguniform', 3e-4, 1e-2),  # the demo uses 2e-3
              'model.drop_path_rate': [0.0, 0.1, 0.2],
          },
      },
      # Compare from the second eval (step 88) once 2 trials finished.
      'pruner': {'name': 'median', 'n_startup_trials': 2, 'n_warmup_steps': 50},
  }
