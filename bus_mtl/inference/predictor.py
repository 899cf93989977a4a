"""Run an exported ONNX model on images with onnxruntime, numpy and OpenCV alone.

Importing this module must not import torch, Lightning, MONAI, smp, albumentations or wandb:
a deployment needs only ``onnxruntime``, ``numpy`` and ``opencv-python-headless``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bus_mtl.data.io import read_image
from bus_mtl.inference.metadata import (
    INPUT_NAME,
    LOGITS_OUTPUT,
    MASK_OUTPUT,
    METADATA_KEY,
    TTA_MODES,
    ModelInfo,
    sidecar_path,
)
from bus_mtl.inference.preprocess import (
    class_probabilities,
    mask_to_original,
    preprocess,
    sigmoid,
    to_gray,
)


@dataclass(frozen=True)
class PredictionResult:
    """The prediction for one image, at the image's original size.

    Attributes:
        mask: H×W uint8 in {0, 1}; ``None`` for classification-only models.
        mask_prob: H×W float32 lesion probability; ``None`` for classification-only models.
        probability: calibrated malignancy probability; ``None`` for segmentation-only models.
        label: predicted class index (0 benign, 1 malignant, 2 normal); ``None`` without a
            classification head.
        class_name: name of ``label``.
        class_probs: calibrated probability of every class name (K = 1: benign, malignant).
        lesion_area: lesion pixels in ``mask``; ``None`` without a segmentation head.
        lesion_found: ``lesion_area > 0``; ``None`` without a segmentation head.
        uncertainty: :func:`flip_uncertainty` of the image, when asked for
            (``predict_gray(..., uncertainty=True)``) and observable; else ``None``.
    """

    mask: np.ndarray | None
    mask_prob: np.ndarray | None
    probability: float | None
    label: int | None
    class_name: str | None
    class_probs: dict[str, float] | None
    lesion_area: int | None
    lesion_found: bool | None
    uncertainty: float | None = None


@dataclass(frozen=True)
class RawOutputs:
    """A model's outputs for one image at the network input size, before temperature and
    thresholds.

    Attributes:
        mask_logits: S×S float32 lesion logits of the model's prediction: the mean of the two
            views' logits for a model with its own flip TTA (``info.tta == "hflip"``, as
            :func:`bus_mtl.models.tta.hflip_average` computes it), else the single pass;
            ``None`` without a segmentation head.
        logits: (K,) class logits of the model's prediction (same rule); ``None`` without a
            classification head.
        view_mask_logits: 2×S×S lesion logits of the image and of its mirror (the mirror's
            flipped back), or ``None``.
        view_logits: 2×K class logits of the image and of its mirror, or ``None``: not asked
            for, or not observable (an ONNX graph that averages the two views inside).
    """

    mask_logits: np.ndarray | None
    logits: np.ndarray | None
    view_mask_logits: np.ndarray | None = None
    view_logits: np.ndarray | None = None


def flip_uncertainty(view_logits: np.ndarray, temperature: float) -> float:
    """``|P(malignant | image) - P(malignant | mirror)|`` in [0, 1] from the 2×K class logits
    of the two views (each calibrated with ``temperature``; K = 3: the malignant softmax
    column).

    A lesion has no left-right semantics, so the mirror is as valid a view as the image: a
    model that changes its mind between them is unsure of the case (test-time augmentation
    disagreement). Unlike the distance of ``p`` to the decision threshold it says something
    the probability itself does not.
    """
    p = class_probabilities(np.asarray(view_logits), temperature)[:, 1]
    return float(abs(p[0] - p[1]))


class BasePredictor:
    """Pre/postprocessing shared by the ONNX :class:`Predictor` and the PyTorch predictor.

    Subclasses implement :meth:`_run` (``N×C×S×S`` float32 -> mask logits ``N×1×S×S`` or
    ``None``, class logits ``N×K`` or ``None``).
    """

    info: ModelInfo

    def __init__(
        self,
        info: ModelInfo,
        threshold: float | None = None,
        mirror_average: bool = False,
        decision_threshold: float | None = None,
    ):
        for name, value in (("threshold", threshold), ("decision_threshold", decision_threshold)):
            if value is not None and not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value!r}")
        self.info = info
        self.threshold = info.threshold if threshold is None else float(threshold)
        # The malignancy decision: an explicit decision_threshold, else an explicit threshold
        # (which then sets both, as before), else the operating point fitted at training.
        if decision_threshold is not None:
            self.decision_threshold = float(decision_threshold)
        elif threshold is not None:
            self.decision_threshold = float(threshold)
        else:
            self.decision_threshold = info.class_threshold
        self.mirror_average = bool(mirror_average)

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        raise NotImplementedError

    def _run_views(self, batch: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None] | None:
        """The network without its own test-time augmentation on a 2×C×S×S batch (an image
        and its mirror), or ``None`` when only the model's averaged output is observable (an
        exported graph with the flip average inside). Subclasses that hold the bare network
        override this."""
        return self._run(batch) if self.info.tta == "none" else None

    def raw_outputs(self, gray: np.ndarray, views: bool = True) -> RawOutputs:
        """The model's outputs for an H×W uint8 grey image (see :class:`RawOutputs`).

        With ``views`` the image and its mirror run as one batch of two, so the two views'
        logits come back as well (where observable); the prediction is the same as without.
        """
        info = self.info
        got = self._run_views(preprocess(gray, info, hflip=True)) if views else None
        if got is None:
            mask, logits = self._run(preprocess(gray, info))
            return RawOutputs(
                None if mask is None else mask[0, 0],
                None if logits is None else logits[0],
            )
        mask, logits = got
        view_mask = None if mask is None else np.stack([mask[0, 0], mask[1, 0][:, ::-1]])
        if info.tta == "hflip":
            # The model's own prediction, as FlipTTA computes it: the mean of the logits.
            pred_mask = None if view_mask is None else (view_mask[0] + view_mask[1]) / 2
            pred_logits = None if logits is None else (logits[0] + logits[1]) / 2
        else:
            pred_mask = None if view_mask is None else view_mask[0]
            pred_logits = None if logits is None else logits[0]
        return RawOutputs(pred_mask, pred_logits, view_mask, logits)

    def predict(
        self,
        image: str | Path | np.ndarray,
        mirror_average: bool | None = None,
        uncertainty: bool = False,
    ) -> PredictionResult:
        """Predict one image: a file path, or an array (H×W grey or H×W×3 RGB).

        With ``mirror_average`` (default: the predictor's setting) the image and its
        horizontal mirror are both run and their *probabilities* averaged (the mirrored mask
        flipped back), at the single pass's temperature and thresholds. That is not the
        model's own test-time augmentation (``info.tta == "hflip"``: trained with
        ``model.tta: hflip``, whose graph averages the *logits*, with an operating point
        fitted for it); on such a model it adds nothing (its outputs are mirror-symmetric)
        and is skipped. ``uncertainty``: fill ``PredictionResult.uncertainty`` (see
        :meth:`predict_gray`).

        Raises:
            ImageReadError: a path that cannot be read (the message names it;
                :class:`bus_mtl.data.errors.ImageReadError`, a ``ValueError``).
        """
        gray = read_image(image) if isinstance(image, (str, Path)) else to_gray(image)
        average = self.mirror_average if mirror_average is None else mirror_average
        return self.predict_gray(gray, average, uncertainty)

    def predict_gray(
        self, gray: np.ndarray, mirror_average: bool = False, uncertainty: bool = False
    ) -> PredictionResult:
        """Predict an H×W uint8 grey image (the decoded file).

        ``uncertainty``: also run the mirror when the model does not (one batch of two) and
        fill ``PredictionResult.uncertainty`` (:func:`flip_uncertainty`); it stays ``None``
        without a classification head or where the two views are not observable.
        """
        info = self.info
        # The model's own flip TTA is mirror-equivariant: a second mirror would be run for
        # the same numbers.
        average = mirror_average and info.tta == "none"
        raw = self.raw_outputs(gray, views=average or uncertainty)
        mask = mask_prob = area = found = None
        if info.has_seg:
            if raw.mask_logits is None:
                raise RuntimeError("the model metadata says it segments but it gave no mask")
            # The predictor's mirror average is of the two views' probabilities.
            probs = (
                sigmoid(raw.view_mask_logits).mean(axis=0) if average else sigmoid(raw.mask_logits)
            )
            mask_prob = mask_to_original(probs, gray.shape, info.resize)
            mask = (mask_prob > self.threshold).astype(np.uint8)
            area = int(mask.sum())
            found = area > 0
        probability = label = class_name = class_probs = spread = None
        if info.has_cls:
            if raw.logits is None:
                raise RuntimeError("the model metadata says it classifies but it gave no logits")
            views = raw.view_logits if average else raw.logits[None]
            p = class_probabilities(views, info.temperature).mean(axis=0)
            probability = float(p[1])
            # K = 1: the operating point fitted on validation, as test metrics use it.
            label = int(p.argmax()) if len(p) > 2 else int(probability > self.decision_threshold)
            class_name = info.class_names[label]
            class_probs = {name: float(v) for name, v in zip(info.class_names, p)}
            if uncertainty and raw.view_logits is not None:
                spread = flip_uncertainty(raw.view_logits, info.temperature)
        return PredictionResult(
            mask=mask,
            mask_prob=mask_prob,
            probability=probability,
            label=label,
            class_name=class_name,
            class_probs=class_probs,
            lesion_area=area,
            lesion_found=found,
            uncertainty=spread,
        )


def session_options(num_threads: int | None = None, optimized: bool = True, spinning: bool = True):
    """onnxruntime ``SessionOptions`` for serving one image at a time on a CPU.

    ``optimized`` (the default): every graph optimisation (``ORT_ENABLE_ALL``: constant
    folding, Conv+BN/activation fusion, the NCHWc layout on x86), sequential execution, one
    inter-op thread and denormals flushed to zero (trained weights make denormal activations,
    which are slow on x86). ``optimized=False``: onnxruntime's own defaults. ``spinning=False``
    stops idle intra-op threads from busy-waiting: slower on an idle machine, kinder to a
    shared one.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if num_threads is not None:
        options.intra_op_num_threads = int(num_threads)
        options.inter_op_num_threads = 1
    if optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = True
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def read_onnx_info(session, model_path: str | Path) -> ModelInfo:
    """The :class:`ModelInfo` stored in an ONNX model, else in its sidecar JSON."""
    meta = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY in meta:
        return ModelInfo.from_json(meta[METADATA_KEY], source=str(model_path))
    sidecar = sidecar_path(model_path)
    if sidecar.is_file():
        return ModelInfo.from_json(sidecar.read_text(), source=str(sidecar))
    raise ValueError(
        f"{model_path}: no '{METADATA_KEY}' metadata and no sidecar {sidecar.name}; export the "
        "model with 'bus-mtl export' so it carries its preprocessing facts"
    )


