"""Trust: resume after SIGKILL, determinism, NaN guard, DDP with 2 CPU processes.

The runs go through the real CLI (``python -m bus_mtl.cli.main fit ...``) on the phantom
set: 18 training images (3 steps per epoch), 6 validation images, SharedEncoder at 64 px.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from bus_mtl.data import BUSDataModule, SyntheticSource
from bus_mtl.models import SharedEncoder
from bus_mtl.training.callbacks import FiniteLossGuard
from bus_mtl.training.losses import DiceBCELoss
from bus_mtl.training.module import MultiTaskModule

VAL_KEYS = ["val/loss", "val/dice", "val/iou", "val/auc", "val/acc", "val/brier", "val/score"]


def write_config(path: Path, synthetic_root: Path, root: Path, extra_callbacks=(), **trainer):
    config = {
        "seed_everything": 11,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 3,
            "deterministic": True,
            "default_root_dir": str(root),
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"monitor": "val/score", "mode": "max", "save_last": True},
                },
                {"class_path": "bus_mtl.training.FiniteLossGuard"},
                *extra_callbacks,
            ],
            **trainer,
        },
        "model": {
            "net": {
                "class_path": "bus_mtl.models.SharedEncoder",
                # Dropout on, so the restored RNG state matters.
                "init_args": {"init_filters": 8, "hidden_dim": 16, "cls_dropout": 0.3},
            },
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.003}},
            "warmup_epochs": 1,
        },
        "data": {
            "sources": {
                "class_path": "bus_mtl.data.SyntheticSource",
                "init_args": {"n": 32, "image_size": 64, "seed": 0, "root": str(synthetic_root)},
            },
            "image_size": 64,
            "batch_size": 6,
            "n_folds": 4,
            "val_fraction": 0.25,
            "augmentation": "strong",
            "num_workers": 0,
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(args, tmp_path, check=True, extra_env=None):
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        **(extra_env or {}),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "bus_mtl.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def metrics_csv(root: Path) -> pd.DataFrame:
    (path,) = root.glob("*/version_0/metrics.csv")
    return pd.read_csv(path)


def val_history(frame: pd.DataFrame) -> pd.DataFrame:
    rows = frame.dropna(subset=["val/loss"]).drop_duplicates("epoch", keep="last")
    return rows.set_index("epoch")[VAL_KEYS].sort_index()


def train_history(frame: pd.DataFrame) -> pd.Series:
    rows = frame.dropna(subset=["train/loss_step"]).drop_duplicates("step", keep="last")
    return rows.set_index("step")["train/loss_step"].sort_index()


KILLER = textwrap.dedent(
    """
    import os, signal
    from lightning.pytorch.callbacks import Callback

    class KillAtStep(Callback):
        def __init__(self, step: int = 5):
            self.step = step

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == self.step:
                os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_uninterrupted_history(tmp_path, synthetic_root):
    (tmp_path / "killer.py").write_text(KILLER)
    full = write_config(tmp_path / "full.yaml", synthetic_root, tmp_path / "full")
    run_cli(["fit", "--config", str(full)], tmp_path)

    killed_root = tmp_path / "killed"
    kill = {"class_path": "killer.KillAtStep", "init_args": {"step": 5}}  # epoch 1, batch 2
    cfg_kill = write_config(tmp_path / "kill.yaml", synthetic_root, killed_root, [kill])
    proc = run_cli(["fit", "--config", str(cfg_kill)], tmp_path, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    (ckpt_dir,) = killed_root.glob("*/version_0/checkpoints")
    assert (ckpt_dir / "last.ckpt").is_file()
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"] == 3

    resume = write_config(tmp_path / "resume.yaml", synthetic_root, killed_root)
    run_cli(["fit", "--config", str(resume), "--ckpt_path", "last"], tmp_path)
    # The resumed run logged into the same version (no version_1).
    assert not list(killed_root.glob("*/version_1"))

    expected, got = metrics_csv(tmp_path / "full"), metrics_csv(killed_root)
    pd.testing.assert_frame_equal(val_history(got), val_history(expected))
    pd.testing.assert_series_equal(train_history(got), train_history(expected))
    assert len(val_history(expected)) == 3 and len(train_history(expected)) == 9


def fit_in_process(tmp_path, synthetic_root, seed, name):
    from bus_mtl.cli.main import main

    cfg = write_config(tmp_path / f"{name}.yaml", synthetic_root, tmp_path / name)
    os.environ["WANDB_MODE"] = "disabled"
    try:
        code = main(
            ["fit", "--config", str(cfg), f"--seed_everything={seed}", "--trainer.max_epochs=2"]
        )
    finally:
        os.environ["WANDB_MODE"] = "offline"
    assert code == 0
    return metrics_csv(tmp_path / name)


@pytest.mark.slow
def test_same_seed_deterministic_runs_give_identical_metrics(tmp_path, synthetic_root):
    a = fit_in_process(tmp_path, synthetic_root, 11, "a")
    b = fit_in_process(tmp_path, synthetic_root, 11, "b")
    c = fit_in_process(tmp_path, synthetic_root, 12, "c")
    pd.testing.assert_frame_equal(val_history(a), val_history(b))
    pd.testing.assert_series_equal(train_history(a), train_history(b))
    # The comparison can fail: another seed gives other numbers.
    assert not train_history(a).equals(train_history(c))


class NaNAtCall(torch.nn.Module):
    """DiceBCELoss that returns NaN from its ``nan_at``-th training call on."""

    def __init__(self, nan_at: int) -> None:
        super().__init__()
        self.loss = DiceBCELoss()
        self.calls = 0
        self.nan_at = nan_at

    def forward(self, logits, target):
        value = self.loss(logits, target)
        if self.training:
            self.calls += 1
            if self.calls > self.nan_at:
                return value * float("nan")
        return value


def test_nan_loss_stops_with_step_and_term_and_keeps_last_good_checkpoint(tmp_path, synthetic_root):
    pl.seed_everything(0)
    net = SharedEncoder(init_filters=8, hidden_dim=16)
    module = MultiTaskModule(net, seg_loss=NaNAtCall(nan_at=4))  # NaN at global step 4
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=-1)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=3,
        logger=CSVLogger(tmp_path),
        callbacks=[ckpt, FiniteLossGuard()],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    dm = BUSDataModule(
        SyntheticSource(n=32, image_size=64, seed=0, root=synthetic_root),
        image_size=64,
        batch_size=6,
        n_folds=4,
        val_fraction=0.25,
    )
    with pytest.raises(FloatingPointError) as info:
        trainer.fit(module, datamodule=dm)
    message = str(info.value)
    assert "global step 4" in message and "loss_seg=nan" in message
    assert "last.ckpt" in message
    # Only epoch 0's checkpoints exist, and their weights are finite.
    saved = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert saved == ["epoch=0-step=3.ckpt", "last.ckpt"]
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3
    assert all(
        torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point()
    )
    # The weights in memory were not stepped on with the NaN gradients either.
    assert all(torch.isfinite(p).all() for p in module.parameters())


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_single_process_validation(tmp_path, synthetic_root):
    cfg = write_config(
        tmp_path / "ddp.yaml",
        synthetic_root,
        tmp_path / "ddp",
        strategy="ddp",
        devices=2,
        max_epochs=1,
    )
    run_cli(["fit", "--config", str(cfg)], tmp_path)
    ddp_val = metrics_csv(tmp_path / "ddp").dropna(subset=["val/loss"]).iloc[-1]
    (last,) = (tmp_path / "ddp").glob("*/version_0/checkpoints/last.ckpt")

    single = write_config(tmp_path / "single.yaml", synthetic_root, tmp_path / "single")
    run_cli(["validate", "--config", str(single), "--ckpt_path", str(last)], tmp_path)
    (path,) = (tmp_path / "single").glob("*/version_0/metrics.csv")
    single_val = pd.read_csv(path).dropna(subset=["val/loss"]).iloc[-1]
    # 6 validation images split 3 + 3 over the ranks (no padding duplicates); the metric
    # states are synced, so every image counts once.
    for key in ["val/dice", "val/iou", "val/auc", "val/acc", "val/brier", "val/hd95"]:
        assert ddp_val[key] == pytest.approx(single_val[key], rel=1e-5, nan_ok=True), key
    assert ddp_val["val/loss"] == pytest.approx(single_val["val/loss"], rel=1e-5)
