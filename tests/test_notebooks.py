"""The notebooks are committed without outputs and run end to end on tiny settings."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ALL = sorted(NOTEBOOKS.glob("*.ipynb"))


@pytest.mark.parametrize("path", ALL, ids=[p.name for p in ALL])
def test_committed_notebooks_have_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: strip them"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


def _run(path: Path, env: dict[str, str], cwd: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        client = nbclient.NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
        )
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def test_kernel_is_this_python(tmp_path):
    """``python3`` must resolve to the interpreter running the tests (the venv's)."""
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable)")]
    )
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    printed = nb.cells[0].outputs[0]["text"].strip()
    assert Path(printed).resolve().parent == Path(sys.executable).resolve().parent


@pytest.mark.slow
def test_quickstart_runs(tmp_path):
    env = {"BUS_MTL_NOTEBOOK_FAST": "1", "BUS_MTL_NOTEBOOK_WORKDIR": str(tmp_path / "work")}
    nb = _run(NOTEBOOKS / "01_quickstart.ipynb", env, tmp_path)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "synthetic phantom set" in text
    assert "wrote onnx model" in text
    assert (tmp_path / "work" / "quickstart.onnx").is_file()


def _fake_compare_folder(out: Path) -> None:
    """A results folder written by the real ``bus-mtl compare`` writer from fold folders
    laid out as the cv runner writes them (metrics.json + test_predictions.csv)."""
    import pandas as pd

    from bus_mtl.experiments.compare import write_comparison

    rng = np.random.default_rng(0)
    ids = [f"synthetic/img{i:02d}" for i in range(24)]
    labels = np.array([i % 2 for i in range(24)])
    folders = {}
    for v, skill in (("seg_features_effnet", 0.8), ("smp_unet", 0.6), ("segresnet", None)):
        vdir = out / v
        for k in range(3):
            fold = vdir / f"fold_{k}"
            fold.mkdir(parents=True)
            part = slice(8 * k, 8 * k + 8)
            y = labels[part]
            prob = (
                np.clip(y * skill + (1 - skill) * rng.random(8), 0, 1)
                if skill is not None
                else np.full(8, np.nan)
            )
            dice = np.clip(rng.normal(0.7 if skill else 0.75, 0.2, 8), 0, 1)
            pd.DataFrame(
                {
                    "id": ids[part],
                    "centre": "synthetic",
                    "label": y,
                    "prob": prob,
                    "dice": dice,
                    "iou": dice / (2 - dice),
                    "hd95": rng.uniform(2, 20, 8),
                    "mask_area": rng.integers(50, 500, 8),
                }
            ).to_csv(fold / "test_predictions.csv", index=False)
            metrics = {
                "test/dice": float(dice.mean()),
                "test/iou": float((dice / (2 - dice)).mean()),
            }
            if skill is not None:
                metrics.update({"test/auc": skill + 0.05 * k, "test/acc": skill})
            (fold / "metrics.json").write_text(json.dumps({"metrics": metrics, "params": 1e6}))
        folders[("kfold", v)] = vdir
    write_comparison(out, folders)


def test_compare_variants_runs(tmp_path):
    results = tmp_path / "compare"
    results.mkdir()
    _fake_compare_folder(results)
    nb = _run(
        NOTEBOOKS / "02_compare_variants.ipynb", {"BUS_MTL_COMPARE_DIR": str(results)}, tmp_path
    )
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "variants: ['seg_features_effnet', 'smp_unet', 'segresnet']" in text
    assert "classifying variants: ['seg_features_effnet', 'smp_unet']" in text
    # independent count from the fold files the folder was built from
    import pandas as pd

    preds = {
        v: pd.concat(
            pd.read_csv(f) for f in sorted((results / v).glob("fold_*/test_predictions.csv"))
        )
        for v in ("seg_features_effnet", "smp_unet")
    }
    a, b = (preds[v].set_index("id")["prob"] > 0.5 for v in preds)
    expected = int((a != b.loc[a.index]).sum())
    assert f"{expected} of 24 labelled images get different calls" in text
