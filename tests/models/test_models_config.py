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
    assert (
        variant_name("bus_mtl.models.seg_features_effnet.SegResNetEffNetFeatures")
        == "seg_features_effnet"
    )
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


class Wide(models.SegResNetOnly):
    """A user's subclass (at module level, so a checkpoint can import it)."""

    def __init__(self, width: int = 8, **kwargs) -> None:
        super().__init__(init_filters=width, **kwargs)


def test_the_record_is_the_outermost_call_with_defaults(tmp_path):
    """A subclass's own ``__init__`` is what rebuilds it, not the variant's it calls."""
    from bus_mtl.models import SegResNetOnly
    from bus_mtl.models.rebuild import build_net, net_config

    net = Wide(width=16, in_channels=3)
    assert net.init_args == {"width": 16, "in_channels": 3}  # **kwargs flattened
    rebuilt = build_net(net_config(net))
    assert type(rebuilt) is Wide and rebuilt.init_args == net.init_args
    # A path is recorded as the string it names: checkpoints hold plain values only.
    weights = tmp_path / "w.pt"
    torch.save(SegResNetOnly(init_filters=8).state_dict(), weights)
    net = SegResNetOnly(init_filters=8, pretrained=weights)
    assert net.init_args["pretrained"] == str(weights)
    # ... and build_net does not read it again: the caller loads the trained weights.
    weights.unlink()
    assert build_net(net_config(net)).init_args["pretrained"] is None


def test_a_call_that_cannot_be_replayed_is_named():
    from bus_mtl.models import SegResNetOnly
    from bus_mtl.models.rebuild import net_config

    class Positional(SegResNetOnly):
        def __init__(self, *args) -> None:
            super().__init__(*args)

    with pytest.raises(ValueError, match=r"Positional was built with extra positional"):
        net_config(Positional(1, 1))
    local = Positional()  # replayable, but not importable from a checkpoint
    with pytest.raises(ValueError, match=r"defined inside a function.*module level"):
        net_config(local)