class Predictor(BasePredictor):
    """Predict lesion masks and malignancy probabilities with an exported ONNX model.

    Args:
        model_path: ONNX file written by ``bus-mtl export --format onnx``.
        threshold: mask-pixel threshold (default: the one stored at export); given alone it
            also sets the malignancy decision threshold.
        decision_threshold: malignancy decision threshold for K = 1 (default: the operating
            point fitted on the validation part at training time, stored at export).
        mirror_average: average the probabilities with the horizontal mirror by default
            (:meth:`predict`).
        tta: the test-time augmentation the caller expects the exported graph to run
            (``"none"`` or ``"hflip"``, as ``model.tta``); ``None``: whichever it runs.
            ``ValueError`` when the export runs another: it is fixed at export
            (``bus-mtl export --tta``).
        num_threads: onnxruntime intra-op threads (``None``: onnxruntime's default).
        providers: onnxruntime execution providers (default: CPU).
        optimized: serving session options (see :func:`session_options`); ``False`` keeps
            onnxruntime's defaults.
        spinning: let idle intra-op threads busy-wait (onnxruntime's default).

    The model may be the fp32 export or its int8 copy (``bus-mtl export --quantize int8``):
    both carry the same metadata.

    Example:
        >>> result = Predictor("model.onnx").predict("scan.png")
        >>> result.probability, result.lesion_area
    """

    def __init__(
        self,
        model_path: str | Path,
        threshold: float | None = None,
        mirror_average: bool = False,
        num_threads: int | None = None,
        decision_threshold: float | None = None,
        providers: list[str] | None = None,
        optimized: bool = True,
        spinning: bool = True,
        tta: str | None = None,
    ) -> None:
        import onnxruntime as ort

        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"{model_path}: ONNX model not found")
        options = session_options(num_threads, optimized=optimized, spinning=spinning)
        try:
            self.session = ort.InferenceSession(
                str(model_path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own exception types
            raise ValueError(f"{model_path}: not a loadable ONNX model: {err}") from err
        self.model_path = model_path
        super().__init__(
            read_onnx_info(self.session, model_path),
            threshold=threshold,
            mirror_average=mirror_average,
            decision_threshold=decision_threshold,
        )
        if tta is not None and tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES} (as model.tta), got {tta!r}")
        if tta is not None and tta != self.info.tta:
            raise ValueError(
                f"{model_path} runs test-time augmentation {self.info.tta!r} in its graph, not "
                f"{tta!r}: export the checkpoint again with bus-mtl export --tta {tta} (or "
                f"predict from the checkpoint, --ckpt), or leave tta at {self.info.tta!r}"
            )
        meta = self.session.get_modelmeta().custom_metadata_map
        #: ``"fp32"``, or ``"int8"`` for a model written by ``bus-mtl export --quantize int8``
        self.precision: str = json.loads(meta.get("precision", '"fp32"'))
        self._outputs = [o.name for o in self.session.get_outputs()]
        missing = set(self.info.output_names) - set(self._outputs)
        if missing:
            raise ValueError(f"{model_path}: outputs {sorted(missing)} missing from the graph")

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        out = dict(zip(self._outputs, self.session.run(None, {INPUT_NAME: batch})))
        return out.get(MASK_OUTPUT), out.get(LOGITS_OUTPUT)

    def __repr__(self) -> str:
        return f"Predictor({str(self.model_path)!r}, info={json.dumps(self.info.to_dict())})"
