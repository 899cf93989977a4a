"""``write_report``: read a results folder, draw its gallery, write the HTML page."""

from __future__ import annotations

from pathlib import Path

from bus_mtl.experiments.evaluate import N_BOOT
from bus_mtl.report.collect import collect
from bus_mtl.report.gallery import Gallery, build_gallery
from bus_mtl.report.render import render

REPORT_FILE = "report.html"


def write_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    gallery: bool = True,
    per_section: int = 6,
    n_boot: int = N_BOOT,
    seed: int = 0,
    device: str = "cpu",
) -> Path:
    """Write the HTML report of a ``bus-mtl main`` run folder (``runs/main/<Net>/version_N``),
    a ``bus-mtl cv`` / ``compare`` output or a ``bus-mtl evaluate`` output, and return its
    path.

    Args:
        run_dir: the results folder (its kind is told from its files,
            :func:`bus_mtl.report.collect.detect_kind`).
        out: the HTML file; default ``run_dir/report.html``.
        gallery: draw the gallery (needs the checkpoint and the image files; without them
            the report says why and goes on).
        per_section: cases per gallery section.
        n_boot, seed: the bootstrap of intervals the folder does not store.
        device: torch device the gallery's model runs on.

    Raises:
        FileNotFoundError, ValueError: ``run_dir`` is not a results folder (the message
            names what each kind holds).
    """
    run_dir = Path(run_dir)
    report = collect(run_dir, n_boot=n_boot, seed=seed)
    galleries: dict[int, Gallery] | None = None
    if gallery:
        galleries, cache = {}, {}
        for i, result in enumerate(report.sets):
            try:
                galleries[i] = build_gallery(
                    result.frame, result.checkpoints, result.samples, per_section, device, cache
                )
            except Exception as err:  # a model or image that fails: the page says so
                galleries[i] = Gallery(notes=[f"Gallery failed: {type(err).__name__}: {err}"])
    path = Path(out) if out is not None else run_dir / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(report, galleries, n_boot=n_boot, seed=seed), encoding="utf-8")
    return path
