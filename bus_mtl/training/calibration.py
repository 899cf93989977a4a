"""Temperature scaling (Guo et al. 2017) and the decision threshold, fitted on validation.

Also the honest part of a calibration report: a small ECE means nothing when every
probability equals the prevalence, so the report carries the Brier skill score and the
spread of the logits, and warns when the temperature sits at its bound or the logits are
(near) constant.
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torchmetrics.functional.classification import binary_roc

from bus_mtl.models.rebuild import net_state_dict
from bus_mtl.models.tta import with_tta
from bus_mtl.training.metrics import ECE_BINS, MALIGNANT, brier_score, calibration_error

LOG_T_BOUND = 3.0  # temperatures searched in [e^-3, e^3] ≈ [0.05, 20]
THRESHOLD_RULES = ("youden_binormal", "youden", "sensitivity", "sensitivity_binormal", "fixed")
BINORMAL_GRID = 4001  # cut-offs searched on the logit scale by the binormal Youden rule
# Logits whose standard deviation is below this carry no ranking worth calibrating: the
# signature of a collapsed network (e.g. BatchNorm statistics that never caught up).
MIN_LOGIT_STD = 1e-2


def _nll(logits: Tensor, labels: Tensor) -> Tensor:
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], labels.float())
    return F.cross_entropy(logits, labels)


def expected_calibration_error(logits: Tensor, labels: Tensor, n_bins: int = ECE_BINS) -> float:
    """The ECE of the training logs (``val/ece``, ``test/ece``) for B×K logits: of
    ``P(malignant)`` (sigmoid for K = 1, the malignant softmax column for K = 3) against the
    malignant indicator, one-vs-rest, never top-label; :data:`ECE_BINS` equal-width bins, L1
    (:func:`bus_mtl.training.metrics.calibration_error`). Labels < 0 are ignored."""
    keep = labels >= 0
    logits, labels = logits[keep].float(), labels[keep]
    if logits.shape[1] == 1:
        probs = torch.sigmoid(logits[:, 0])
    else:
        probs = torch.softmax(logits, dim=1)[:, MALIGNANT]
    return float(calibration_error(probs, labels, n_bins=n_bins))


def fit_temperature(logits: Tensor, labels: Tensor, max_iter: int = 100) -> float:
    """The temperature T in [0.05, 20] that minimises the NLL of ``logits / T``
    (grid search on log T, refined by LBFGS).

    Args:
        logits: B×K class logits (K = 1: malignancy logit).
        labels: (B,) labels; entries < 0 are ignored.
    """
    keep = labels >= 0
    logits, labels = logits[keep].detach().double(), labels[keep].long()
    if logits.numel() == 0:
        raise ValueError("no labelled validation image to fit the temperature on")
    # A coarse grid on log T first: with near-constant logits the NLL is almost flat and
    # LBFGS alone can wander off; the grid's best point starts it and bounds the answer.
    grid = torch.linspace(-LOG_T_BOUND, LOG_T_BOUND, 61, dtype=torch.float64)
    with torch.no_grad():
        losses = torch.stack([_nll(logits / g.exp(), labels) for g in grid])
    start = grid[int(torch.argmin(losses))]
    log_t = start.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = _nll(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    refined = float(log_t.detach().clamp(-LOG_T_BOUND, LOG_T_BOUND))
    with torch.no_grad():
        if not math.isfinite(refined) or _nll(logits / math.exp(refined), labels) > losses.min():
            refined = float(start)
    return math.exp(refined)


def binormal_youden_threshold(probs: Tensor, labels: Tensor) -> float | None:
    """The cut-off maximising Youden's J under a binormal model of the two classes' logits.

    Each class's ``logit(p)`` is modelled as a normal distribution (mean and standard
    deviation of that class), and ``J(c) = Phi((c - m0) / s0) - Phi((c - m1) / s1)`` is
    maximised over a fine grid of cut-offs (the "normal method" of Fluss, Faraggi & Reiser,
    Biometrical Journal 2005). The empirical maximiser of J jumps with single images when a
    class has a few dozen; the fitted one moves with the means and spreads of all of them.

    Args:
        probs: (N,) probabilities in (0, 1).
        labels: (N,) 0/1 labels.

    Returns:
        the threshold on the probability scale, or ``None`` when the model does not apply:
        fewer than two images of a class, a class with no spread, or no cut-off with J > 0
        (a classifier that ranks the classes the wrong way round).
    """
    z = torch.logit(probs.double().clamp(1e-6, 1 - 1e-6))
    z0, z1 = z[labels == 0], z[labels == 1]
    if len(z0) < 2 or len(z1) < 2:
        return None
    m0, s0, m1, s1 = z0.mean(), z0.std(), z1.mean(), z1.std()
    if not (float(s0) > 0 and float(s1) > 0):
        return None
    grid = torch.linspace(float(z.min()) - 1, float(z.max()) + 1, BINORMAL_GRID, dtype=z.dtype)
    j = torch.special.ndtr((grid - m0) / s0) - torch.special.ndtr((grid - m1) / s1)
    best = int(torch.argmax(j))
    if float(j[best]) <= 0:
        return None
    return float(torch.sigmoid(grid[best]))


def binormal_sensitivity_threshold(
    probs: Tensor, labels: Tensor, target_sensitivity: float
) -> float | None:
    """The cut-off at which a normal fit to the malignant logits reaches ``target_sensitivity``.

    ``logit(p)`` of the malignant images is modelled as N(m1, s1); the threshold is
    ``m1 + s1 * Phi^-1(1 - target)``. With two dozen malignant validation images the
    empirical rule sits on the second- or third-lowest of them and moves with that one image;
    the fitted quantile moves with all of them.

    Returns ``None`` with fewer than two malignant images or no spread among them.
    """
    z = torch.logit(probs.double().clamp(1e-6, 1 - 1e-6))
    z1 = z[labels == 1]
    if len(z1) < 2 or not float(z1.std()) > 0:
        return None
    target = min(max(float(target_sensitivity), 1e-6), 1 - 1e-6)
    quantile = torch.special.ndtri(torch.tensor(1.0 - target, dtype=z.dtype))
    return float(torch.sigmoid(z1.mean() + z1.std() * quantile))


def choose_threshold(
    probs: Tensor,
    labels: Tensor,
    rule: str = "youden_binormal",
    target_sensitivity: float = 0.9,
    default: float = 0.5,
) -> float:
    """The decision threshold ``t`` (predict malignant when ``p > t``) chosen on ``probs``.

    * ``"youden_binormal"`` (default): maximises Youden's J = sensitivity + specificity - 1
      of a binormal model fitted to the logits of each class
      (:func:`binormal_youden_threshold`; the empirical rule where the model does not apply);
    * ``"youden"``: maximises the empirical J (the first, i.e. highest, threshold on ties);
    * ``"sensitivity"``: the highest threshold whose sensitivity is at least
      ``target_sensitivity`` (a screening operating point);
    * ``"sensitivity_binormal"``: the same target read off a normal fit to the malignant
      logits (:func:`binormal_sensitivity_threshold`; the empirical rule where it does not
      apply);
    * ``"fixed"``: ``default``.

    Why binormal by default: with ~25 malignant validation images the empirical maximiser
    moves with single images; fitted on one half of each fold's validation part and scored
    on the other, the binormal rule gave the steadier operating point (docs/results.md,
    "Threshold rule"; docs/protocol.md says what that choice saw).

    The empirical rules return a value half-way between the chosen ROC point's probability
    and the next lower one, so it does not sit on a validation image's probability.
    ``default`` is returned when one class is missing.

    Args:
        probs: (N,) malignancy probabilities (calibrated: the threshold is applied to them).
        labels: (N,) 0/1 labels; entries < 0 are ignored.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold rule must be one of {THRESHOLD_RULES}, got {rule!r}")
    keep = labels >= 0
    probs, labels = probs[keep].double(), (labels[keep] == 1).long()
    if rule == "fixed" or labels.numel() == 0 or int(labels.sum()) in (0, labels.numel()):
        return float(default)
    if rule == "youden_binormal":
        fitted = binormal_youden_threshold(probs, labels)
        if fitted is not None:
            return float(min(max(fitted, 1e-6), 1 - 1e-6))
        rule = "youden"
    if rule == "sensitivity_binormal":
        fitted = binormal_sensitivity_threshold(probs, labels, target_sensitivity)
        if fitted is not None:
            return float(min(max(fitted, 1e-6), 1 - 1e-6))
        rule = "sensitivity"
    fpr, tpr, thresholds = binary_roc(probs, labels)
    # thresholds descend; point i predicts malignant for p >= thresholds[i]. Point 0 is the
    # "nothing malignant" corner (threshold 1 or above): never chosen.
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    if rule == "youden":
        i = int(torch.argmax(tpr - fpr))
    else:
        reached = torch.nonzero(tpr >= target_sensitivity - 1e-12)
        i = int(reached[0]) if len(reached) else len(tpr) - 1
    upper = float(thresholds[i])
    lower = float(thresholds[i + 1]) if i + 1 < len(thresholds) else 0.0
    return float(min(max((upper + lower) / 2, 1e-6), 1 - 1e-6))


