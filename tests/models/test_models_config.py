"""Variants are buildable from LightningCLI-style ``class_path`` configs."""

from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentParser

import bus_mtl.models as models
from bus_mtl.models import list_variants, variant_class, variant_name


def _parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--net", type=torch.nn.Module)
    return parser


@pytest.mark.parametrize("name", list_variants())
def test_every_variant_class_is_exported_for_class_path(name):
    cls = variant_class(name)
    assert getattr(models, cls.__name__) is cls
    assert cls.__name__ in models.__all__


def test_class_path_config_builds_the_paper_best():
    parser = _parser()
    cfg = parser.parse_object(
        {
            "net": {
                "class_path": "bus_mtl.models.SegResNetEffNetFeatures",
                "init_args": {"in_channels": 3, "init_filters": 8, "feature_source": "bottleneck"},
            }
        }
    )
    net = parser.instantiate_classes(cfg).net
    assert variant_name(net) == "seg_features_effnet"
    # One identity: the class and its class paths (full or short) name the same variant.
    assert variant_name(type(net)) == "seg_features_effnet"
    assert variant_name("bus_mtl.models.SegResNetEffNetFeatures") == "seg_features_effnet"
    assert variant_name(
        "bus_mtl.models.seg_features_effnet.SegResNetEffNetFeatures"
    ) == "seg_features_effnet"
    assert variant_name("torch.nn.Linear") is None and variant_name("no.such.Class") is None
    assert net.in_channels == 3 and net.feature_source == "bottleneck"


def test_class_path_config_rejects_a_bad_literal():
    parser = _parser()
    with pytest.raises(Exception, match="feature_source"):
        parser.parse_object(
            {
                "net": {
                    "class_path": "bus_mtl.models.SegResNetEffNetFeatures",
                    "init_args": {"feature_source": "decoder"},
                }
            }
        )


@pytest.mark.parametrize("name", list_variants())
def test_init_args_rebuild_the_same_architecture(make_net, name):
    net = make_net(name, in_channels=3, num_classes=3)
    assert net.init_args["in_channels"] == 3 and net.init_args["num_classes"] == 3
    rebuilt = type(net)(**net.init_args)
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}
