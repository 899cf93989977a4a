"""Site calibration: a trained model's operating point refitted for another hospital.

Two workflows, both writing a *new* checkpoint or ONNX export whose stored operating point
is the site's, so ``bus-mtl predict``, ``evaluate`` and ``export`` use it with no flag:

* :func:`calibrate_site` (labelled local cases): the temperature refitted by minimum NLL
  (:func:`~bus_mtl.training.calibration.fit_temperature`) and the decision threshold chosen on
  the refitted probabilities (:func:`~bus_mtl.training.calibration.choose_threshold`; by
  default the highest threshold reaching a sensitivity of 0.90: a screening operating point);
* :func:`adapt_site` (unlabelled local cases): EM prior-shift correction, BatchNorm
  statistics re-estimated on the site's images, or both
  (:mod:`bus_mtl.inference.site_adaptation`).

This sits above training and inference because it needs the training side's fitting
functions and the deployment side's predictors. ``bus-mtl calibrate`` is its command line
and ``bus-mtl bench site-calibration`` measures both on BrEaST-Lesions_USG.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bus_mtl import __version__
from bus_mtl.inference.site_adaptation import (
    DEFAULT_BATCH_SIZE,
    PriorShift,
    SiteCases,
    SiteModel,
    check_new_file,
    em_prior_shift,
    prior_shift_point,
    read_site_cases,
)
from bus_mtl.training.calibration import (
    TemperatureCalibration,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
)
from bus_mtl.training.metrics import binary_metrics

SITE_RULES = ("sensitivity", "sensitivity_binormal", "youden_binormal", "youden")
DEFAULT_RULE = "sensitivity"
DEFAULT_TARGET_SENSITIVITY = 0.9
ADAPT_MODES = ("prior", "bn", "both")
# An EM prevalence this close to 0 or 1 says the site's probabilities are no mixture of the
# training site's two classes (EM runs to the boundary): the threshold it implies would call
# every case one class, so no such point is written.
PRIOR_BOUNDS = (0.01, 0.99)
# Shares of a site's cases called malignant outside these are reported with a warning after an
# unlabelled adaptation (not refused: a screening population may well be 97 % benign).
CALLED_BOUNDS = (0.03, 0.9)
# Below this many cases of a class a refitted threshold is decided by one or two images
# (a sensitivity target on 2 malignant cases can only be 0, 0.5 or 1): refused.
MIN_PER_CLASS = 3


def check_rule(rule: str, target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY) -> None:
    """``ValueError`` naming the value for a rule outside :data:`SITE_RULES` or a target
    sensitivity outside (0, 1]."""
    if rule not in SITE_RULES:
        raise ValueError(
            f"site threshold rule must be one of {SITE_RULES}, got {rule!r} ('fixed' keeps the "
            "stored threshold: nothing to calibrate)"
        )
    if not 0.0 < float(target_sensitivity) <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target_sensitivity!r}")


def rule_name(rule: str, target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY) -> str:
    """The rule as checkpoints record it (``sensitivity>=0.9``, ``youden_binormal``)."""
    check_rule(rule, target_sensitivity)
    return TemperatureCalibration(
        threshold_rule=rule, target_sensitivity=target_sensitivity
    ).rule_name(1)


def check_class_counts(labels: Any, where: str = "the calibration cases") -> tuple[int, int]:
    """(benign, malignant) counts of 0/1 ``labels``; ``ValueError`` naming both counts when
    either is below :data:`MIN_PER_CLASS`."""
    y = np.asarray(labels).reshape(-1)
    benign, malignant = int((y == 0).sum()), int((y == 1).sum())
    if benign < MIN_PER_CLASS or malignant < MIN_PER_CLASS:
        raise ValueError(
            f"{where}: site calibration needs at least {MIN_PER_CLASS} malignant and "
            f"{MIN_PER_CLASS} benign labelled cases, got {malignant} malignant and {benign} "
            "benign; add labelled cases, or adapt without labels (bus-mtl calibrate "
            "--unlabelled)"
        )
    return benign, malignant


def rates(probs: Any, labels: Any, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, balanced accuracy, AUC and Brier at ``p > threshold`` by
    the project's one definition (:func:`~bus_mtl.training.metrics.binary_metrics`)."""
    m = binary_metrics(
        torch.as_tensor(np.asarray(probs, dtype=np.float64)),
        torch.as_tensor(np.asarray(labels, dtype=np.int64)),
        float(threshold),
    )
    keys = ("sensitivity", "specificity", "balanced_acc", "auc", "brier")
    return {k: float(m[k]) for k in keys}


