"""``python -m swin_jax.sweep``: see swin_jax/sweep/app.py."""
import sys

from swin_jax.sweep.app import main

sys.exit(main())
