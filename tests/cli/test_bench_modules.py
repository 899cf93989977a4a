"""Every ``bus-mtl bench`` entry imports and answers ``--help``; the studies of a cv folder
(``threshold-rules``, ``tta``) on what needs no trained fold."""

from __future__ import annotations

import numpy as np
import pytest

from bus_mtl.cli.bench import BENCHMARKS
from bus_mtl.cli.main import main


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_imports_and_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", name, "--help"])
    assert exit_.value.code == 0
    assert f"bus-mtl bench {name}" in capsys.readouterr().out


def test_bench_lists_every_benchmark(capsys):
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in BENCHMARKS)
    assert main(["bench", "nope"]) == 2
    assert "valid: data, models" in capsys.readouterr().err


def test_threshold_rules_compare_every_rule_on_validation_halves():
    from bus_mtl.benchmarks.threshold_rules import RULES, compare

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(40, int), np.ones(20, int)]
    p = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.15, len(y)), 0.01, 0.99)
    fold = {"pv": p, "yv": y, "pt": p[::-1].copy(), "yt": y[::-1].copy()}
    out = compare(fold, splits=5, rng=np.random.default_rng(1))
    assert set(out) == set(RULES)
    for row in out.values():
        assert 0.0 <= row["val_half_balanced_acc"] <= 1.0
        assert 0.0 < row["threshold"] < 1.0
    assert out["fixed"]["threshold"] == pytest.approx(0.5)


def test_a_fold_without_a_finished_run_is_named(tmp_path):
    from bus_mtl.benchmarks.tta import fold_run

    (tmp_path / "fold_0").mkdir()
    with pytest.raises(SystemExit, match="fold_0: no .*checkpoints folder"):
        fold_run(tmp_path / "fold_0")
    run = tmp_path / "fold_0" / "SegResNetEffNetFeatures" / "version_1"
    (run / "checkpoints").mkdir(parents=True)
    (tmp_path / "fold_0" / "SegResNetEffNetFeatures" / "version_0" / "checkpoints").mkdir(
        parents=True
    )
    assert fold_run(tmp_path / "fold_0") == run
