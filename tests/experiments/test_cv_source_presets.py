"""``bus-mtl cv`` reads a source preset given with ``--data.sources FILE`` (the README's 5-fold
command) or named in a config's ``data.sources`` (relative to that config), not only an
inline ``data.sources`` mapping; ``build_datamodule`` itself, the typed API under the command
line, also takes a preset among its config paths (``compare`` appends its variants so)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bus_mtl import configs
from bus_mtl.experiments.cv import build_datamodule

BASE = str(configs.preset("base.yaml"))
RECIPE = str(configs.preset("recipes/cpu.yaml"))
SYNTHETIC = str(configs.preset("data/synthetic.yaml"))


def test_build_datamodule_takes_a_source_preset_among_its_config_paths():
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


def test_source_presets_named_in_a_config_are_relative_to_it(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    for name in ("a", "b"):
        preset = yaml.safe_load(Path(SYNTHETIC).read_text())
        preset["init_args"].update(n=4, root=str(tmp_path / name), centre=name)
        (tmp_path / "data" / f"{name}.yaml").write_text(yaml.safe_dump(preset))
    run = {
        "seed_everything": 1,
        "trainer": {"max_epochs": 1, "callbacks": "trainer/callbacks.yaml"},
        "model": {"net": "variants/not_read_here.yaml"},
        "data": {"sources": "data/a.yaml", "image_size": 64},
    }
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(run))
    run["data"]["sources"] = ["data/a.yaml", "data/b.yaml"]
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(run))
    monkeypatch.chdir(Path(BASE).parent)  # not the configs' folder
    dm = build_datamodule([str(tmp_path / "one.yaml")])
    assert type(dm.source).__name__ == "SyntheticSource" and dm.image_size == 64
    dm = build_datamodule([BASE, str(tmp_path / "two.yaml")])
    assert [s.centre for s in dm.source.sources] == ["a", "b"]


def test_config_errors_name_the_file(tmp_path):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="list.yaml: a config file must be a YAML mapping"):
        build_datamodule([str(tmp_path / "list.yaml")])
    with pytest.raises(FileNotFoundError, match="config file not found: .*nope.yaml"):
        build_datamodule([str(tmp_path / "nope.yaml")])
