"""NetEnsemble and ensemble checkpoints: the mean of the members' calibrated probabilities,
written as one checkpoint that the inference commands load like any other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bus_mtl.models.ensemble import NetEnsemble, logit_of_mean_probability
from bus_mtl.models.ensemble_checkpoint import cv_checkpoints, write_ensemble_checkpoint
from bus_mtl.models.rebuild import load_inference_net, load_net, net_config
from tests.models.conftest import small

SIZE = 64
# (temperature, mean, std, single-pass threshold, hflip threshold) of each member.
MEMBERS = [(1.5, 0.25, 0.20, 0.40, 0.45), (0.8, 0.30, 0.25, 0.60, 0.65)]


def _member_checkpoint(
    path: Path,
    seed: int,
    t: float,
    mean: float,
    std: float,
    thr_none: float,
    thr_flip: float,
    **meta_extra,
) -> Path:
    torch.manual_seed(seed)
    net = small("seg_crop_effnet")
    config = net_config(net)
    points = {
        "none": {"temperature": t, "decision_threshold": thr_none, "threshold_rule": "youden"},
        "hflip": {
            "temperature": t * 1.1,
            "decision_threshold": thr_flip,
            "threshold_rule": "youden",
        },
    }
    meta = {
        "variant": "seg_crop_effnet",
        "net_class_path": config["class_path"],
        "net_init_args": config["init_args"],
        "in_channels": 1,
        "num_classes": 1,
        "image_size": SIZE,
        "resize": "letterbox",
        "normalization": {"mean": mean, "std": std},
        "class_names": ["benign", "malignant"],
        "threshold": 0.5,
        "tta": "hflip",
        "operating_points": points,
        "source_prior": 0.5,
        **points["hflip"],
        **meta_extra,
    }
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "bus_mtl": meta}, path)
    return path


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("members")
    return [_member_checkpoint(root / f"m{i}.ckpt", i, *p) for i, p in enumerate(MEMBERS)]


def _expected(member_paths: list[Path], raw: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean of each member's calibrated probability and mask probability, each member fed
    the raw image in its own normalisation, single pass."""
    probs, masks = [], []
    for path, (t, mean, std, *_) in zip(member_paths, MEMBERS):
        net, _ = load_net(path)
        with torch.no_grad():
            out = net((raw - mean) / std)
        probs.append(torch.sigmoid(out.logits / t))
        masks.append(torch.sigmoid(out.mask))
    return torch.stack(probs).mean(0).numpy(), torch.stack(masks).mean(0).numpy()


def test_logit_of_mean_probability_is_exact_and_finite():
    x = torch.tensor([[-3.0, 0.5, 2.0], [1.0, -0.25, 4.0]])
    naive = torch.logit(torch.sigmoid(x.double()).mean(0))
    torch.testing.assert_close(logit_of_mean_probability(x).double(), naive, atol=1e-6, rtol=0)
    extreme = torch.tensor([[40.0, 30.0, -80.0], [40.0, -30.0, -90.0]])
    got = logit_of_mean_probability(extreme)
    # Two certain members agree: their logit, not a clamp; opposite certainties: even odds.
    torch.testing.assert_close(got[:2], torch.tensor([40.0, 0.0]), atol=1e-4, rtol=0)
    assert torch.isfinite(got).all() and got[2] < -80


def test_checkpoint_runs_the_mean_of_calibrated_member_probabilities(members, tmp_path):
    out = write_ensemble_checkpoint(members, tmp_path / "ens.ckpt")
    net, meta = load_net(out)
    assert isinstance(net, NetEnsemble) and len(net.members) == 2
    raw = torch.rand(3, 1, SIZE, SIZE)
    mean, std = meta["normalization"]["mean"], meta["normalization"]["std"]
    assert mean == pytest.approx(0.275) and std == pytest.approx(0.225)
    with torch.no_grad():
        got = net((raw - mean) / std)
    want_prob, want_mask = _expected(members, raw)
    np.testing.assert_allclose(torch.sigmoid(got.logits).numpy(), want_prob, atol=1e-5)
    np.testing.assert_allclose(torch.sigmoid(got.mask).numpy(), want_mask, atol=1e-5)


def test_operating_points_are_the_members_means(members, tmp_path):
    out = write_ensemble_checkpoint(members, tmp_path / "ens.ckpt")
    _, meta = load_inference_net(out)
    assert meta["tta"] == "hflip" and meta["temperature"] == 1.0
    assert meta["decision_threshold"] == pytest.approx(np.mean([m[4] for m in MEMBERS]))
    assert "mean of 2 members' thresholds (youden)" == meta["threshold_rule"]
    _, single = load_inference_net(out, tta="none")
    assert single["decision_threshold"] == pytest.approx(np.mean([m[3] for m in MEMBERS]))
    assert meta["ensemble"]["members"] == [str(p) for p in members]
    assert meta["source_prior"] == 0.5


