"""``bus-mtl compare``'s statistics from hand-made fold folders (no training): the
pre-specified reference, group-aware units from ``split.json``, Holm columns, the notes."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from bus_mtl.cli.main import main as bus_mtl
from bus_mtl.experiments.compare import STAT_COLUMNS, resolve_reference, write_comparison
from bus_mtl.experiments.stats import holm
from bus_mtl.models import BEST_VARIANT


def write_variant(vdir, ids, labels, probs, dice, folds):
    """A cv folder as the runner writes it: fold_k/{metrics.json,test_predictions.csv,DONE}."""
    for k in sorted(set(folds)):
        sel = np.asarray(folds) == k
        d = vdir / f"fold_{k}"
        d.mkdir(parents=True)
        metrics = {"test/dice": float(np.mean(dice[sel])), "test/auc": 0.8}
        (d / "metrics.json").write_text(json.dumps({"metrics": metrics, "params": 1000}))
        pd.DataFrame(
            {
                "id": np.asarray(ids)[sel],
                "centre": "busi",
                "label": labels[sel],
                "prob": probs[sel],
                "dice": dice[sel],
            }
        ).to_csv(d / "test_predictions.csv", index=False)
        (d / "DONE").write_text("")


def write_split(path, ids, folds, groups):
    n_folds = len(set(folds))
    parts = [
        {"train": [], "val": [], "test": [i for i, f in zip(ids, folds) if f == k]}
        for k in range(n_folds)
    ]
    path.write_text(json.dumps({"kind": "kfold", "folds": parts, "groups": groups}))


@pytest.fixture
def duplicated(tmp_path):
    """Three variants on 60 lesions, each shown three times (180 images in 60 groups)."""
    rng = np.random.default_rng(0)
    n = 60
    labels = np.array([1, 0] * (n // 2))
    folds = (np.arange(n) // 2) % 2  # both classes in each fold
    ids = [[f"busi/l{i}_{c}" for c in range(3)] for i in range(n)]
    scores = {
        "seg_features_effnet": (labels * 1.0 + rng.normal(0, 0.6, n), rng.uniform(0.7, 0.9, n)),
        "smp_unet": (labels * 0.8 + rng.normal(0, 0.6, n), rng.uniform(0.6, 0.9, n)),
        "segresnet": (labels * 0.4 + rng.normal(0, 0.6, n), rng.uniform(0.5, 0.8, n)),
    }
    rep = np.repeat
    all_ids = [i for triple in ids for i in triple]
    folders = {}
    for v, (prob, dice) in scores.items():
        prob = 1 / (1 + np.exp(-prob))
        write_variant(
            tmp_path / v, all_ids, rep(labels, 3), rep(prob, 3), rep(dice, 3), rep(folds, 3)
        )
        folders[("kfold", v)] = tmp_path / v
    return tmp_path, folders, all_ids, rep(folds, 3).tolist(), ids


def test_reference_default_given_and_rejected():
    assert resolve_reference(["smp_unet", BEST_VARIANT])[0] == BEST_VARIANT
    name, rule = resolve_reference(["segresnet", "efficientnet"])
    assert name == "segresnet" and "first variant given" in rule and BEST_VARIANT in rule
    assert resolve_reference(["a", "b"], "b") == ("b", "given with --reference")
    with pytest.raises(ValueError) as err:
        resolve_reference(["segresnet", "efficientnet"], "smp_unte")
    msg = str(err.value)
    assert "'smp_unte'" in msg and "segresnet, efficientnet" in msg and "--reference" in msg


def test_cli_rejects_unknown_reference_before_running(tmp_path, capsys):
    vdir = tmp_path / "variants"
    vdir.mkdir()
    for v in ("a", "b"):
        (vdir / f"{v}.yaml").write_text("{}\n")
    out = tmp_path / "out"
    argv = ["compare", "--variants", "a,b", "--variants-dir", str(vdir), "--out", str(out)]
    assert bus_mtl([*argv, "--reference", "c"]) == 2
    err = capsys.readouterr().err
    assert "'c' is not among the compared variants (a, b)" in err
    assert not out.exists()  # failed before the split or any fold was made


def test_comparison_uses_groups_reference_and_holm(duplicated):
    out, folders, ids, folds, groups = duplicated
    write_split(out / "split.json", ids, folds, groups)
    table = write_comparison(out, folders, n_boot=300).set_index("variant")
    assert set(STAT_COLUMNS) <= set(table.columns)
    assert (table["reference"] == BEST_VARIANT).all()
    ref = table.loc[BEST_VARIANT]
    assert all(math.isnan(ref[c]) for c in STAT_COLUMNS if c.startswith(("p_", "delta_")))
    others = table.drop(index=BEST_VARIANT)
    assert (others["n_auc_units"] == 60).all() and (others["n_auc_images"] == 180).all()
    assert (others["n_dice_units"] == 60).all()
    for col in ("p_dice_wilcoxon", "p_dice_bootstrap", "p_auc_delong", "p_auc_bootstrap"):
        np.testing.assert_allclose(others[f"{col}_holm"], holm(others[col].to_numpy()))
    md = (out / "compare.md").read_text()
    assert f"Reference: `{BEST_VARIANT}` (the default: the paper's best variant" in md
    assert "60 units for 180 images; 60 near-duplicate groups hold 180 of them" in md
    assert "p AUC DeLong (raw / Holm)" in md and "Holm's step-down" in md
    stats = json.loads((out / "compare.json").read_text())["statistics"]
    assert stats["reference"] == BEST_VARIANT and "p_auc_delong" in stats["columns"]
    joined = pd.read_csv(out / "per_image.csv")
    assert joined.groupby("group")["id"].count().eq(3).all() and len(joined) == 180


def test_groups_widen_the_intervals_of_duplicated_images(duplicated):
    out, folders, ids, folds, groups = duplicated
    naive = write_comparison(out, folders, n_boot=400).set_index("variant")  # no split.json
    assert "each of the 180 images is its own unit" in (out / "compare.md").read_text()
    write_split(out / "split.json", ids, folds, groups)
    grouped = write_comparison(out, folders, n_boot=400).set_index("variant")
    for metric in ("auc", "dice"):
        lo, hi = f"delta_{metric}_ci_low", f"delta_{metric}_ci_high"
        w_naive = naive[hi] - naive[lo]
        w_grouped = grouped[hi] - grouped[lo]
        assert (w_grouped.dropna() > 1.3 * w_naive.dropna()).all(), metric
        # the point estimate does not depend on the units
        np.testing.assert_allclose(grouped[f"delta_{metric}"], naive[f"delta_{metric}"])
    assert (grouped["p_auc_delong"].dropna() > naive["p_auc_delong"].dropna()).all()
    assert (grouped["n_auc_units"].dropna() == 60).all()
    assert (naive["n_auc_units"].dropna() == 180).all()


def test_given_reference_and_one_without_probabilities(duplicated):
    out, folders, *_ = duplicated
    table = write_comparison(out, folders, reference="smp_unet", n_boot=50)
    assert (table["reference"] == "smp_unet").all()
    row = table.set_index("variant").loc[BEST_VARIANT]
    assert np.isfinite(row["p_auc_delong"]) and row["delta_auc"] > 0  # vs the weaker one
    assert "(given with --reference;" in (out / "compare.md").read_text()
    with pytest.raises(ValueError, match="'nope' is not among the compared variants"):
        write_comparison(out, folders, reference="nope")
    # A reference without a class head: no AUC tests, and the table says why.
    for k in (0, 1):
        pred = out / "segresnet" / f"fold_{k}" / "test_predictions.csv"
        pd.read_csv(pred).assign(prob=np.nan).to_csv(pred, index=False)
    table = write_comparison(out, folders, reference="segresnet", n_boot=50)
    assert table["p_auc_delong"].isna().all() and table["p_dice_wilcoxon"].notna().sum() == 2
    assert "has no malignancy probabilities: no AUC tests" in (out / "compare.md").read_text()
