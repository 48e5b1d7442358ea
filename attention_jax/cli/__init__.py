"""The `attention-jax` command line."""
