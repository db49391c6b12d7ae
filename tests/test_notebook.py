"""The example notebook (examples/attnviz.ipynb) runs from top to bottom in a fresh kernel, on
the bundled models, and each view shows as a figure."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
PLOTLY = "application/vnd.plotly.v1+json"


def test_example_notebook_runs_and_shows_every_view(tmp_path, minilm, dinov2):  # models fetched once
    nb = nbformat.read(ROOT / "examples" / "attnviz.ipynb", as_version=4)
    # the kernel imports the same attnviz as these tests (the installed one, or the clone's)
    package_dir = Path(importlib.util.find_spec("attnviz").origin).parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(package_dir), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute(env=env)

    shown = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, errors
        last = cell.source.strip().splitlines()[-1]
        if last.startswith("figures."):
            results = [o for o in cell.outputs if o.output_type in ("execute_result", "display_data")]
            assert results, f"{last} showed nothing"
            shown[last.split("(")[0]] = results[0].data
    views = {"figures.heatmap", "figures.overview", "figures.lines", "figures.focus", "figures.highlight",
             "figures.flow", "figures.distance", "figures.rollout", "figures.overlay"}
    assert set(shown) == views
    for name in views - {"figures.overlay"}:
        assert PLOTLY in shown[name], (name, list(shown[name]))
        assert shown[name][PLOTLY]["data"], name
    assert "image/png" in shown["figures.overlay"]  # a PIL image
    assert (tmp_path / "heatmap.svg").read_text().startswith("<svg")
    assert "<script" in (tmp_path / "report.html").read_text()
