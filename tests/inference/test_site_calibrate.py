"""``bus-mtl calibrate``: the site's operating point written into a new checkpoint or export,
used by predict and export with no flag; the measurement script on the synthetic set."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bus_mtl.cli.main import main
from bus_mtl.experiments.site_calibration import (
    check_rule,
    check_site_prior,
    fit_site_point,
    stratified_draw,
)
from bus_mtl.inference.site_adaptation import SITE_RECORD_KEY, PriorShift, em_prior_shift

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _site_manifest(synthetic_root: Path, path: Path, keep=None, centre="hospital_b") -> Path:
    """The synthetic manifest with absolute paths and a centre column (``keep``: labels)."""
    rows = _rows(synthetic_root / "manifest.csv")
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label", "centre"])
        writer.writeheader()
        for r in rows:
            if keep is None or r["label"] in keep:
                image = str(synthetic_root / r["image"])
                writer.writerow({"image": image, "label": r["label"], "centre": centre})
    return path


@pytest.fixture(scope="module")
def ranked_ckpt(tmp_path_factory, mtl_ckpt, synthetic_root):
    """``mtl_ckpt`` with BatchNorm statistics of the synthetic images (torch's ``update_bn``):
    after two training steps the stored ones give every image the same logit, which leaves
    no ranking to calibrate."""
    from bus_mtl.data.io import read_image
    from bus_mtl.inference.preprocess import preprocess
    from bus_mtl.inference.torch_predictor import load_net_and_info

    net, info = load_net_and_info(mtl_ckpt)
    files = [synthetic_root / r["image"] for r in _rows(synthetic_root / "manifest.csv")]
    inputs = np.concatenate([preprocess(read_image(f), info) for f in files])
    torch.optim.swa_utils.update_bn(
        [torch.from_numpy(inputs[i : i + 8]) for i in range(0, 32, 8)], net
    )
    checkpoint = torch.load(mtl_ckpt, map_location="cpu", weights_only=True)
    checkpoint["state_dict"].update({f"net.{k}": v for k, v in net.state_dict().items()})
    out = tmp_path_factory.mktemp("ranked") / "ranked.ckpt"
    torch.save(checkpoint, out)
    return out


@pytest.fixture(scope="module")
def ranked_onnx(tmp_path_factory, ranked_ckpt):
    from bus_mtl.inference.export import export_checkpoint

    return export_checkpoint(
        ranked_ckpt, "onnx", tmp_path_factory.mktemp("ranked_onnx") / "r.onnx"
    ).path


@pytest.fixture(scope="module")
def site_ckpt(tmp_path_factory, ranked_ckpt, synthetic_root):
    """``ranked_ckpt`` calibrated on the 32 synthetic cases as site ``hospital_b`` (default rule)."""
    root = tmp_path_factory.mktemp("site")
    manifest = _site_manifest(synthetic_root, root / "local.csv")
    out = root / "site.ckpt"
    assert (
        main(
            [
                "calibrate",
                "--ckpt",
                str(ranked_ckpt),
                "--manifest",
                str(manifest),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_calibrate_writes_the_sites_operating_point_and_records_it(ranked_ckpt, site_ckpt):
    old = torch.load(ranked_ckpt, map_location="cpu", weights_only=True)
    new = torch.load(site_ckpt, map_location="cpu", weights_only=True)
    meta = new["bus_mtl"]
    assert meta["decision_threshold"] != old["bus_mtl"]["decision_threshold"]
    assert meta["temperature"] != old["bus_mtl"]["temperature"]
    for key in ("temperature", "decision_threshold"):
        assert float(new["state_dict"][key]) == pytest.approx(meta[key])
        assert meta["operating_points"]["none"][key] == meta[key]
    assert meta["threshold_rule"] == "sensitivity>=0.9 on site hospital_b"
    record = meta[SITE_RECORD_KEY]
    assert record["site"] == "hospital_b" and record["method"] == "labelled"
    assert (record["n_cases"], record["n_benign"], record["n_malignant"]) == (32, 16, 16)
    assert record["rule"] == "sensitivity" and record["target_sensitivity"] == 0.9
    assert record["date"][:4].isdigit() and record["previous"]["none"]["temperature"] == 2.5
    assert meta["calibration"]["sensitivity_in_sample"] >= 0.9
    # The weights are the same network's.
    nets = [k for k in old["state_dict"] if k.startswith("net.")]
    assert all(torch.equal(old["state_dict"][k], new["state_dict"][k]) for k in nets)


def test_predict_uses_the_site_operating_point_with_no_flag(
    ranked_ckpt, site_ckpt, synthetic_root, tmp_path
):
    meta = torch.load(site_ckpt, map_location="cpu", weights_only=True)["bus_mtl"]
    images = [synthetic_root / r["image"] for r in _rows(synthetic_root / "manifest.csv")[:6]]
    outs = {}
    for name, ckpt in (("old", ranked_ckpt), ("site", site_ckpt)):
        outs[name] = tmp_path / name
        args = ["predict", "--ckpt", str(ckpt), "--input", *map(str, images)]
        assert main([*args, "--output", str(outs[name]), "--no-progress"]) == 0
    old, new = _rows(outs["old"] / "predictions.csv"), _rows(outs["site"] / "predictions.csv")
    for a, b in zip(old, new):
        p_old, p_new = float(a["probability"]), float(b["probability"])
        # Same logit, the site's temperature: logit(p_new) * T_site == logit(p_old) * 2.5.
        logit = math.log(p_old / (1 - p_old)) * 2.5
        assert p_new == pytest.approx(1 / (1 + math.exp(-logit / meta["temperature"])), abs=1e-5)
        called = "malignant" if p_new > meta["decision_threshold"] else "benign"
        assert b["predicted_class"] == called


def test_export_of_the_site_checkpoint_carries_its_operating_point(site_ckpt, tmp_path):
    from bus_mtl.inference.export import export_checkpoint

    meta = torch.load(site_ckpt, map_location="cpu", weights_only=True)["bus_mtl"]
    info = export_checkpoint(site_ckpt, "onnx", tmp_path / "site.onnx").info
    assert info.decision_threshold == pytest.approx(meta["decision_threshold"])
    assert info.temperature == pytest.approx(meta["temperature"])
    assert info.threshold_rule == "sensitivity>=0.9 on site hospital_b"


def test_calibrate_an_onnx_export(ranked_onnx, synthetic_root, tmp_path, capsys):
    from bus_mtl.inference.predictor import Predictor

    manifest = _site_manifest(synthetic_root, tmp_path / "local.csv")
    out = tmp_path / "site.onnx"
    args = [
        "calibrate",
        "--model",
        str(ranked_onnx),
        "--manifest",
        str(manifest),
        "--out",
        str(out),
    ]
    assert main([*args, "--rule", "youden", "--site", "b2"]) == 0
    printed = capsys.readouterr().out
    assert "site b2: 32 cases (16 benign, 16 malignant)" in printed and f"wrote {out}" in printed
    info = Predictor(out).info
    assert info.threshold_rule == "youden on site b2" and info.decision_threshold != 0.37
    assert json.loads(out.with_suffix(".json").read_text())[SITE_RECORD_KEY]["rule"] == "youden"


def test_unlabelled_prior_shift_moves_the_threshold_by_the_em_estimate(
    ranked_ckpt, synthetic_root, tmp_path
):
    from bus_mtl.inference.torch_predictor import TorchPredictor

    manifest = _site_manifest(synthetic_root, tmp_path / "local.csv")
    predictor = TorchPredictor.from_checkpoint(ranked_ckpt)
    probs = np.array([predictor.predict(r["image"]).probability for r in _rows(manifest)])
    # A source prevalence at the centre of the probabilities' log-odds: EM then has an
    # interior maximum (this barely trained net's probabilities all sit near 0.55).
    source = float(1 / (1 + np.exp(-np.mean(np.log(probs / (1 - probs))))))
    out = tmp_path / "prior.ckpt"
    args = ["calibrate", "--ckpt", str(ranked_ckpt), "--manifest", str(manifest), "--out", str(out)]
    assert main([*args, "--unlabelled", "--adapt", "prior", "--source-prior", str(source)]) == 0
    meta = torch.load(out, map_location="cpu", weights_only=True)["bus_mtl"]
    record, cal = meta[SITE_RECORD_KEY], meta["calibration"]
    assert record["method"] == "em_prior_shift" and record["n_malignant"] is None
    assert record["source_prior"] == pytest.approx(source)
    assert cal["site_prior"] == pytest.approx(em_prior_shift(probs, source).site_prior, abs=1e-4)
    shift = math.log(cal["site_prior"] / (1 - cal["site_prior"])) - math.log(source / (1 - source))
    expected = 1 / (1 + math.exp(-(math.log(0.37 / 0.63) - shift)))
    assert meta["decision_threshold"] == pytest.approx(expected) != pytest.approx(0.37)
    assert meta["temperature"] == 2.5
    assert TorchPredictor.from_checkpoint(out).decision_threshold == pytest.approx(expected)
    # Label-free: the share of the site's cases called malignant, stored vs adapted.
    called = record["called_malignant"]["none"]
    assert called["before"] == pytest.approx(np.mean(probs > 0.37))
    assert called["after"] == pytest.approx(np.mean(probs > expected))


def test_unlabelled_both_on_a_checkpoint_and_prior_on_an_export_needs_the_source_prior(
    mtl_ckpt, ranked_onnx, synthetic_root, tmp_path, capsys
):
    manifest = str(synthetic_root / "manifest.csv")
    out = tmp_path / "both.ckpt"
    code = main(
        [
            "calibrate",
            "--ckpt",
            str(mtl_ckpt),
            "--manifest",
            manifest,
            "--out",
            str(out),
            "--unlabelled",
            "--adapt",
            "both",
        ]
    )
    assert code == 0
    assert "BatchNorm statistics of" in capsys.readouterr().out
    record = torch.load(out, map_location="cpu", weights_only=True)["bus_mtl"][SITE_RECORD_KEY]
    assert record["method"] == "batchnorm+em_prior_shift" and record["batchnorm_layers"] > 0
    assert record["source_prior"] == 0.5  # the training part's counts: 10 and 10
    onnx_args = ["calibrate", "--model", str(ranked_onnx), "--manifest", manifest, "--unlabelled"]
    with pytest.raises(SystemExit):  # no default adaptation
        main([*onnx_args, "--out", str(tmp_path / "x.onnx")])
    assert "--unlabelled needs --adapt prior, bn or both" in capsys.readouterr().err
    onnx_args += ["--adapt", "prior"]
    # A checkpoint written before the source prior was recorded: the user must give it.
    legacy = torch.load(mtl_ckpt, map_location="cpu", weights_only=True)
    del legacy["bus_mtl"]["source_prior"]
    torch.save(legacy, tmp_path / "legacy.ckpt")
    legacy_args = ["calibrate", "--ckpt", str(tmp_path / "legacy.ckpt"), "--manifest", manifest]
    legacy_args += ["--unlabelled", "--adapt", "prior", "--out", str(tmp_path / "a.ckpt")]
    assert main(legacy_args) == 2
    assert "--source-prior 0.5 for the default class-balanced loss" in capsys.readouterr().err
    assert main([*onnx_args, "--out", str(tmp_path / "b.onnx"), "--adapt", "bn"]) == 2
    assert "adapt the checkpoint (--ckpt)" in capsys.readouterr().err
    # Every probability of this net is above 0.3: EM runs to a prevalence of 1, refused.
    assert main([*onnx_args, "--out", str(tmp_path / "c.onnx"), "--source-prior", "0.1"]) == 2
    assert "EM put the site's malignancy prevalence at 1.0000" in capsys.readouterr().err
    assert not (tmp_path / "c.onnx").exists()
    from bus_mtl.inference.predictor import Predictor

    deployed = Predictor(ranked_onnx)
    files = [synthetic_root / r["image"] for r in _rows(Path(manifest))]
    probs = np.array([deployed.predict(f).probability for f in files])
    source = float(1 / (1 + np.exp(-np.mean(np.log(probs / (1 - probs))))))
    out = tmp_path / "d.onnx"
    assert main([*onnx_args, "--out", str(out), "--source-prior", str(source)]) == 0
    info = Predictor(out).info
    assert info.temperature == 2.5 and info.decision_threshold != pytest.approx(0.37)
    assert "EM prior shift on site phantom" in info.threshold_rule


def test_calibrate_refuses_too_few_malignant_cases(mtl_ckpt, synthetic_root, tmp_path, capsys):
    manifest = _site_manifest(synthetic_root, tmp_path / "benign.csv", keep={"benign"})
    args = ["calibrate", "--ckpt", str(mtl_ckpt), "--manifest", str(manifest)]
    assert main([*args, "--out", str(tmp_path / "x.ckpt")]) == 2
    err = capsys.readouterr().err
    assert "at least 3 malignant and 3 benign" in err and "got 0 malignant and 16 benign" in err
    assert "--unlabelled" in err and not (tmp_path / "x.ckpt").exists()
    assert main([*args, "--out", str(mtl_ckpt)]) == 2  # never overwrites the input
    assert "is the model being calibrated" in capsys.readouterr().err


def test_a_prevalence_at_the_boundary_is_refused():
    check_site_prior(PriorShift(0.3, 0.5, 0.85, 10, True), "m.csv")
    with pytest.raises(
        ValueError, match=r"m.csv: EM put the site's malignancy prevalence at 0.9990"
    ):
        check_site_prior(PriorShift(0.3, 0.999, 7.7, 60, True), "m.csv")


def test_bad_rule_target_and_k_are_named():
    with pytest.raises(ValueError, match=r"one of \('sensitivity', .*got 'bogus'"):
        check_rule("bogus")
    with pytest.raises(ValueError, match=r"target sensitivity must be in \(0, 1\], got 1.5"):
        check_rule("sensitivity", 1.5)
    with pytest.raises(ValueError, match="got 2 malignant and 5 benign"):
        fit_site_point(np.arange(7.0), [0, 0, 0, 0, 0, 1, 1])
    labels = np.array([0] * 20 + [1] * 10)
    rng = np.random.default_rng(0)
    with pytest.raises(
        ValueError, match=r"k=40 calibration cases cannot be drawn from 10 malignant and 20 benign"
    ):
        stratified_draw(labels, 40, rng)
    with pytest.raises(ValueError, match="k=4 "):
        stratified_draw(labels, 4, rng)
    pick = stratified_draw(labels, 12, rng)
    assert len(set(pick)) == 12 and labels[pick].sum() == 4


def test_calibrate_cli_rejects_an_unknown_rule(mtl_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "calibrate",
                "--ckpt",
                str(mtl_ckpt),
                "--manifest",
                "m.csv",
                "--out",
                "o",
                "--rule",
                "bogus",
            ]
        )
    assert exit_.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err


def test_site_calibration_bench_runs_once_and_reuses_its_logits(
    ranked_ckpt, synthetic_root, tmp_path, capsys
):
    args = ["bench", "site-calibration", "--ckpt", str(ranked_ckpt)]
    args += ["--manifest", str(synthetic_root / "manifest.csv")]
    args += ["--out", str(tmp_path), "--ks", "8", "12", "--draws", "3"]
    assert main(args) == 0
    first = json.loads((tmp_path / "summary.json").read_text())
    methods = [r["method"] for r in first["rows"]]
    assert methods == [
        "stored operating point (training site)",
        "EM prior shift",
        "BatchNorm re-estimated",
        "BatchNorm + EM prior shift",
        "refit on k=8 labelled",
        "refit on k=12 labelled",
        "refit on all 32 (in-sample)",
    ]
    rows = {r["method"]: r for r in first["rows"]}
    assert (
        rows["refit on k=8 labelled"]["n_eval"] == 24
        and rows["refit on k=8 labelled"]["draws"] == 3
    )
    assert len(_rows(tmp_path / "draws.csv")) == 6 and not first["logits_cached"]
    assert "| refit on k=12 labelled | 12 | 20 |" in capsys.readouterr().out
    assert main(args) == 0
    second = json.loads((tmp_path / "summary.json").read_text())
    assert second["logits_cached"] and second["rows"] == first["rows"]


def test_evaluate_scores_the_site_checkpoint_at_its_operating_point(
    site_ckpt, synthetic_root, tmp_path
):
    meta = torch.load(site_ckpt, map_location="cpu", weights_only=True)["bus_mtl"]
    out = tmp_path / "eval"
    args = [
        "evaluate",
        "--ckpt",
        str(site_ckpt),
        "--manifest",
        str(synthetic_root / "manifest.csv"),
    ]
    assert main([*args, "--out", str(out), "--n-boot", "10", "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["threshold"] == pytest.approx(meta["decision_threshold"])
    assert metrics["temperature"] == pytest.approx(meta["temperature"])
    assert metrics["threshold_rule"] == "sensitivity>=0.9 on site hospital_b"
