"""The example notebooks, executed end to end with nbclient on the local provider, so they never rot."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute(name: str, workdir: Path) -> nbformat.NotebookNode:
    shutil.copy(NOTEBOOKS / name, workdir / name)
    notebook = nbformat.read(workdir / name, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    ).execute()
    return notebook


def outputs(cell) -> tuple[str, list[dict]]:
    text = "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")
    bundles = [out.data for out in cell.outputs if out.output_type in ("display_data", "execute_result")]
    return text, bundles


@pytest.fixture
def workdir(tmp_path, data_dir, monkeypatch) -> Path:
    monkeypatch.setenv("NEXUS_SANDBOX_PROVIDER", "local")
    monkeypatch.setenv("NEXUS_LOCAL_POOL_SIZE", "1")  # as for a user: the notebooks' sandboxes come warm
    return tmp_path


def test_quickstart(workdir, data_dir):
    cells = execute("quickstart.ipynb", workdir).cells
    code = [cell for cell in cells if cell.cell_type == "code"]
    text, bundles = outputs(code[1])
    assert "Python 3." in text and "as uid" in text
    assert bundles[0]["text/plain"] == "{'answer': 42}"
    assert outputs(code[2])[0].startswith("PYTHON 3.")
    assert "JavaScript says [ 2, 4, 6 ]" in outputs(code[3])[0]
    assert "Bash on sandbox, in /home/user" in outputs(code[4])[0]
    assert outputs(code[7])[0] == '{"count":42,"doubled":84}'
    isolation = outputs(code[8])[0]
    assert "network:" in isolation and "host files:" in isolation
    assert outputs(code[10])[0].startswith("still Python")
    assert "application/vnd.jupyter.widget-view+json" in outputs(code[11])[1][0]
    assert "<table" in outputs(code[12])[1][0]["text/html"]
    assert outputs(code[13])[0].startswith("Stopped sandbox")


def test_data_analysis(workdir):
    cells = [cell for cell in execute("data-analysis.ipynb", workdir).cells if cell.cell_type == "code"]
    summary = outputs(cells[3])[1]
    assert "<table" in summary[0]["text/html"] and "north" in summary[0]["text/html"]
    chart = outputs(cells[4])[1]
    assert any("image/png" in bundle for bundle in chart)
    assert [out for out in cells[4].outputs if out.get("name") == "stderr"] == []  # e.g. no fontconfig warnings
    assert "Best region:" in outputs(cells[5])[0]
    assert (workdir / "report.md").read_text().startswith("# Sales report")
    assert "Rows: 48" in outputs(cells[7])[0]
