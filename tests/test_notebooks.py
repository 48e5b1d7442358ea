"""Run every notebook in `notebooks/` top to bottom, in process.

Code cells run in order in one namespace with the Agg backend, so a cell
that raises fails the test; no Jupyter kernel is needed.
"""

from __future__ import annotations

import json
import pathlib

import matplotlib
import pytest

NOTEBOOKS = sorted(
    (pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_top_to_bottom(path, monkeypatch):
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  monkeypatch.setenv("ATTENTION_JAX_QUICK", "1")
  notebook = json.loads(path.read_text(encoding="utf-8"))
  namespace = {"__name__": "__main__"}
  for index, cell in enumerate(notebook["cells"]):
    if cell["cell_type"] != "code":
      continue
    source = "".join(cell["source"])
    code = compile(source, f"{path.name} cell {index}", "exec")
    exec(code, namespace)  # noqa: S102 - running the notebook is the test
  plt.close("all")


def test_notebooks_have_no_outputs():
  for path in NOTEBOOKS:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    for cell in notebook["cells"]:
      if cell["cell_type"] == "code":
        assert cell["outputs"] == [], f"{path.name} has committed outputs"
        assert cell["execution_count"] is None, path.name


def test_notebooks_exist():
  assert NOTEBOOKS, "notebooks/ holds no notebook"
