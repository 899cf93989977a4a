"""``bus-mtl fit|validate|test|predict``: the LightningCLI of ``MultiTaskModule`` + ``BUSDataModule``.

Usage::

    bus-mtl fit --config experiments/base.yaml --data.sources experiments/data/busi.yaml \\
        --model.net experiments/variants/smp_unet.yaml
    bus-mtl fit --config ... --print_config          # the resolved config
    bus-mtl fit --config ... --ckpt_path last        # resume the latest run of that config

Beyond plain LightningCLI:

* ``data.in_channels`` and ``data.num_classes`` are linked into the net's ``init_args``;
* with no ``trainer.logger`` configured, the loggers are a (resumable) ``CSVLogger`` and a
  ``WandbLogger`` under ``trainer.default_root_dir`` (W&B offline when no API key is
  configured; ``wandb sync`` uploads the run later);
* ``--ckpt_path last`` finds the latest version of the run and logs into it again;
* a ``RichProgressBar`` when the progress bar is on and none is configured;
* a net or data-source preset given with ``--config`` is refused in one line naming
  ``--model.net`` / ``--data.sources`` (:func:`bus_mtl.configs.check_config_options`);
* the resolved config is saved (overwriting) beside the logs and in the W&B run config.
"""

from __future__ import annotations

import netrc
import os
import re
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.trainer import Trainer

from bus_mtl.cli.errors import PATH_ERRORS, ConfigError
from bus_mtl.configs import check_config_options
from bus_mtl.data.datamodule import BUSDataModule
from bus_mtl.data.errors import DataError
from bus_mtl.training.callbacks import LoggedSaveConfigCallback
from bus_mtl.training.loggers import ResumableCSVLogger
from bus_mtl.training.module import MultiTaskModule

SUBCOMMANDS = ("fit", "validate", "test", "predict")
DEFAULT_WANDB_PROJECT = "bus_mtl"


def wandb_api_key_configured() -> bool:
    """True when W&B can log online: ``WANDB_API_KEY`` set or a netrc entry for api.wandb.ai."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def configure_wandb_environment() -> str:
    """Default W&B to offline without an API key (no network), project ``bus_mtl``.

    Returns the mode W&B will use. An explicit ``WANDB_MODE`` is left alone.
    """
    if "WANDB_MODE" not in os.environ and not wandb_api_key_configured():
        os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_PROJECT", DEFAULT_WANDB_PROJECT)
    return os.environ.get("WANDB_MODE", "online")


def _run_name(model_config: Any) -> str:
    """Logger name of a run: the net's class name, e.g. ``SegResNetEffNetFeatures``."""
    net = getattr(model_config, "net", None)
    class_path = getattr(net, "class_path", None) or (
        net.get("class_path") if isinstance(net, dict) else None
    )
    return str(class_path).rsplit(".", 1)[-1] if class_path else "bus_mtl"


def resume_version(root: Path, name: str, ckpt_path: str | None) -> int | None:
    """The CSVLogger version to log into again when resuming, ``None`` for a fresh version.

    ``ckpt_path="last"``: the newest ``<root>/<name>/version_N`` holding
    ``checkpoints/last.ckpt``; a path ``.../version_N/checkpoints/x.ckpt`` inside
    ``<root>/<name>``: that N.
    """
    if not ckpt_path:
        return None
    base = root / name
    if ckpt_path == "last":
        found = []
        for d in base.glob("version_*"):
            match = re.fullmatch(r"version_(\d+)", d.name)
            if match and (d / "checkpoints" / "last.ckpt").is_file():
                found.append(int(match.group(1)))
        return max(found) if found else None
    path = Path(ckpt_path).resolve()
    match = re.fullmatch(r"version_(\d+)", path.parent.parent.name)
    if path.parent.name == "checkpoints" and match and path.parent.parent.parent == base.resolve():
        return int(match.group(1))
    return None