def brier_skill_score(probs: Tensor, labels: Tensor) -> float:
    """1 - Brier / Brier of always predicting the prevalence; 0 = no skill, 1 = perfect.

    The no-skill reference is the prevalence of ``labels`` itself, π(1-π) (NaN when only
    one class is present).
    """
    y = labels.double()
    reference = float(y.mean() * (1 - y.mean()))
    if reference == 0.0:
        return float("nan")
    return 1.0 - float(((probs.double() - y) ** 2).mean()) / reference


@torch.no_grad()
def collect_logits(net: nn.Module, loader: Any, device: torch.device) -> tuple[Tensor, Tensor]:
    """Run ``net`` in eval mode over ``loader``: (N×K logits, (N,) labels) on CPU."""
    was_training = net.training
    net.eval()
    logits, labels = [], []
    try:
        for batch in loader:
            out = net(batch["image"].to(device))
            logits.append(out.logits.float().cpu())
            labels.append(batch["label"].cpu())
    finally:
        net.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def calibrated_modes(pl_module: pl.LightningModule) -> tuple[str, ...]:
    """The test-time augmentations an operating point is fitted for: the module's own
    first, and the single pass of a TTA module (a deployment may drop the second view to
    halve its latency; its logits are less extreme, so it needs a temperature of its own)."""
    own = str(getattr(pl_module, "tta", "none"))
    return (own,) if own == "none" else (own, "none")