def test_predictor_and_onnx_export_load_it_as_one_model(members, tmp_path):
    from bus_mtl.inference.export import export_checkpoint
    from bus_mtl.inference.torch_predictor import TorchPredictor

    out = write_ensemble_checkpoint(members, tmp_path / "ens.ckpt")
    predictor = TorchPredictor.from_checkpoint(out)
    assert predictor.info.tta == "hflip" and predictor.info.resize == "letterbox"
    assert predictor.info.class_threshold == pytest.approx(np.mean([m[4] for m in MEMBERS]))
    # The export's own parity check compares the ONNX graph with the eager ensemble.
    report = export_checkpoint(out, "onnx", tmp_path / "ens.onnx")
    assert report.path.is_file() and report.info.variant == "ensemble of 2 seg_crop_effnet"


def test_members_that_differ_are_refused_with_every_reason(members, tmp_path):
    odd = _member_checkpoint(tmp_path / "odd.ckpt", 5, *MEMBERS[0], image_size=96, resize="squash")
    with pytest.raises(ValueError) as err:
        write_ensemble_checkpoint([members[0], odd], tmp_path / "ens.ckpt")
    msg = str(err.value)
    assert "image_size differs" in msg and "resize differs" in msg and "odd.ckpt: 96" in msg
    with pytest.raises(ValueError, match="at least 2"):
        write_ensemble_checkpoint(members[:1], tmp_path / "ens.ckpt")
    # A TTA checkpoint from before every mode was calibrated: its single pass has no point.
    flip_only = {"hflip": {"temperature": 1.0, "decision_threshold": 0.5}}
    single = _member_checkpoint(
        tmp_path / "single.ckpt", 6, *MEMBERS[1], operating_points=flip_only
    )
    with pytest.raises(ValueError, match="no operating point for its single pass"):
        write_ensemble_checkpoint([members[0], single], tmp_path / "ens.ckpt")


def test_an_existing_output_is_not_overwritten(members, tmp_path):
    out = tmp_path / "ens.ckpt"
    out.write_text("keep me")
    with pytest.raises(ValueError, match="exists"):
        write_ensemble_checkpoint(members, out)
    assert out.read_text() == "keep me"
    write_ensemble_checkpoint(members, out, overwrite=True)
    assert load_net(out)[0].__class__ is NetEnsemble


def test_net_ensemble_rejects_bad_arguments(members):
    config = json.loads(json.dumps(net_config(small("seg_crop_effnet"))))
    with pytest.raises(ValueError, match="at least 2 members"):
        NetEnsemble([config], [1.0], [[0.0, 1.0]])
    with pytest.raises(ValueError, match="temperatures must be > 0"):
        NetEnsemble([config, config], [1.0, 0.0], [[0.0, 1.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="one temperature and one"):
        NetEnsemble([config, config], [1.0], [[0.0, 1.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"normalizations must be .*\[0.0, 0.0\]"):
        NetEnsemble([config, config], [1.0, 1.0], [[0.0, 1.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="num_classes must be 1"):
        NetEnsemble([config, config], [1.0, 1.0], [[0.0, 1.0], [0.0, 1.0]], num_classes=3)


def _fold(root: Path, k: int, ckpt: Path | None, done: bool = True, recorded: bool = True) -> None:
    fold = root / f"fold_{k}"
    run_dir = fold / "Net" / "version_0" / "checkpoints"
    run_dir.mkdir(parents=True)
    if ckpt is not None:
        target = run_dir / f"best-epoch={k:03d}.ckpt"
        target.write_bytes(ckpt.read_bytes())
        if recorded:
            (fold / "run.json").write_text(json.dumps({"fit": {"best_model_path": str(target)}}))
    if done:
        (fold / "DONE").write_text("")


def test_cv_checkpoints_finds_each_folds_best_model(members, tmp_path):
    for k in range(12):
        _fold(tmp_path, k, members[k % 2], recorded=k % 3 != 0)  # moved folders: glob
    found = cv_checkpoints(tmp_path)
    assert [p.parent.parent.parent.parent.name for p in found] == [f"fold_{k}" for k in range(12)]
    bad = tmp_path / "bad"
    _fold(bad, 0, members[0])
    _fold(bad, 1, None)
    _fold(bad, 2, members[1], done=False)
    with pytest.raises(ValueError) as err:
        cv_checkpoints(bad)
    assert "fold_1: 0 best-*.ckpt" in str(err.value) and "fold_2: not finished" in str(err.value)


def test_cli_writes_and_reports_the_ensemble(members, tmp_path, capsys):
    from bus_mtl.cli.main import main

    out = tmp_path / "ens.ckpt"
    assert main(["ensemble", *map(str, members), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ensemble of 2 seg_crop_effnet" in printed and "tta hflip: threshold 0.550" in printed
    assert main(["ensemble", str(members[0]), "--out", str(tmp_path / "one.ckpt")]) == 2
    assert "bus-mtl ensemble: error: an ensemble needs at least 2" in capsys.readouterr().err


class _LogitOfMean(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logit_of_mean_probability(x)


def test_logit_of_mean_probability_stays_finite_in_onnx(tmp_path):
    """The exported graph keeps confident logits finite too (ONNX Runtime's LogSigmoid and
    ReduceLogSumExp forms would give -inf there)."""
    import onnxruntime as ort

    path = tmp_path / "mean.onnx"
    x = torch.tensor([[40.0, 30.0, -80.0, 0.3], [40.0, -30.0, -90.0, -1.2]])
    torch.onnx.export(_LogitOfMean(), (x,), str(path), dynamo=False, opset_version=17)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, logit_of_mean_probability(x).numpy(), atol=1e-4)
