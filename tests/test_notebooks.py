"""The notebooks run top to bottom on CPU at smoke size, and are committed without outputs.

Each notebook is executed in a fresh ``python3`` kernel (ipykernel) by nbclient, from
``notebooks/`` as Jupyter would start it (its set-up cell moves to the repository root). The
kernel inherits this process's environment: the four simulated CPU devices of conftest.py (so the
batch-size rounding to the device count runs on a real mesh), plus the notebooks' overrides set
here: the ``smoke`` variant and a temporary workdir and data folder, so nothing is written into
the repository. The executed notebook stays in memory; the files on disk are not touched.
"""

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("quickstart.ipynb", "tpu.ipynb")
# Wall-clock budget for a whole notebook (kernel start to last cell). Each runs the smoke pipeline
# (about 1.5 minutes on the 2-core CI machine when it has it to itself) plus a little more.
NOTEBOOK_TIMEOUT_S = 480


def _outputs(nb, cell_id: str) -> tuple[str, list[str]]:
    """All text a cell printed or displayed, and the mime types of its rich outputs."""
    (cell,) = [c for c in nb.cells if c.get("id") == cell_id]
    text, mimes = [], []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            text.append(out.text)
        elif out.output_type in ("display_data", "execute_result"):
            mimes.extend(out.data)
            text.extend(v for k, v in out.data.items() if k.startswith("text/"))
    return "\n".join(text), mimes


def _execute(name: str, tmp_path: Path, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("INTRAKD_NOTEBOOK_VARIANT", "smoke")
    monkeypatch.setenv("INTRAKD_NOTEBOOK_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("INTRAKD_NOTEBOOK_DATA_DIR", str(tmp_path / "data"))
    # What conftest.py sets in this process (compile time dominates tiny programs), for the kernel.
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # no history in the home folder
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")  # jupyter_core's future default, no warning
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    deadline = time.monotonic() + NOTEBOOK_TIMEOUT_S
    client = NotebookClient(
        nb,
        kernel_name="python3",
        # nbclient's timeout is per cell; this gives each cell what is left of the notebook's.
        timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError (with the traceback) if a cell fails
    return nb


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: cell {cell.id} has outputs; clear them"
            assert cell.execution_count is None, f"{name}: cell {cell.id} has an execution count"


def test_one_repository_url_placeholder():
    # One constant to edit when a public remote exists (the markdown explains it).
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert code.count('REPO_URL = "https://github.com/YOUR_ORG/intrakd_jax"') == 1, name
        assert code.count("github.com") == 1, name


@pytest.mark.slow
def test_quickstart_runs(tmp_path, monkeypatch):
    nb = _execute("quickstart.ipynb", tmp_path, monkeypatch)
    work = tmp_path / "work"

    text, _ = _outputs(nb, "backend")
    assert "backend: CPU" in text and "4 device(s)" in text
    text, _ = _outputs(nb, "config")
    assert "config.batch_size: 4 -> 4 (1 per device on 4 devices)" in text
    text, mimes = _outputs(nb, "results")
    assert "| student + IntRA-KD | erfnet |" in text and "image/png" in mimes
    assert (work / "comparison.md").exists() and (work / "comparison.png").exists()
    # The diagnostics figures of mode=explain, one per image, each displayed.
    text, mimes = _outputs(nb, "explain")
    pngs = sorted((work / "explain").glob("*.png"))
    assert len(pngs) == 2 and mimes.count("image/png") == 2
    text, mimes = _outputs(nb, "methods")
    assert "| IntRA-KD |" in text and "image/png" in mimes
    text, _ = _outputs(nb, "loss")
    assert "IntRA-KD loss " in text and "gradient: shape (2, 8, 16, 32)" in text
    assert "teacher against itself (identical graphs): 0.000000" in text


@pytest.mark.slow
def test_tpu_runs(tmp_path, monkeypatch):
    nb = _execute("tpu.ipynb", tmp_path, monkeypatch)

    text, _ = _outputs(nb, "devices")
    assert "backend: CPU" in text and "4 device(s)" in text
    text, _ = _outputs(nb, "mesh")
    assert "mesh axis 'data': 4 devices" in text
    text, _ = _outputs(nb, "batch")
    assert "global batch 4 = 1 per device x 4 devices" in text
    text, _ = _outputs(nb, "throughput")
    assert "images/s per device" in text and "images/s in total" in text
    text, mimes = _outputs(nb, "pipeline")
    assert "| student + IntRA-KD | erfnet |" in text and "image/png" in mimes
    assert (tmp_path / "work" / "comparison.md").exists()
