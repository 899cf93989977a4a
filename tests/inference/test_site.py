"""Site adaptation without the training stack: EM prior shift, BatchNorm re-estimation, the
site's cases, the logits of every test-time augmentation and the files written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bus_mtl.data.errors import DataError
from bus_mtl.inference.site_adaptation import (
    SITE_RECORD_KEY,
    SiteModel,
    adjust_to_prior,
    batchnorm_layers,
    em_prior_shift,
    prior_shift_point,
    read_site_cases,
    reestimate_batchnorm,
    write_site_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _scores(n: int, prevalence: float, source_prior: float, seed: int) -> tuple:
    """Calibrated posteriors at ``source_prior`` of a site with ``prevalence``: logit-scale
    scores N(-1, 1) (benign) and N(+1, 1) (malignant), likelihood ratio exp(2 z)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    z = rng.normal(np.where(y == 1, 1.0, -1.0), 1.0)
    log_odds = 2 * z + np.log(source_prior / (1 - source_prior))
    return 1 / (1 + np.exp(-log_odds)), y, z


@pytest.mark.parametrize("prevalence", [0.1, 0.39, 0.6])
def test_em_recovers_a_shifted_prior(prevalence):
    probs, y, z = _scores(4000, prevalence, source_prior=0.3, seed=1)
    shift = em_prior_shift(probs, source_prior=0.3)
    assert shift.converged
    assert abs(shift.site_prior - y.mean()) < 0.03, (shift.site_prior, y.mean())
    # The adjusted posteriors are the ones Bayes' rule gives at the true prevalence.
    truth = 1 / (1 + np.exp(-(2 * z + np.log(y.mean() / (1 - y.mean())))))
    assert np.max(np.abs(shift.adjust(probs) - truth)) < 0.03
    assert shift.logit_shift == pytest.approx(
        np.log(shift.site_prior / (1 - shift.site_prior)) - np.log(0.3 / 0.7)
    )


def test_em_without_a_shift_stays_at_the_source_prior():
    probs, _, _ = _scores(4000, 0.3, source_prior=0.3, seed=2)
    assert em_prior_shift(probs, 0.3).site_prior == pytest.approx(0.3, abs=0.03)


def test_prior_shift_point_decides_as_the_adjusted_posterior_at_the_stored_threshold():
    probs, _, _ = _scores(500, 0.6, source_prior=0.3, seed=3)
    shift = em_prior_shift(probs, 0.3)
    stored = {"temperature": 1.7, "decision_threshold": 0.42, "threshold_rule": "youden_binormal"}
    point = prior_shift_point(stored, shift, "site_b")
    assert point["temperature"] == 1.7
    # A higher site prevalence lowers the threshold on the reported (unadjusted) probability.
    assert point["decision_threshold"] < 0.42
    np.testing.assert_array_equal(probs > point["decision_threshold"], shift.adjust(probs) > 0.42)
    assert point["threshold_rule"] == "youden_binormal + EM prior shift on site site_b"
    assert point["calibration"]["site_prior"] == shift.site_prior


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.2, 1.5])
def test_em_refuses_a_source_prior_outside_0_1(bad):
    with pytest.raises(ValueError, match=rf"source_prior must be in \(0, 1\), got {bad!r}"):
        em_prior_shift([0.2, 0.7], bad)


def test_em_refuses_values_that_are_not_probabilities():
    with pytest.raises(ValueError, match=r"in \[0, 1\]; got range \[-0.1, 0.5\]"):
        em_prior_shift([-0.1, 0.5], 0.3)
    with pytest.raises(ValueError, match="no probabilities"):
        adjust_to_prior([], 0.3, 0.5)