def probabilities(logits: Any, temperature: float) -> np.ndarray:
    """(N,) malignancy probabilities ``sigmoid(logit / T)``, as the predictors compute them."""
    z = np.asarray(logits, dtype=np.float64).reshape(-1) / float(temperature)
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_site_point(
    logits: Any,
    labels: Any,
    rule: str = DEFAULT_RULE,
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
    site: str = "",
) -> dict[str, Any]:
    """The operating point fitted on a site's labelled cases.

    Args:
        logits: (N,) malignancy logits of the cases (before any temperature).
        labels: (N,) 0 benign / 1 malignant.
        rule: :data:`SITE_RULES` (``choose_threshold``'s rules).
        target_sensitivity: for ``rule="sensitivity"``.
        site: named in the returned ``threshold_rule``.

    Returns:
        ``{temperature, decision_threshold, threshold_rule, calibration}`` as a checkpoint
        stores an operating point; ``calibration`` holds the case counts, the in-sample
        sensitivity/specificity and ECE, and warnings when the temperature sits at its bound.
    """
    check_rule(rule, target_sensitivity)
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64).reshape(-1, 1))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1))
    if z.shape[0] != y.shape[0]:
        raise ValueError(f"{z.shape[0]} logits but {y.shape[0]} labels")
    benign, malignant = check_class_counts(y.numpy())
    temperature = fit_temperature(z, y)
    probs = torch.sigmoid(z[:, 0] / temperature)
    threshold = choose_threshold(probs, y, rule, target_sensitivity)
    in_sample = rates(probs.numpy(), y.numpy(), threshold)
    values = {
        "temperature": temperature,
        "ece_uncalibrated": expected_calibration_error(z, y),
        "ece_calibrated": expected_calibration_error(z / temperature, y),
        "brier_calibrated": in_sample["brier"],
        "logit_std": float(z.std()),
    }
    name = rule_name(rule, target_sensitivity)
    return {
        "temperature": temperature,
        "decision_threshold": threshold,
        "threshold_rule": f"{name} on site {site}" if site else name,
        "calibration": {
            **{k: v for k, v in values.items() if k != "temperature"},
            "n_benign": benign,
            "n_malignant": malignant,
            "sensitivity_in_sample": in_sample["sensitivity"],
            "specificity_in_sample": in_sample["specificity"],
            "warnings": TemperatureCalibration.warnings_for(values),
        },
    }


