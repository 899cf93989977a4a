"""``bus-mtl cv`` reads a source preset given as ``--config FILE`` or ``--data.sources FILE``
(the README's 5-fold command), not only an inline ``data.sources`` mapping."""

from __future__ import annotations

import pytest

from bus_mtl import configs
from bus_mtl.experiments.cv import build_datamodule

BASE = str(configs.preset("base.yaml"))
RECIPE = str(configs.preset("recipes/cpu.yaml"))
SYNTHETIC = str(configs.preset("data/synthetic.yaml"))


def test_source_preset_as_a_config_file():
    dm = build_datamodule([BASE, SYNTHETIC, RECIPE])
    assert type(dm.source).__name__ == "SyntheticSource"
    assert dm.resize == "letterbox"  # the recipe, after the preset, still applies


@pytest.mark.parametrize(
    "extra",
    [
        ["--data.sources", SYNTHETIC, "--data.image_size=96"],
        [f"--data.sources={SYNTHETIC}", "--data.image_size", "96", "--trainer.max_epochs=3"],
    ],
)
def test_source_preset_as_a_data_sources_argument(extra):
    dm = build_datamodule([BASE, RECIPE], extra)
    assert type(dm.source).__name__ == "SyntheticSource"
    assert dm.image_size == 96
