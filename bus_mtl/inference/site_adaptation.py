"""A trained model at a new site: the site's cases, the model's logits on them, what can be
adapted without labels, and the adapted model written as a new file.

A model trained at one hospital often ranks another hospital's cases well while its scores
move: the temperature and decision threshold fitted on the training site's validation part no
longer give the sensitivity they gave there. The parts here need no training stack:

* :func:`read_site_cases`: a manifest's images, decoded as the predictors decode them, and
  their labels when the adaptation uses labels;
* :class:`SiteModel`: a checkpoint or an ONNX export, its class logits on the site's images
  for every test-time augmentation it holds an operating point for (one forward pass), and
  the adapted copy written out (:func:`write_site_checkpoint`, :func:`write_site_onnx`);
* :func:`em_prior_shift`: the site's malignancy prevalence estimated from unlabelled
  probabilities by EM (Saerens, Latinne & Decaestecker, Neural Computation 14, 2002) and the
  posteriors adjusted to it; :func:`prior_shift_point` the operating point that makes the
  stored decisions those of the adjusted posteriors;
* :func:`reestimate_batchnorm`: BatchNorm running statistics recomputed on the site's images.

Refitting the temperature and threshold on labelled site cases uses the training side's
fitting functions (:mod:`bus_mtl.training.calibration`), which this layer may not import; it
lives one layer up, in :mod:`bus_mtl.experiments.site_calibration`, with the commands'
workflows.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bus_mtl.data.errors import DataError, ImageReadError, Problem
from bus_mtl.data.io import read_image
from bus_mtl.data.sample import parse_label
from bus_mtl.inference.metadata import METADATA_KEY, ModelInfo, sidecar_path
from bus_mtl.inference.preprocess import preprocess

SITE_RECORD_KEY = "site_calibration"  # checkpoint["bus_mtl"][...], ONNX metadata_props[...]
DEFAULT_BATCH_SIZE = 32
# The probabilities EM works on are kept this far from 0 and 1, so a saturated image cannot
# pin the prevalence estimate or make a logit infinite.
PROB_EPS = 1e-6


@dataclass(frozen=True)
class SiteCases:
    """A site's cases in manifest order.

    Attributes:
        site: the site's name (``--site``, else the manifest's ``centre`` column, else the
            manifest's folder name).
        manifest: the CSV they were read from.
        ids: image paths relative to the manifest, without suffix.
        images: H×W uint8 grey images, decoded as ``Predictor`` decodes files.
        labels: (N,) int, 0 benign, 1 malignant; -1 for every case when read unlabelled.
        skipped_normal: rows labelled ``normal`` left out (a benign/malignant operating point
            says nothing about them).
    """

    site: str
    manifest: Path
    ids: tuple[str, ...]
    images: tuple[np.ndarray, ...] = field(repr=False)
    labels: np.ndarray = field(repr=False)
    skipped_normal: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_benign(self) -> int:
        return int((self.labels == 0).sum())

    @property
    def n_malignant(self) -> int:
        return int((self.labels == 1).sum())


def read_site_cases(
    manifest: str | Path, site: str | None = None, labelled: bool = True
) -> SiteCases:
    """Read the cases listed in ``manifest`` (columns ``image``; ``label`` when ``labelled``;
    optional ``centre``; paths relative to the CSV; any other column ignored).

    ``labelled=False`` ignores the ``label`` column (unsupervised adaptation must not see it).
    Rows labelled ``normal`` are left out when ``labelled`` (counted in ``skipped_normal``).

    Raises:
        DataError: every problem at once: missing columns, unknown or empty labels, image
            files missing or unreadable, a manifest of several centres without ``site``.
    """
    import pandas as pd

    path = Path(manifest).expanduser()
    if not path.is_file():
        raise DataError([Problem(str(path), "manifest CSV not found")])
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError([Problem(str(path), f"unreadable CSV: {err}")]) from err
    df.columns = [str(c).strip().lower() for c in df.columns]
    needed = ["image", "label"] if labelled else ["image"]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        hint = (
            ""
            if not labelled or "label" not in missing
            else " (adapt without labels: --unlabelled)"
        )
        raise DataError(
            [Problem(str(path), f"missing column(s) {missing}; has {list(df.columns)}{hint}")]
        )
    if df.empty:
        raise DataError([Problem(str(path), "empty manifest: no rows")])
    problems: list[Problem] = []
    ids, images, labels, centres = [], [], [], set()
    skipped_normal = 0
    for row_no, row in enumerate(df.to_dict("records"), start=2):  # the header is line 1
        where = f"{path}:{row_no}"
        centre = str(row.get("centre", "")).strip()
        if centre:
            centres.add(centre)
        rel = str(row.get("image", "")).strip()
        if not rel:
            problems.append(Problem(where, "empty 'image' cell"))
            continue
        label = -1
        if labelled:
            parsed = parse_label(row.get("label"))
            if parsed is None:
                problems.append(
                    Problem(
                        where,
                        f"unknown label {row.get('label')!r} for {rel} "
                        "(use benign/malignant or 0/1; normal rows are left out)",
                    )
                )
                continue
            if parsed == 2:
                skipped_normal += 1
                continue
            label = int(parsed)
        try:
            gray = read_image(path.parent / rel)
        except ImageReadError as err:
            problems.append(Problem(str(path.parent / rel), f"{err} (manifest {where})"))
            continue
        ids.append(Path(rel).with_suffix("").as_posix())
        images.append(gray)
        labels.append(label)
    if site is None and len(centres) > 1:
        problems.append(
            Problem(
                str(path),
                f"the manifest holds several centres {sorted(centres)}: an operating point "
                "belongs to one site; split the manifest, or name the site that pools them "
                "with --site NAME",
            )
        )
    if not ids and not problems:
        problems.append(Problem(str(path), "no benign or malignant case in the manifest"))
    if problems:
        raise DataError(problems)
    name = site or (centres.pop() if centres else path.parent.name)
    return SiteCases(
        site=str(name),
        manifest=path,
        ids=tuple(ids),
        images=tuple(images),
        labels=np.asarray(labels, dtype=np.int64),
        skipped_normal=skipped_normal,
    )


def check_binary_classifier(info: ModelInfo, where: str) -> None:
    """``ValueError`` unless the model has one malignancy logit (K = 1): a site's operating
    point is a temperature and a threshold on ``P(malignant)``."""
    if not info.has_cls:
        raise ValueError(f"{where}: the model has no classification head; nothing to calibrate")
    if info.num_classes != 1:
        raise ValueError(
            f"{where}: the model has {info.num_classes} class logits; site calibration fits the "
            "malignancy threshold of a benign/malignant model (one logit, num_classes = 1)"
        )


def _batches(
    images: Sequence[np.ndarray], info: ModelInfo, batch_size: int
) -> Iterable[np.ndarray]:
    """N×C×S×S float32 network inputs, ``batch_size`` at a time, preprocessed as the
    predictors preprocess (:func:`~bus_mtl.inference.preprocess.preprocess`)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        yield np.concatenate([preprocess(g, info) for g in chunk], axis=0)


