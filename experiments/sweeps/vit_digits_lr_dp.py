"""The README's sweep: learning rate x drop-path rate of the ViT quickstart, shortened to 20
epochs (440 steps each). Measured on a 2-core CPU: the 6 runs took 9 min 55 s of CPU time
(19 min 39 s wall while other jobs shared the machine).

  python -m swin_jax.sweep --sweep=experiments/sweeps/vit_digits_lr_dp.py --dir=runs/sweep_vit

The format of this file: python -m swin_jax.sweep --help.
"""


def get_sweep():
  return {
      'config': 'configs/demo/vit_digits.py',
      'base': {
          'num_epochs': 20,  # the demo's 60 epochs / 3: 440 steps of batch 64
          'eval_every_steps': 88,  # every 4 epochs: eval curves in summary.png
      },
      'grid': {
          'optimizer.lr': [5e-4, 2e-3, 8e-3],  # the demo uses 2e-3
          'model.drop_path_rate': [0.0, 0.2],
      },
  }
