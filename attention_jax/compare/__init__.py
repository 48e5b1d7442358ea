"""Compare attention mechanisms by training the same small model with each.

`attention-jax compare` is the command-line front end; `run_compare` in
`attention_jax.compare.report` runs it from Python.
"""
