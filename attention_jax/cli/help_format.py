"""Help formatting shared by the `attention-jax` subcommands."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """Append "(default: ...)" to option help, except for None defaults.

  Options whose default is None describe it in their own help text (for
  example "default: the standard library"), so "(default: None)" would only
  repeat it less clearly.
  """

  def _get_help_string(self, action):
    if action.default is None:
      return action.help
    return super()._get_help_string(action)
