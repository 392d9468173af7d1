"""Every notebook in ``notebooks/`` runs top to bottom, and its figures are committed and linked.

The notebooks are jupytext percent-format ``.py`` files (see ``notebooks/README.md``). Each one
is converted with jupytext and executed by nbclient in a Jupyter kernel, in a temporary
directory, as a researcher would run it (cells in order, IPython semantics, the kernel of this
environment). We use nbclient rather than ``runpy`` because a plain script run would not catch
what only breaks in a kernel (IPython-only syntax, display, the working directory being the
notebook's); the kernel is the ``python3`` kernelspec of the running interpreter (``ipykernel``
is a test dependency; jupyter_client starts it with ``sys.executable``).

Under test the kernel gets ``RANKAX_NOTEBOOK_FAST=1`` (smaller sweeps, fewer training steps),
``MPLBACKEND=Agg`` and ``RANKAX_NOTEBOOK_FIGURES`` pointing into the temporary directory, so the
committed PNGs in ``docs/notebooks/`` are never rewritten by a test run.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.py"))
FIGURES = ROOT / "docs" / "notebooks"
CELL_TIMEOUT_S = 300


def test_notebooks_found():
    assert len(NOTEBOOKS) >= 5, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    figures = tmp_path / "figures"
    monkeypatch.setenv("RANKAX_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("RANKAX_NOTEBOOK_FIGURES", str(figures))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    notebook = jupytext.read(path)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
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


def test_kernel_is_this_interpreter():
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    # jupyter_client replaces a bare "python" by sys.executable when it starts the kernel.
    assert spec.argv[0] in ("python", "python3", sys.executable), spec.argv
