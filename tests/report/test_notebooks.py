"""The notebooks in notebooks/, executed top to bottom against real demo runs.

Any cell error fails the test (nbclient raises CellExecutionError).  The
committed files must carry no outputs: they would leak paths and data of
whoever ran them last, and make every diff noisy.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from wiseverify.core.config import VerifyConfig
from wiseverify.run.driver import verify

from ..demo_runs import copy_run, demo_details

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = ["explore_run.ipynb", "cutover_dashboard.ipynb"]


def execute(name: str) -> nbformat.NotebookNode:
    """Run a notebook in a fresh kernel from the notebooks directory; returns it with outputs."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def outputs_text(nb: nbformat.NotebookNode) -> tuple[str, list[str]]:
    """All printed/displayed text, and the MIME types that were displayed."""
    text, mimes = [], []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", out
            if out.get("output_type") == "stream":
                text.append(out["text"])
            for mime, data in out.get("data", {}).items():
                mimes.append(mime)
                if mime in ("text/plain", "text/html"):
                    text.append(data if isinstance(data, str) else "".join(data))
    return "\n".join(text), mimes


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebooks_have_no_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", [])


def test_explore_run(demo_run, monkeypatch):  # noqa: F811
    summary = json.loads((demo_run / "summary.json").read_text())
    monkeypatch.setenv("WISEVERIFY_RUN_DIR", str(demo_run))
    monkeypatch.delenv("WISEVERIFY_STATUS", raising=False)
    monkeypatch.delenv("WISEVERIFY_PREFIX", raising=False)
    text, mimes = outputs_text(execute("explore_run.ipynb"))
    assert summary["run_id"] in text and "verdict FAIL" in text
    assert f"{summary['discrepancies']} rows with status other than MATCH/SKIPPED" in text
    assert "data/missing.csv" in text and "big/multipart_flip.bin" in text
    assert mimes.count("image/svg+xml") == 2

    # filtered by status and prefix
    monkeypatch.setenv("WISEVERIFY_STATUS", "CONTENT_MISMATCH")
    monkeypatch.setenv("WISEVERIFY_PREFIX", "docs/")
    text, _ = outputs_text(execute("explore_run.ipynb"))
    assert "1 rows with status CONTENT_MISMATCH under 'docs/'" in text
    assert "docs/edited.txt" in text and "big/multipart_flip.bin" not in text.split(
        "rows with status")[1]


def test_cutover_dashboard(demo_run, s3, dask_client, tmp_path, monkeypatch):  # noqa: F811
    """Two dry runs under one root: the missing file is uploaded between them."""
    root = tmp_path / "runs"
    root.mkdir()
    copy_run(demo_run, root, "dryrun-1")
    d = demo_details()
    s3.client().put_object(Bucket=d["bucket"], Key="wise/data/missing.csv",
                           Body=(d["source"] / "data" / "missing.csv").read_bytes())
    second = verify(VerifyConfig(source=str(d["source"]), dest=f"s3://{d['bucket']}/wise/",
                                 out=str(root / "dryrun-2"), endpoint_url=s3.url),
                    dask_client, log=None)
    assert second["counts"]["MISSING_IN_DEST"] == 0

    monkeypatch.setenv("WISEVERIFY_RUNS_ROOT", str(root))
    monkeypatch.setenv("WISEVERIFY_AUDIT", "1")
    text, mimes = outputs_text(execute("cutover_dashboard.ipynb"))
    assert "dryrun-1" in text and "dryrun-2" in text
    assert mimes.count("image/svg+xml") == 3
    assert "NO-GO" in text  # the second run still has discrepancies
    assert "intact" in text and "PROBLEM" not in text
