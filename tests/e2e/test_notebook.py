"""notebooks/figures.ipynb: committed without outputs, and it runs top to bottom on a run
directory (a synthetic one here; test_pipeline runs it on a real smoke run)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.support.fake_run import make_fake_run

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "figures.ipynb"


def execute(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    """Run every cell with the venv's python3 kernel, cwd = notebooks/, as a person would."""
    monkeypatch.setenv("LOOPDEPTH_RUN_DIR", str(run_dir))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    return notebook


def images(notebook: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def test_notebook_is_committed_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None


def test_notebook_runs_on_a_synthetic_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = execute(make_fake_run(tmp_path / "fake-seed2026"), monkeypatch)
    assert images(notebook) >= 6  # the five figures and the zoomed restyle