# ----------------------------------------------------------------------------- BatchNorm
class _TinyBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4, momentum=0.1)
        self.drop = nn.Dropout(0.5)
        self.gn = nn.GroupNorm(2, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        h = self.gn(self.drop(torch.relu(self.bn(self.conv(x)))))
        return self.head(h.mean(dim=(2, 3)))


def test_reestimate_batchnorm_changes_the_running_statistics_and_nothing_else():
    torch.manual_seed(0)
    net = _TinyBN().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    site = [torch.randn(6, 1, 8, 8) * 3 + 5 for _ in range(3)]
    assert reestimate_batchnorm(net, site) == 1
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    assert not net.training and net.bn.momentum == 0.1
    # The statistics are the site's: the conv outputs' mean over all 18 images.
    with torch.no_grad():
        conv = torch.cat([net.conv(x) for x in site])
    torch.testing.assert_close(net.bn.running_mean, conv.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)


def test_reestimate_batchnorm_refuses_nets_without_batchnorm_and_single_images():
    with pytest.raises(ValueError, match="Sequential has no BatchNorm layer"):
        reestimate_batchnorm(nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2)), [])
    net = _TinyBN()
    before = net.bn.running_mean.clone()
    with pytest.raises(ValueError, match=r"at least 2 images, got shapes \[\(1, 1, 8, 8\)\]"):
        reestimate_batchnorm(net, [torch.randn(3, 1, 8, 8), torch.randn(1, 1, 8, 8)])
    assert torch.equal(net.bn.running_mean, before)  # refused before anything changed


def test_adapted_checkpoint_carries_only_new_batchnorm_statistics(
    mtl_ckpt, synthetic_root, tmp_path
):
    from bus_mtl.models.rebuild import load_net

    cases = read_site_cases(synthetic_root / "manifest.csv", labelled=False)
    model = SiteModel.load(ckpt=mtl_ckpt)
    n_layers = len(batchnorm_layers(model.net))
    assert model.adapt_batchnorm(cases.images, batch_size=8) == n_layers > 0
    point = model.operating_point()
    out = model.write(tmp_path / "bn.ckpt", {"none": point}, {"site": "phantom"}, batchnorm=True)
    old_net, _ = load_net(mtl_ckpt)
    new_net, meta = load_net(out)
    old, new = old_net.state_dict(), new_net.state_dict()
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed and all(
        k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked")
        for k in changed
    )
    assert meta[SITE_RECORD_KEY]["site"] == "phantom"


# ----------------------------------------------------------------------------- cases, logits
def _manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_read_site_cases_names_the_site_and_skips_normal_rows(synthetic_root, tmp_path):
    images = sorted(p for p in synthetic_root.rglob("*.png") if "mask" not in p.name)[:4]
    rows = [
        {"image": str(images[0]), "label": "benign", "centre": "hospital_b"},
        {"image": str(images[1]), "label": "malignant", "centre": "hospital_b"},
        {"image": str(images[2]), "label": "normal", "centre": "hospital_b"},
    ]
    cases = read_site_cases(_manifest(tmp_path / "m.csv", rows))
    assert cases.site == "hospital_b" and len(cases) == 2 and cases.skipped_normal == 1
    assert cases.labels.tolist() == [0, 1] and cases.images[0].dtype == np.uint8
    assert read_site_cases(tmp_path / "m.csv", site="elsewhere").site == "elsewhere"
    assert read_site_cases(synthetic_root / "manifest.csv").site == synthetic_root.name


def test_read_site_cases_lists_every_problem(synthetic_root, tmp_path):
    images = sorted(p for p in synthetic_root.rglob("*.png") if "mask" not in p.name)
    rows = [
        {"image": str(images[0]), "label": "maybe", "centre": "a"},
        {"image": str(tmp_path / "gone.png"), "label": "benign", "centre": "a"},
        {"image": str(images[1]), "label": "benign", "centre": "b"},
    ]
    with pytest.raises(DataError) as err:
        read_site_cases(_manifest(tmp_path / "m.csv", rows))
    text = str(err.value)
    assert "3 data problem(s)" in text
    assert "unknown label 'maybe'" in text and "gone.png" in text
    assert "several centres ['a', 'b']" in text and "--site NAME" in text
    no_label = _manifest(tmp_path / "n.csv", [{"image": str(images[0])}])
    with pytest.raises(DataError, match=r"missing column\(s\) \['label'\].*--unlabelled"):
        read_site_cases(no_label)
    assert len(read_site_cases(no_label, labelled=False)) == 1


