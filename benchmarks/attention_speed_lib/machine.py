"""Machine, package versions, git revision and command line of a run, recorded with its results."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from typing import Any

import jax


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_revision() -> str | None:
    """Return the git commit of the checkout, marked "+ uncommitted changes" when attention_jax/ differs from it."""
    # This file is benchmarks/attention_speed_lib/machine.py, three levels below the repository root.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "attention_jax"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit} + uncommitted changes" if changes else commit


def command_line() -> str:
    """Return the command that started this run, as a user would type it from the current folder."""
    return shlex.join(["python", os.path.relpath(sys.argv[0])] + sys.argv[1:])


def machine_info() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_backend": jax.default_backend(),
        "jax_device": jax.devices()[0].device_kind,
        "versions": {name: package_version(name) for name in ("jax", "jaxlib", "numpy", "torch", "tokamax")},
        "attention_jax_revision": library_revision(),
        "load_average_at_start": os.getloadavg(),
    }


def torch_threads() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()