def _refused_by(err: BaseException) -> str:
    """``"ClassName: "`` of the outermost ``__init__`` in ``err``'s traceback (the object
    jsonargparse was building when it failed), ``""`` when there is none."""
    for frame, _ in traceback.walk_tb(err.__traceback__):
        owner = frame.f_locals.get("self") if frame.f_code.co_name == "__init__" else None
        if owner is not None:
            return f"{type(owner).__name__}: "
    return ""


class BusMTLCLI(LightningCLI):
    """LightningCLI with the links, loggers and progress bar described in the module doc.

    ``resume_from``: with ``run=False``, the checkpoint the caller will hand to
    ``trainer.fit``/``test``; the CSV logger logs into that run's version again, as
    ``--ckpt_path`` does for ``bus-mtl fit``.
    """

    def __init__(self, *args: Any, resume_from: str | None = None, **kwargs: Any) -> None:
        self.resume_from = resume_from
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Channels and classes follow the data: the net's values are not set by hand.
        parser.link_arguments(
            "data.in_channels", "model.net.init_args.in_channels", apply_on="instantiate"
        )
        parser.link_arguments(
            "data.num_classes", "model.net.init_args.num_classes", apply_on="instantiate"
        )

    def instantiate_classes(self) -> None:
        # A value the data module, model or net refuses in its __init__ is the user's to fix:
        # reported in one line (bus_mtl.cli.errors), not under jsonargparse's traceback.
        try:
            super().instantiate_classes()
        except (ValueError, *PATH_ERRORS) as err:
            if isinstance(err, DataError):
                raise
            raise ConfigError(f"{_refused_by(err)}{err}") from err

    def _default_loggers(self, trainer_config: dict[str, Any]) -> list[Logger]:
        root = Path(trainer_config.get("default_root_dir") or os.getcwd())
        name = _run_name(self._get(self.config, "model"))
        ckpt_path = (
            self._get(self.config, "ckpt_path") if self.subcommand == "fit" else self.resume_from
        )
        version = resume_version(root, name, ckpt_path)
        csv = ResumableCSVLogger(save_dir=str(root), name=name, version=version)
        try:
            import wandb  # noqa: F401
        except ImportError:
            # A stripped-down environment (an inference box, a bare GPU image) can still train.
            print("bus-mtl: wandb is not installed; logging to CSV only", file=sys.stderr)
            return [csv]
        return [csv, WandbLogger(save_dir=str(root), name=name)]

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_config = self._get(self.config_init, "trainer", default={})
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = self._default_loggers(trainer_config)
        progress_on = trainer_config.get("enable_progress_bar") is not False
        callbacks = list(trainer_config.get("callbacks") or [])
        if progress_on and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs["callbacks"] = [*callbacks, RichProgressBar()]
        return super().instantiate_trainer(**kwargs)


def build_cli(args: list[str], run: bool = True, ckpt_path: str | None = None) -> BusMTLCLI:
    """The CLI on ``args`` (``args[0]`` is the sub-command when ``run``).

    With ``run=False`` nothing runs: the caller calls ``cli.trainer.fit/test`` (``bus-mtl
    main``, each fold of ``bus-mtl cv``); ``ckpt_path`` is then the checkpoint it will pass
    there, so that a resumed run logs into its earlier version.
    """
    check_config_options(args)
    configure_wandb_environment()
    # Our args always come from bus-mtl's own argv handling, not from a stray sys.argv.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    return BusMTLCLI(
        MultiTaskModule,
        BUSDataModule,
        subclass_mode_model=False,
        subclass_mode_data=False,
        save_config_callback=LoggedSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        seed_everything_default=42,
        args=args,
        run=run,
        resume_from=None if run else ckpt_path,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bus-mtl fit|validate|test|predict``; ``argv[0]`` is the sub-command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        build_cli(argv)
    except FloatingPointError as err:  # FiniteLossGuard
        print(f"bus-mtl: training stopped: {err}", file=sys.stderr)
        return 1
    except SystemExit as exit_:  # argparse errors, --help, --print_config
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    return 0