def stratified_draw(labels: Any, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``k`` cases drawn without replacement, the two classes in the proportion
    of ``labels`` (rounded; at least :data:`MIN_PER_CLASS` of each), sorted.

    Raises:
        ValueError: ``k`` leaves fewer than :data:`MIN_PER_CLASS` cases of a class outside
            the draw or is below ``2 * MIN_PER_CLASS``, naming ``k`` and the counts.
    """
    y = np.asarray(labels).reshape(-1)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    k = int(k)
    n_pos = int(round(k * len(pos) / max(len(y), 1)))
    n_pos = min(max(n_pos, MIN_PER_CLASS), k - MIN_PER_CLASS)
    n_neg = k - n_pos
    if (
        k < 2 * MIN_PER_CLASS
        or n_pos > len(pos) - MIN_PER_CLASS
        or n_neg > len(neg) - MIN_PER_CLASS
    ):
        raise ValueError(
            f"k={k} calibration cases cannot be drawn from {len(pos)} malignant and {len(neg)} "
            f"benign cases: k must be at least {2 * MIN_PER_CLASS} and leave at least "
            f"{MIN_PER_CLASS} cases of each class to evaluate on"
        )
    pick = np.concatenate(
        [rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)]
    )
    return np.sort(pick)


def check_site_prior(shift: PriorShift, where: str) -> None:
    """``ValueError`` naming the estimate when EM put the site's prevalence outside
    :data:`PRIOR_BOUNDS`."""
    low, high = PRIOR_BOUNDS
    if not low <= shift.site_prior <= high:
        raise ValueError(
            f"{where}: EM put the site's malignancy prevalence at {shift.site_prior:.4f} "
            f"(outside [{low}, {high}]; training {shift.source_prior:.3f}): the site's "
            "probabilities are no mixture of the training site's classes, so a prior-shift "
            "correction would call every case one class; calibrate with labelled cases, or "
            "try --adapt bn"
        )


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class SiteResult:
    """What a site calibration or adaptation did.

    Attributes:
        out: the file written.
        cases: the site's cases it used.
        record: what the file records under ``site_calibration``.
        before, after: ``{mode: operating point}`` stored before and written.
        checks: ``{mode: {"before": rates, "after": rates}}`` on the labelled cases
            themselves (in-sample: the same cases the point was fitted on); empty without
            labels.
        shifts: ``{mode: PriorShift}`` of an EM prior-shift adaptation.
        batchnorm_layers: BatchNorm layers re-estimated (0: none).
        called: ``{mode: (before, after)}`` shares of the site's cases called malignant by
            the stored model and by the adapted one (label-free: what an unlabelled
            adaptation can show about itself).
    """

    out: Path
    cases: SiteCases
    record: dict[str, Any]
    before: dict[str, dict[str, Any]]
    after: dict[str, dict[str, Any]]
    checks: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    shifts: dict[str, PriorShift] = field(default_factory=dict)
    batchnorm_layers: int = 0
    called: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __str__(self) -> str:
        c = self.cases
        lines = [
            f"site {c.site}: {len(c)} cases"
            + (
                f" ({c.n_benign} benign, {c.n_malignant} malignant)"
                if c.n_malignant
                else " (unlabelled)"
            )
            + f" from {c.manifest}"
            + (f"; {c.skipped_normal} normal case(s) left out" if c.skipped_normal else ""),
            f"method {self.record['method']}"
            + (
                f", rule {self.record['threshold_rule']}" if "threshold_rule" in self.record else ""
            ),
        ]
        if self.batchnorm_layers:
            lines.append(f"BatchNorm statistics of {self.batchnorm_layers} layers re-estimated")
        for mode, point in self.after.items():
            old = self.before[mode]
            lines.append(
                f"tta {mode}: temperature {old['temperature']:.4g} -> {point['temperature']:.4g}, "
                f"decision threshold {old['decision_threshold']:.4g} -> "
                f"{point['decision_threshold']:.4g}"
            )
            if mode in self.shifts:
                s = self.shifts[mode]
                lines.append(
                    f"  EM prevalence {s.source_prior:.3f} (training) -> {s.site_prior:.3f} "
                    f"(site; {s.iterations} steps{'' if s.converged else ', NOT converged'})"
                )
            if mode in self.called:
                b, a = self.called[mode]
                lines.append(f"  share of the site's cases called malignant: {b:.3f} -> {a:.3f}")
                if not CALLED_BOUNDS[0] <= a <= CALLED_BOUNDS[1]:
                    lines.append(
                        f"  WARNING: the adapted model calls {a:.1%} of the site's cases "
                        "malignant; check it on a few labelled cases before use (calibrate "
                        "with labels)"
                    )
            if mode in self.checks:
                b, a = self.checks[mode]["before"], self.checks[mode]["after"]
                lines.append(
                    f"  on these {len(c)} cases (in-sample: the point was fitted on them): "
                    f"sensitivity {b['sensitivity']:.3f} -> {a['sensitivity']:.3f}, "
                    f"specificity {b['specificity']:.3f} -> {a['specificity']:.3f}, "
                    f"AUC {a['auc']:.3f}"
                )
            for warning in (point.get("calibration") or {}).get("warnings", []):
                lines.append(f"  WARNING: {warning}")
        lines.append(f"wrote {self.out}")
        return "\n".join(lines)


def _record(cases: SiteCases, method: str, **extra: Any) -> dict[str, Any]:
    return {
        "site": cases.site,
        "method": method,
        "manifest": str(cases.manifest),
        "n_cases": len(cases),
        "n_benign": cases.n_benign if cases.n_malignant or cases.n_benign else None,
        "n_malignant": cases.n_malignant if cases.n_malignant or cases.n_benign else None,
        "date": _now(),
        "bus_mtl_version": __version__,
        **extra,
    }


def calibrate_site(
    out: str | Path,
    manifest: str | Path,
    ckpt: str | Path | None = None,
    model: str | Path | None = None,
    rule: str = DEFAULT_RULE,
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
    site: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "cpu",
) -> SiteResult:
    """Refit the temperature and decision threshold on a site's labelled cases and write
    the model with that operating point to ``out`` (a new checkpoint, or ONNX export).

    Every test-time augmentation the model holds an operating point for is refitted (a
    ``model.tta: hflip`` checkpoint's single pass too), from one forward pass.

    Raises:
        ValueError: an unknown rule, fewer than :data:`MIN_PER_CLASS` cases of a class,
            ``out`` equal to the input, a model that is not a benign/malignant classifier.
        DataError: manifest problems, all of them.
    """
    check_rule(rule, target_sensitivity)
    if (ckpt or model) is not None:
        check_new_file(ckpt or model, out)  # type: ignore[arg-type]
    cases = read_site_cases(manifest, site=site, labelled=True)
    check_class_counts(cases.labels, f"{manifest} (site {cases.site})")
    site_model = SiteModel.load(ckpt=ckpt, model=model, device=device)
    logits = site_model.logits(cases.images, batch_size)
    before = {mode: site_model.operating_point(mode) for mode in site_model.modes}
    after, checks = {}, {}
    for mode in site_model.modes:
        after[mode] = fit_site_point(
            logits[mode], cases.labels, rule, target_sensitivity, cases.site
        )
        checks[mode] = {
            "before": rates(
                probabilities(logits[mode], before[mode]["temperature"]),
                cases.labels,
                before[mode]["decision_threshold"],
            ),
            "after": rates(
                probabilities(logits[mode], after[mode]["temperature"]),
                cases.labels,
                after[mode]["decision_threshold"],
            ),
        }
    record = _record(
        cases,
        "labelled",
        rule=rule,
        target_sensitivity=float(target_sensitivity) if rule == "sensitivity" else None,
        threshold_rule=rule_name(rule, target_sensitivity),
    )
    written = site_model.write(out, after, record)
    return SiteResult(written, cases, record, before, after, checks=checks)


def adapt_site(
    out: str | Path,
    manifest: str | Path,
    adapt: str,
    ckpt: str | Path | None = None,
    model: str | Path | None = None,
    site: str | None = None,
    source_prior: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "cpu",
) -> SiteResult:
    """Adapt to a site without labels (the manifest's ``label`` column is not read) and
    write the adapted model to ``out``.

    ``adapt``:

    * ``"prior"``: the site's malignancy prevalence estimated by EM from the model's
      calibrated probabilities on the site's images; the stored threshold is kept as the
      threshold on the prior-adjusted posterior, which is stored as the equivalent
      threshold on the unadjusted probability (:func:`prior_shift_point`);
    * ``"bn"`` (checkpoints only): every BatchNorm layer's running statistics re-estimated
      on the site's images; temperature and threshold kept;
    * ``"both"``: BatchNorm first, then the prior shift on the adapted network's outputs.

    There is no default: neither gained sensitivity on BrEaST-Lesions_USG (docs/results.md,
    site calibration).

    ``source_prior``: the prevalence the stored probabilities refer to (default: the one the
    checkpoint or export recorded, :func:`~bus_mtl.training.losses.calibrated_prior`).
    """
    if adapt not in ADAPT_MODES:
        raise ValueError(f"adapt must be one of {ADAPT_MODES}, got {adapt!r}")
    if (ckpt or model) is not None:
        check_new_file(ckpt or model, out)  # type: ignore[arg-type]
    cases = read_site_cases(manifest, site=site, labelled=False)
    site_model = SiteModel.load(ckpt=ckpt, model=model, device=device)
    uses_prior = adapt in ("prior", "both")
    if uses_prior:
        source_prior = source_prior if source_prior is not None else site_model.source_prior()
        if source_prior is None:
            raise ValueError(
                f"{site_model.path}: records no source prior (written before bus_mtl recorded "
                "it); pass the prevalence its probabilities refer to: --source-prior 0.5 for "
                "the default class-balanced loss (pos_weight: auto), the training part's "
                "malignant fraction (e.g. 0.325 on BUSI) for an unweighted one"
            )
    before = {mode: site_model.operating_point(mode) for mode in site_model.modes}
    logits = stored_logits = site_model.logits(cases.images, batch_size)
    layers = 0
    if adapt in ("bn", "both"):
        layers = site_model.adapt_batchnorm(cases.images, batch_size)
        logits = site_model.logits(cases.images, batch_size)
    after: dict[str, dict[str, Any]] = {}
    shifts: dict[str, PriorShift] = {}
    if uses_prior:
        for mode in site_model.modes:
            probs = probabilities(logits[mode], before[mode]["temperature"])
            shifts[mode] = em_prior_shift(probs, float(source_prior))  # type: ignore[arg-type]
            check_site_prior(shifts[mode], f"{manifest} (site {cases.site}, tta {mode})")
            after[mode] = prior_shift_point(before[mode], shifts[mode], cases.site)
            if layers:
                after[mode]["threshold_rule"] = (
                    f"{before[mode].get('threshold_rule') or 'fixed'} + BatchNorm statistics "
                    f"and EM prior shift on site {cases.site}"
                )
    else:
        for mode in site_model.modes:
            point = dict(before[mode])
            point["threshold_rule"] = (
                f"{point.get('threshold_rule') or 'fixed'} + BatchNorm statistics of site "
                f"{cases.site}"
            )
            after[mode] = point
    record = _record(
        cases,
        {"prior": "em_prior_shift", "bn": "batchnorm", "both": "batchnorm+em_prior_shift"}[adapt],
        batchnorm_layers=layers,
        source_prior=float(source_prior) if uses_prior else None,
        site_prior={m: s.site_prior for m, s in shifts.items()} or None,
    )
    called = {
        mode: (
            _called(stored_logits[mode], before[mode]),
            _called(logits[mode], after[mode]),
        )
        for mode in site_model.modes
    }
    record["called_malignant"] = {m: {"before": b, "after": a} for m, (b, a) in called.items()}
    written = site_model.write(out, after, record, batchnorm=layers > 0)
    return SiteResult(
        written,
        cases,
        record,
        before,
        after,
        shifts=shifts,
        batchnorm_layers=layers,
        called=called,
    )


def _called(logits: np.ndarray, point: dict[str, Any]) -> float:
    """Share of cases whose probability under ``point`` is above its threshold."""
    probs = probabilities(logits, point["temperature"])
    return float(np.mean(probs > float(point["decision_threshold"])))