def test_site_model_gives_every_mode_of_a_tta_checkpoint_from_one_pass(
    mtl_ckpt, synthetic_root, tmp_path
):
    from bus_mtl.inference.torch_predictor import TorchPredictor

    checkpoint = torch.load(mtl_ckpt, map_location="cpu", weights_only=True)
    meta = checkpoint["bus_mtl"]
    meta["tta"] = checkpoint["hyper_parameters"]["tta"] = "hflip"
    own = {"temperature": 2.5, "decision_threshold": 0.37, "threshold_rule": "youden_binormal"}
    single = {"temperature": 1.5, "decision_threshold": 0.3, "threshold_rule": "youden_binormal"}
    meta["operating_points"] = {
        "hflip": {**own, "calibration": {}},
        "none": {**single, "calibration": {}},
    }
    tta_ckpt = tmp_path / "tta.ckpt"
    torch.save(checkpoint, tta_ckpt)

    cases = read_site_cases(synthetic_root / "manifest.csv")
    model = SiteModel.load(ckpt=tta_ckpt)
    assert model.modes == ("hflip", "none")
    logits = model.logits(cases.images[:5], batch_size=2)
    for mode, predictor in (
        ("hflip", TorchPredictor.from_checkpoint(tta_ckpt)),
        ("none", TorchPredictor.from_checkpoint(tta_ckpt, tta="none")),
    ):
        probs = [predictor.predict_gray(g).probability for g in cases.images[:5]]
        t = model.operating_point(mode)["temperature"]
        np.testing.assert_allclose(1 / (1 + np.exp(-logits[mode] / t)), probs, atol=1e-5)

    points = {
        "hflip": {**own, "temperature": 3.0, "decision_threshold": 0.2},
        "none": {**single, "temperature": 2.0, "decision_threshold": 0.1},
    }
    out = write_site_checkpoint(tta_ckpt, tmp_path / "site.ckpt", points, {"site": "x"})
    written = torch.load(out, map_location="cpu", weights_only=True)
    meta = written["bus_mtl"]
    assert (meta["temperature"], meta["decision_threshold"]) == (3.0, 0.2)
    assert meta["operating_points"]["none"]["decision_threshold"] == 0.1
    assert float(written["state_dict"]["decision_threshold"]) == pytest.approx(0.2)
    assert meta[SITE_RECORD_KEY]["previous"]["none"]["decision_threshold"] == 0.3
    assert TorchPredictor.from_checkpoint(out, tta="none").decision_threshold == 0.1
    with pytest.raises(ValueError, match="is the model being calibrated"):
        write_site_checkpoint(out, out, points, {})


def test_site_model_of_an_onnx_export(mtl_ckpt, mtl_onnx, synthetic_root, tmp_path):
    from bus_mtl.inference.predictor import Predictor

    cases = read_site_cases(synthetic_root / "manifest.csv")
    eager = SiteModel.load(ckpt=mtl_ckpt).logits(cases.images[:4])["none"]
    model = SiteModel.load(model=mtl_onnx)
    np.testing.assert_allclose(model.logits(cases.images[:4])["none"], eager, atol=1e-4)
    assert model.source_prior() == pytest.approx(0.5)  # the export keeps the checkpoint's
    with pytest.raises(ValueError, match="an ONNX export has folded"):
        model.adapt_batchnorm(cases.images)
    point = {"temperature": 0.9, "decision_threshold": 0.6, "threshold_rule": "r @ x"}
    out = model.write(tmp_path / "site.onnx", {"none": point}, {"site": "x", "n_cases": 4})
    deployed = Predictor(out)
    assert (deployed.info.temperature, deployed.decision_threshold) == (0.9, 0.6)
    props = {p.key: p.value for p in __import__("onnx").load(str(out)).metadata_props}
    assert json.loads(props[SITE_RECORD_KEY])["previous"]["none"]["temperature"] == 2.5
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar[SITE_RECORD_KEY]["n_cases"] == 4 and sidecar["decision_threshold"] == 0.6