def _even_batches(
    images: Sequence[np.ndarray], info: ModelInfo, batch_size: int
) -> list[np.ndarray]:
    """Like :func:`_batches`, in near-equal sizes (never 1): training-mode BatchNorm cannot
    take statistics over one image, and a cumulative average weighs every batch alike."""
    n = len(images)
    if n < 2:
        raise ValueError(f"BatchNorm re-estimation needs at least 2 images, got {n}")
    chunks = max(1, min(math.ceil(n / max(batch_size, 2)), n // 2))
    bounds = np.linspace(0, n, chunks + 1).round().astype(int)
    return [
        np.concatenate([preprocess(g, info) for g in images[a:b]], axis=0)
        for a, b in zip(bounds[:-1], bounds[1:])
    ]


# ----------------------------------------------------------------------------- BatchNorm
def batchnorm_layers(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``net`` (EfficientNet's; SegResNet's only when it was built
    with ``norm="batch"``, its default GroupNorm keeps no running statistics)."""
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def batchnorm_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The running statistics of ``net``'s BatchNorm layers, keyed as in its state_dict
    (``running_mean``, ``running_var``, ``num_batches_tracked``)."""
    names = {
        f"{prefix}.{buffer}" if prefix else buffer
        for prefix, module in net.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for buffer in ("running_mean", "running_var", "num_batches_tracked")
    }
    return {k: v.detach().clone() for k, v in net.state_dict().items() if k in names}


@torch.no_grad()
def reestimate_batchnorm(net: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Replace the running statistics of every BatchNorm layer of ``net`` by the site's.

    Each BatchNorm is reset and put in training mode with a cumulative average (PyTorch's
    ``momentum=None``), everything else stays in eval mode (no dropout), and ``net`` runs over
    ``batches`` (each B×C×H×W, B >= 2; normalised network inputs) without gradients. The
    weights and every other buffer are left as they are; each layer's momentum and ``net``'s
    mode are restored. This is AdaBN (Li et al., 2016): the source's normalisation replaced
    by the target's, the learned affine maps kept.

    ``net`` is the network as it is evaluated (e.g. a :class:`~bus_mtl.models.FlipTTA`, whose
    batch of image and mirror is what its BatchNorm layers see at inference).

    Returns:
        the number of BatchNorm layers re-estimated.

    Raises:
        ValueError: ``net`` has no BatchNorm layer, ``batches`` is empty, or a batch holds
            one image (training-mode BatchNorm needs two); nothing is changed then.
    """
    layers = batchnorm_layers(net)
    if not layers:
        raise ValueError(
            f"{type(net).__name__} has no BatchNorm layer: nothing to re-estimate (GroupNorm "
            "and LayerNorm normalise each image by itself and keep no site statistics)"
        )
    batches = list(batches)
    if not batches:
        raise ValueError("no image to re-estimate the BatchNorm statistics on")
    small = [tuple(b.shape) for b in batches if b.shape[0] < 2]
    if small:
        raise ValueError(
            f"BatchNorm re-estimation needs batches of at least 2 images, got shapes {small}"
        )
    was_training = net.training
    momenta = [layer.momentum for layer in layers]
    net.eval()
    try:
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average over the batches
            layer.train()
        for batch in batches:
            net(batch)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        net.train(was_training)
    return len(layers)


# ----------------------------------------------------------------------------- prior shift
@dataclass(frozen=True)
class PriorShift:
    """The site's malignancy prevalence estimated by EM, and the posterior adjustment.

    Attributes:
        source_prior: the prevalence the model's calibrated probabilities refer to.
        site_prior: EM's estimate of the site's prevalence.
        logit_shift: ``logit(site_prior) - logit(source_prior)``: an adjusted posterior is
            ``sigmoid(logit(p) + logit_shift)``.
        iterations: EM steps taken.
        converged: whether the estimate moved less than the tolerance in the last step.
    """

    source_prior: float
    site_prior: float
    logit_shift: float
    iterations: int
    converged: bool

    def adjust(self, probs: np.ndarray) -> np.ndarray:
        """(N,) probabilities adjusted to ``site_prior`` (Saerens et al., eq. 2.4)."""
        return adjust_to_prior(probs, self.source_prior, self.site_prior)


def _logit(p: float | np.ndarray) -> float | np.ndarray:
    return np.log(p) - np.log1p(-p)


def _check_probs(probs: Any, what: str = "probabilities") -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if p.size == 0:
        raise ValueError(f"no {what} to estimate the site's prevalence from")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError(f"{what} must be finite and in [0, 1]; got range [{p.min()}, {p.max()}]")
    return np.clip(p, PROB_EPS, 1 - PROB_EPS)


def _check_prior(prior: float, name: str) -> float:
    if not 0.0 < float(prior) < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {prior!r}")
    return float(prior)


def adjust_to_prior(probs: Any, source_prior: float, site_prior: float) -> np.ndarray:
    """Posteriors ``P(malignant | x)`` made under ``source_prior`` adjusted to
    ``site_prior``: ``w1 p / (w1 p + w0 (1 - p))`` with ``w1 = site/source``, ``w0 = (1 -
    site)/(1 - source)`` (Bayes' rule with the class-conditional densities unchanged)."""
    p = _check_probs(probs)
    source = _check_prior(source_prior, "source_prior")
    site = _check_prior(site_prior, "site_prior")
    w1, w0 = site / source, (1 - site) / (1 - source)
    return w1 * p / (w1 * p + w0 * (1 - p))


def em_prior_shift(
    probs: Any, source_prior: float, max_iter: int = 1000, tol: float = 1e-8
) -> PriorShift:
    """Estimate the site's malignancy prevalence from unlabelled probabilities by EM
    (Saerens, Latinne & Decaestecker, Neural Computation 14, 2002, section 2.2).

    Starting from ``source_prior``, alternate: adjust every posterior to the current prior
    (:func:`adjust_to_prior`, E step), take the mean adjusted posterior as the new prior (M
    step), until it moves by less than ``tol``. The fixed point is the maximum-likelihood
    prevalence when only the prior changed between the sites and ``probs`` were calibrated
    at ``source_prior``; how far that holds at a real site is measured, not assumed
    (``bus-mtl bench site-calibration``).

    Args:
        probs: (N,) calibrated malignancy probabilities of the site's images.
        source_prior: the prevalence those probabilities refer to (the training part's:
            the temperature was fitted on a validation part of the same prevalence).
    """
    p = _check_probs(probs)
    source = _check_prior(source_prior, "source_prior")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter!r}")
    prior, converged, steps = source, False, 0
    while steps < max_iter and not converged:
        new = float(np.mean(adjust_to_prior(p, source, prior)))
        new = min(max(new, PROB_EPS), 1 - PROB_EPS)
        converged = abs(new - prior) < tol
        prior, steps = new, steps + 1
    return PriorShift(
        source_prior=source,
        site_prior=prior,
        logit_shift=float(_logit(prior) - _logit(source)),
        iterations=steps,
        converged=converged,
    )


def prior_shift_point(point: dict[str, Any], shift: PriorShift, site: str) -> dict[str, Any]:
    """The operating point whose decisions are the adjusted posteriors' at the same threshold.

    The stored threshold ``t`` (fitted on the training site) is kept as the threshold on the
    *adjusted* posterior: a threshold on a calibrated posterior encodes the costs of the two
    errors, which do not change with the prevalence. Since the adjustment adds
    ``logit_shift`` to the calibrated logit, "adjusted p > t" is "p > sigmoid(logit(t) -
    logit_shift)" on the probabilities the predictors report, so the point keeps the
    temperature and stores that threshold: every predictor and export applies it with no new
    field. The probabilities they report stay on the training site's scale; the decisions
    move (a lower site prevalence raises the threshold, a higher one lowers it).
    """
    t = float(point["decision_threshold"])
    moved = 1.0 / (1.0 + math.exp(-(float(_logit(t)) - shift.logit_shift)))
    moved = min(max(moved, PROB_EPS), 1 - PROB_EPS)
    calibration = dict(point.get("calibration") or {})
    calibration.update(
        {
            "source_prior": shift.source_prior,
            "site_prior": shift.site_prior,
            "logit_shift": shift.logit_shift,
            "threshold_on_adjusted_probability": t,
            "em_iterations": shift.iterations,
            "em_converged": shift.converged,
        }
    )
    return {
        "temperature": float(point["temperature"]),
        "decision_threshold": moved,
        "threshold_rule": f"{point.get('threshold_rule') or 'fixed'} + EM prior shift on site {site}",
        "calibration": calibration,
    }


def source_prior_of(meta: dict[str, Any]) -> float | None:
    """The prevalence a checkpoint's probabilities refer to (``source_prior``: the training
    part's malignant fraction re-weighted by its class loss, 0.5 under the class-balanced
    default); ``None`` when the checkpoint predates the record."""
    prior = meta.get("source_prior")
    return float(prior) if prior is not None else None


# ----------------------------------------------------------------------------- the model
class SiteModel:
    """A checkpoint or an ONNX export as site adaptation runs it.

    ``modes``: the test-time augmentations it holds an operating point for, its own first (a
    checkpoint trained with ``model.tta: hflip`` also carries the single pass's, ``"none"``);
    an ONNX export holds the one in its graph. ``logits`` gives each mode's class logits from
    one forward pass.

    Build with :meth:`load`.
    """

    def __init__(
        self,
        path: Path,
        info: ModelInfo,
        modes: tuple[str, ...],
        net: nn.Module | None = None,
        meta: dict[str, Any] | None = None,
        predictor: Any = None,
        device: torch.device | None = None,
    ) -> None:
        self.path, self.info, self.modes = path, info, modes
        self.net, self.meta, self.predictor = net, meta, predictor
        self.device = device or torch.device("cpu")

    @property
    def kind(self) -> str:
        """``"checkpoint"`` or ``"onnx"``."""
        return "checkpoint" if self.net is not None else "onnx"

    @classmethod
    def load(
        cls,
        ckpt: str | Path | None = None,
        model: str | Path | None = None,
        device: str | torch.device = "cpu",
    ) -> SiteModel:
        """From a training checkpoint (``ckpt``) or an ONNX export (``model``), one of them."""
        if (ckpt is None) == (model is None):
            raise ValueError("give exactly one of ckpt (a training checkpoint) or model (ONNX)")
        if ckpt is not None:
            from bus_mtl.inference.torch_predictor import info_from_checkpoint_meta
            from bus_mtl.models.rebuild import checkpoint_tta, load_net

            path = Path(ckpt)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: checkpoint not found")
            net, meta = load_net(path)
            info = info_from_checkpoint_meta(meta, net)
            check_binary_classifier(info, str(path))
            own = checkpoint_tta(meta, path)
            others = [m for m in (meta.get("operating_points") or {}) if m != own]
            device = torch.device(device)
            return cls(path, info, (own, *others), net=net.to(device), meta=meta, device=device)
        from bus_mtl.inference.predictor import Predictor

        path = Path(model)  # type: ignore[arg-type]
        if path.suffix.lower() != ".onnx":
            raise ValueError(
                f"{path}: site adaptation writes ONNX exports (.onnx); for a TorchScript file "
                "calibrate its checkpoint (--ckpt) and export that"
            )
        predictor = Predictor(path)
        check_binary_classifier(predictor.info, str(path))
        return cls(path, predictor.info, (predictor.info.tta,), predictor=predictor)

    def operating_point(self, mode: str | None = None) -> dict[str, Any]:
        """``{temperature, decision_threshold, threshold_rule, calibration}`` stored for
        ``mode`` (default: the model's own)."""
        mode = mode or self.modes[0]
        if self.meta is not None:
            from bus_mtl.models.rebuild import OPERATING_POINT_KEYS, operating_point

            meta = operating_point(self.meta, mode, self.path)
            return {k: meta.get(k) for k in OPERATING_POINT_KEYS}
        if mode != self.info.tta:
            raise ValueError(f"{self.path}: the export runs tta={self.info.tta!r}, not {mode!r}")
        return {
            "temperature": self.info.temperature,
            "decision_threshold": self.info.class_threshold,
            "threshold_rule": self.info.threshold_rule,
            "calibration": {},
        }

    def source_prior(self) -> float | None:
        """The prevalence the model's probabilities refer to, as its checkpoint or export
        recorded it (:func:`source_prior_of`); ``None`` when older than that record."""
        if self.meta is not None:
            return source_prior_of(self.meta)
        return self.info.source_prior

    def _eval_net(self) -> nn.Module:
        from bus_mtl.models.tta import with_tta

        return with_tta(self.net, self.modes[0]).eval()

    @torch.no_grad()
    def logits(
        self, images: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> dict[str, np.ndarray]:
        """``{mode: (N,) float64 malignancy logits}`` of H×W uint8 grey ``images``, for every
        mode of :attr:`modes`, before the temperature."""
        out: dict[str, list[np.ndarray]] = {m: [] for m in self.modes}
        for batch in _batches(images, self.info, batch_size):
            if self.net is None:
                _, logits = self.predictor._run(batch)
                out[self.modes[0]].append(np.asarray(logits, dtype=np.float64)[:, 0])
                continue
            x = torch.from_numpy(batch).to(self.device)
            b = x.shape[0]
            if "hflip" in self.modes:
                # One 2B batch gives both modes: the single pass is the first view, the flip
                # average is FlipTTA's mean of the two (bus_mtl.models.tta.hflip_average).
                views = self.net(torch.cat([x, x.flip(-1)], dim=0)).logits.double().cpu()
                per_mode = {"none": views[:b], "hflip": (views[:b] + views[b:]) / 2}
            else:
                per_mode = {"none": self.net(x).logits.double().cpu()}
            for mode in self.modes:
                out[mode].append(per_mode[mode][:, 0].numpy())
        return {m: np.concatenate(v) for m, v in out.items()}

    def adapt_batchnorm(
        self, images: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> int:
        """Re-estimate the net's BatchNorm statistics on ``images`` as it is evaluated (its
        own test-time augmentation: a FlipTTA's layers see both views), in place; returns
        the number of layers (:func:`reestimate_batchnorm`)."""
        if self.net is None:
            raise ValueError(
                f"{self.path}: BatchNorm re-estimation changes the network's statistics, which "
                "an ONNX export has folded into its graph; adapt the checkpoint (--ckpt) and "
                "export the result with bus-mtl export"
            )
        batches = [
            torch.from_numpy(b).to(self.device)
            for b in _even_batches(images, self.info, batch_size)
        ]
        return reestimate_batchnorm(self._eval_net(), batches)

    def write(
        self,
        out: str | Path,
        points: dict[str, dict[str, Any]],
        record: dict[str, Any],
        batchnorm: bool = False,
    ) -> Path:
        """Write the adapted model to ``out`` (a new file), ``points`` as its operating
        points and ``record`` under :data:`SITE_RECORD_KEY`; with ``batchnorm`` the net's
        current BatchNorm statistics replace the stored ones (checkpoints only)."""
        if self.net is None:
            return write_site_onnx(self.path, out, points[self.modes[0]], record)
        state = batchnorm_state(self.net) if batchnorm else None
        return write_site_checkpoint(self.path, out, points, record, state)


def _previous_points(meta: dict[str, Any], own: str) -> dict[str, dict[str, Any]]:
    keep = ("temperature", "decision_threshold", "threshold_rule")
    points = {own: {k: meta.get(k) for k in keep}}
    for mode, point in (meta.get("operating_points") or {}).items():
        if mode != own:
            points[mode] = {k: point.get(k) for k in keep}
    return points


def check_new_file(src: str | Path, out: str | Path) -> None:
    """``ValueError`` when ``out`` is the model file ``src`` itself."""
    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve():
        raise ValueError(
            f"--out {out} is the model being calibrated: write the site's model to a new file "
            "(the training site's operating point stays where it is)"
        )


def write_site_checkpoint(
    src: str | Path,
    out: str | Path,
    points: dict[str, dict[str, Any]],
    record: dict[str, Any],
    batchnorm: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Copy the checkpoint ``src`` to ``out`` with the site's operating points.

    Where a checkpoint's operating point is read, it is replaced: ``checkpoint["bus_mtl"]``'s
    top-level ``temperature``, ``decision_threshold``, ``threshold_rule`` and
    ``calibration`` (the checkpoint's own mode: ``bus-mtl predict``, ``export``, the
    predictors), ``["operating_points"][mode]`` (every mode in ``points``: ``--tta none``),
    and the state_dict buffers ``temperature`` / ``decision_threshold`` (``bus-mtl test``,
    ``MultiTaskModule.load_from_checkpoint``). ``batchnorm``: net state_dict entries (keys as
    in the bare net's ``state_dict``) that replace the stored ``net.*`` ones.
    ``["site_calibration"]`` holds ``record`` plus the points that were replaced
    (``previous``).
    """
    from bus_mtl.models.rebuild import OPERATING_POINT_KEYS, checkpoint_tta, load_checkpoint

    src, out = Path(src), Path(out)
    check_new_file(src, out)
    checkpoint = load_checkpoint(src)
    meta = checkpoint["bus_mtl"]
    own = checkpoint_tta(meta, src)
    if own not in points:
        raise ValueError(
            f"no operating point for the checkpoint's own mode {own!r} in {sorted(points)}"
        )
    previous = _previous_points(meta, own)
    operating = {mode: dict(p) for mode, p in (meta.get("operating_points") or {}).items()}
    for mode, point in points.items():
        fitted = {k: point[k] for k in OPERATING_POINT_KEYS if k in point}
        operating[mode] = {**operating.get(mode, {}), **fitted}
    meta.update(operating[own])
    meta["operating_points"] = operating
    state = checkpoint["state_dict"]
    for key in ("temperature", "decision_threshold"):
        state[key] = torch.tensor(float(operating[own][key]), dtype=torch.float32)
    if batchnorm:
        targets = {
            k[len("net.") :].replace("_orig_mod.", ""): k for k in state if k.startswith("net.")
        }
        unknown = sorted(set(batchnorm) - set(targets))
        if unknown:
            raise ValueError(f"{src}: no net weights named {unknown[:5]} to replace")
        for name, value in batchnorm.items():
            state[targets[name]] = value.detach().cpu().to(state[targets[name]].dtype)
    meta[SITE_RECORD_KEY] = {**record, "previous": previous}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    torch.save(checkpoint, partial)
    partial.replace(out)
    return out


def write_site_onnx(
    src: str | Path, out: str | Path, point: dict[str, Any], record: dict[str, Any]
) -> Path:
    """Copy the ONNX export ``src`` to ``out`` with the site's operating point in its
    metadata (``metadata_props["bus_mtl"]`` and the per-field entries ``export_onnx`` writes,
    and the sidecar ``<out>.json``), ``record`` (plus the replaced point, ``previous``) under
    ``metadata_props["site_calibration"]`` and in the sidecar. Other properties (an int8
    model's ``precision``) are kept."""
    import onnx

    src, out = Path(src), Path(out)
    check_new_file(src, out)
    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY in props:
        info = ModelInfo.from_json(props[METADATA_KEY], source=str(src))
    elif sidecar_path(src).is_file():
        info = ModelInfo.from_json(sidecar_path(src).read_text(), source=str(sidecar_path(src)))
    else:
        raise ValueError(f"{src}: no '{METADATA_KEY}' metadata and no sidecar JSON")
    previous = {
        info.tta: {
            "temperature": info.temperature,
            "decision_threshold": info.class_threshold,
            "threshold_rule": info.threshold_rule,
        }
    }
    new = dataclasses.replace(
        info,
        temperature=float(point["temperature"]),
        decision_threshold=float(point["decision_threshold"]),
        threshold_rule=str(point["threshold_rule"]),
    )
    full_record = {**record, "previous": previous}
    props.update({k: json.dumps(v) for k, v in new.to_dict().items()})
    props[METADATA_KEY] = new.to_json()
    props[SITE_RECORD_KEY] = json.dumps(full_record, sort_keys=True)
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    sidecar = {**new.to_dict(), SITE_RECORD_KEY: full_record}
    sidecar_path(out).write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return out