class _StepBatches:
    """A loader's batches as the steps see them: through the datamodule's
    ``normalize_batch`` (its loaders yield uint8 images, normalised once, here)."""

    def __init__(self, loader: Any, prepare: Any) -> None:
        self.loader, self.prepare = loader, prepare

    def __iter__(self) -> Any:
        return (self.prepare(batch) for batch in self.loader)


class TemperatureCalibration(Callback):
    """At the end of fit, fits on the validation logits a temperature (minimum NLL) and then,
    on the calibrated probabilities, the decision threshold (K = 1).

    Both go into the module's buffers ``temperature`` and ``decision_threshold`` (for the
    current weights) and into every checkpoint the run wrote (``last`` and the best ones,
    each fitted on its own weights), in the state_dict and in ``checkpoint["bus_mtl"]``
    (``temperature``, ``decision_threshold``, ``threshold_rule``), so whichever checkpoint a
    user loads, tests, predicts with or exports carries its own operating point.

    Logs (current weights) ``val/temperature``, ``val/decision_threshold``,
    ``val/ece_uncalibrated``, ``val/ece_calibrated`` (the ECE of ``val/ece``, malignant
    one-vs-rest also for K = 3: :func:`expected_calibration_error`), ``val/brier_calibrated``,
    ``val/brier_skill`` (1 - Brier / π(1-π)) and ``val/logit_std``, and warns when the
    temperature hits its search bound or the logits are (near) constant: then a small ECE
    only says that every probability equals the prevalence (a TTA module also logs its single
    pass's figures as ``val/<name>_tta_none``). Skipped for segmentation-only nets and under
    ``fast_dev_run``.

    The logits are the module's evaluated ones: with its test-time augmentation
    (``MultiTaskModule(tta="hflip")``: the mean over the image and its mirror), since the
    temperature and threshold are applied to exactly those at test and inference time. A
    TTA module also gets the operating point of its single pass (``tta="none"``), for a
    deployment that drops the mirror: ``checkpoint["bus_mtl"]["operating_points"]`` holds
    one entry per mode (``temperature``, ``decision_threshold``, ``threshold_rule``,
    ``calibration``), the module's attribute ``operating_points`` the current weights' ones,
    and :func:`bus_mtl.models.rebuild.operating_point` picks one.

    Args:
        max_iter: LBFGS iterations.
        n_bins: bins of the expected calibration error.
        threshold_rule: ``"youden_binormal"`` (default: maximal sensitivity +
            specificity of a binormal fit to the logits), ``"youden"`` (the empirical
            maximum), ``"sensitivity"`` (the highest threshold reaching ``target_sensitivity``, a
            screening user's choice), ``"sensitivity_binormal"`` (that target on a normal fit
            to the malignant logits) or ``"fixed"`` (the module's ``threshold``).
        target_sensitivity: for ``threshold_rule="sensitivity"``, in (0, 1].
    """

    def __init__(
        self,
        max_iter: int = 100,
        n_bins: int = ECE_BINS,
        threshold_rule: Literal[
            "youden_binormal", "youden", "sensitivity", "sensitivity_binormal", "fixed"
        ] = "youden_binormal",
        target_sensitivity: float = 0.9,
    ) -> None:
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter!r}")
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins!r}")
        if threshold_rule not in THRESHOLD_RULES:
            raise ValueError(
                f"threshold_rule must be one of {THRESHOLD_RULES}, got {threshold_rule!r}"
            )
        if not 0.0 < target_sensitivity <= 1.0:
            raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity!r}")
        self.max_iter = max_iter
        self.n_bins = n_bins
        self.threshold_rule = threshold_rule
        self.target_sensitivity = target_sensitivity

    def rule_name(self, num_classes: int) -> str:
        """How the stored threshold was chosen, as checkpoints and test logs record it."""
        if num_classes != 1:
            return "argmax"
        if self.threshold_rule == "sensitivity":
            return f"sensitivity>={self.target_sensitivity:g}"
        if self.threshold_rule == "sensitivity_binormal":
            return f"sensitivity_binormal>={self.target_sensitivity:g}"
        return self.threshold_rule

    def _superseded(self, trainer: pl.Trainer) -> bool:
        """True when another TemperatureCalibration comes later among the trainer's
        callbacks: the later one fits the operating point. A recipe appends its own
        (``trainer.callbacks+``, e.g. a sensitivity-favouring rule) without restating the
        shared callback list."""
        callbacks = list(getattr(trainer, "callbacks", []))
        mine = next((i for i, cb in enumerate(callbacks) if cb is self), None)
        if mine is None:
            return False
        return any(isinstance(cb, TemperatureCalibration) for cb in callbacks[mine + 1 :])

    def _val_loader(self, trainer: pl.Trainer) -> Any:
        # The datamodule's own loader: every rank sees the whole validation set, so every
        # rank fits the same temperature without collectives.
        datamodule = trainer.datamodule
        if datamodule is not None:
            loader = datamodule.val_dataloader()
            prepare = getattr(datamodule, "normalize_batch", None)
            return _StepBatches(loader, prepare) if prepare is not None else loader
        return trainer.val_dataloaders

    def _fit(
        self, net: nn.Module, loader: Any, device: torch.device, default_threshold: float
    ) -> dict[str, float]:
        logits, labels = collect_logits(net, loader, device)
        keep = labels >= 0
        temperature = fit_temperature(logits, labels, self.max_iter)
        logits, labels = logits[keep], labels[keep]
        out = {
            "temperature": temperature,
            "decision_threshold": float(default_threshold),
            "ece_uncalibrated": expected_calibration_error(logits, labels, self.n_bins),
            "ece_calibrated": expected_calibration_error(logits / temperature, labels, self.n_bins),
        }
        if logits.shape[1] == 1:
            probs = torch.sigmoid(logits[:, 0].double() / temperature)
            y = (labels == 1).long()
            out["decision_threshold"] = choose_threshold(
                probs, y, self.threshold_rule, self.target_sensitivity, default_threshold
            )
            out["brier_calibrated"] = float(brier_score(probs, y))
            out["brier_skill"] = brier_skill_score(probs, y)
            out["logit_std"] = float(logits[:, 0].double().std()) if len(y) > 1 else float("nan")
        else:
            out["logit_std"] = float(logits.double().std(dim=0).mean()) if len(labels) > 1 else 0.0
        return out

    @staticmethod
    def warnings_for(values: dict[str, float]) -> list[str]:
        """What in a calibration report says "no skill" rather than "well calibrated"."""
        found = []
        log_t = math.log(values["temperature"])
        if abs(abs(log_t) - LOG_T_BOUND) < 1e-3:
            found.append(
                f"the fitted temperature {values['temperature']:.4g} sits at its search bound "
                f"(e^±{LOG_T_BOUND:g}): the validation logits are not calibratable by scaling"
            )
        std = values.get("logit_std", float("nan"))
        if math.isfinite(std) and std < MIN_LOGIT_STD:
            found.append(
                f"the validation logits are (near) constant (std {std:.2e} < {MIN_LOGIT_STD:g}): "
                "the classifier ranks nothing, and a small ECE only means every probability "
                "equals the prevalence; compare eval-mode with train-mode outputs (BatchNorm "
                "running statistics)"
            )
        skill = values.get("brier_skill", float("nan"))
        if math.isfinite(skill) and skill <= 0.0:
            found.append(
                f"Brier skill score {skill:.3f} <= 0 on validation: no better than predicting "
                "the prevalence for every image"
            )
        return found

    def _fit_modes(
        self, pl_module: pl.LightningModule, net: nn.Module, loader: Any, device: torch.device
    ) -> dict[str, dict[str, float]]:
        """One fit per :func:`calibrated_modes` of ``net`` (the module's own mode first)."""
        default = float(pl_module.threshold)
        return {
            mode: self._fit(with_tta(net, mode), loader, device, default)
            for mode in calibrated_modes(pl_module)
        }

    def _points(self, pl_module: pl.LightningModule, fits: dict[str, dict[str, float]]) -> dict:
        rule = self.rule_name(pl_module.num_classes)
        return {
            mode: {
                "temperature": f["temperature"],
                "decision_threshold": f["decision_threshold"],
                "threshold_rule": rule,
                "calibration": {
                    k: v for k, v in f.items() if k not in ("temperature", "decision_threshold")
                },
            }
            for mode, f in fits.items()
        }

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run or not getattr(pl_module, "has_cls", False):
            return
        if self._superseded(trainer):
            return
        loader = self._val_loader(trainer)
        if loader is None:
            return
        device = pl_module.device
        try:
            fits = self._fit_modes(pl_module, pl_module.net, loader, device)
        except ValueError:
            return  # no labelled validation image: nothing to calibrate on
        own = calibrated_modes(pl_module)[0]
        current = fits[own]
        pl_module.temperature.fill_(current["temperature"])
        pl_module.decision_threshold.fill_(current["decision_threshold"])
        pl_module.threshold_rule = self.rule_name(pl_module.num_classes)
        pl_module.operating_points = self._points(pl_module, fits)
        for problem in self.warnings_for(current):
            warnings.warn(f"TemperatureCalibration: {problem}", RuntimeWarning, stacklevel=2)
            print(f"WARNING (calibration): {problem}", flush=True)
        logged = {f"val/{k}": v for k, v in current.items()}
        for mode, fit in fits.items():
            if mode != own:  # the single pass of a TTA module, as val/<key>_tta_none
                logged.update({f"val/{k}_tta_{mode}": v for k, v in fit.items()})
        for logger in trainer.loggers:
            logger.log_metrics(logged, trainer.global_step)
            logger.save()
        if trainer.is_global_zero:
            self._update_checkpoints(trainer, pl_module, loader, device)
        trainer.strategy.barrier("temperature_calibration")

    def _update_checkpoints(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loader: Any, device: torch.device
    ) -> None:
        paths: set[str] = set()
        for cb in trainer.checkpoint_callbacks:
            paths.update(p for p in (cb.last_model_path, cb.best_model_path) if p)
            paths.update(getattr(cb, "best_k_models", {}).keys())
        own = calibrated_modes(pl_module)[0]
        for path in sorted(paths):
            if not Path(path).is_file():
                continue
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            net = copy.deepcopy(pl_module.net)
            net.load_state_dict(net_state_dict(checkpoint))
            points = self._points(pl_module, self._fit_modes(pl_module, net, loader, device))
            meta = checkpoint.setdefault("bus_mtl", {})
            for key in ("temperature", "decision_threshold"):
                checkpoint["state_dict"][key] = torch.tensor(points[own][key])
            meta.update(points[own])
            meta["operating_points"] = points
            torch.save(checkpoint, path)
