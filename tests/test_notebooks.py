"""Every notebook in ``notebooks/`` runs top to bottom, and its figures are committed and linked.

The notebooks are jupytext percent-format ``.py`` files (see ``notebooks/README.md``). Each one
is converted with jupytext and executed by nbclient in a Jupyter kernel, in a temporary
directory, as a researcher would run it (cells in order, IPython semantics). We use nbclient
rather than ``runpy`` because a plain script run would not catch what only breaks in a kernel
(IPython-only syntax, display, the working directory being the notebook's).

The kernel is this interpreter: the test writes a kernelspec whose command is
``sys.executable -m ipykernel_launcher`` into a temporary ``JUPYTER_PATH`` under a name of its
own, so no user- or system-level ``python3`` kernelspec can substitute another Python.

Under test the kernel gets ``RANKAX_NOTEBOOK_FAST=1`` (smaller sweeps, fewer training steps),
``MPLBACKEND=Agg`` and ``RANKAX_NOTEBOOK_FIGURES`` pointing into the temporary directory, so the
committed PNGs in ``docs/notebooks/`` are never rewritten by a test run.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

# Test dependencies (the `test` extra); absent on a bare accelerator image, where these skip.
pytest.importorskip("ipykernel")  # the kernel below runs it
jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.py"))
FIGURES = ROOT / "docs" / "notebooks"
CELL_TIMEOUT_S = 300
KERNEL_NAME = "rankax-notebook-test"
# Notebooks that spend more time running their programs than compiling them (four trainings
# of 100 steps and their held-out evaluations): the kernel compiles them with XLA's full
# optimisation, which the test run otherwise turns down on a CPU (tests/conftest.py).
RUN_BOUND = {"05_training_comparison"}


def _install_kernelspec(jupyter_path: Path) -> None:
    """A kernelspec that runs ipykernel with this very interpreter."""
    spec_dir = jupyter_path / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "rankax test kernel",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))


def test_notebooks_found():
    assert len(NOTEBOOKS) >= 5, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    figures = tmp_path / "figures"
    monkeypatch.setenv("RANKAX_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("RANKAX_NOTEBOOK_FIGURES", str(figures))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    if path.stem in RUN_BOUND:  # conftest: optimising its programs pays
        monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "0")
    _install_kernelspec(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # The checkout's rankax, also when it is not installed in the environment.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    notebook = jupytext.read(path)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError with the cell and traceback on failure

    written = sorted(p.name for p in figures.glob("*.png"))
    assert written, f"{path.name} saved no figure"
    prefix = path.stem.split("_")[0] + "_"
    assert all(name.startswith(prefix) for name in written), written
    # The committed copies exist and notebooks/README.md links them (viewable without running).
    readme = (ROOT / "notebooks" / "README.md").read_text()
    for name in written:
        assert (FIGURES / name).is_file(), f"docs/notebooks/{name} is not committed"
        link = rf"\(\.\./docs/notebooks/{re.escape(name)}\)"
        assert re.search(link, readme), f"notebooks/README.md does not link {name}"
