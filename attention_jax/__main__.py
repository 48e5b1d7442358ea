"""Run the `attention-jax` command line as `python -m attention_jax`."""

import sys

from attention_jax.cli.main import main

sys.exit(main())
