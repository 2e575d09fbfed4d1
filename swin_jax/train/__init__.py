"""Train state, sharded steps, optimizers, checkpointing and the shared loop."""
