"""Data sources: each yields :class:`~bus_mtl.data.sample.Sample` records."""

from bus_mtl.data.sources.base import MultiSource, Source, as_source
from bus_mtl.data.sources.busi import NORMAL_POLICIES, BUSISource
from bus_mtl.data.sources.manifest import ManifestSource
from bus_mtl.data.sources.synthetic import SyntheticSource, make_phantom
from bus_mtl.data.sources.udiat import UDIATSource

__all__ = [
    "NORMAL_POLICIES",
    "BUSISource",
    "ManifestSource",
    "MultiSource",
    "Source",
    "SyntheticSource",
    "UDIATSource",
    "as_source",
    "default_source",
    "make_phantom",
]


def default_source(
    normal: str = "exclude", synthetic_n: int = 200, image_size: int = 256
) -> tuple[Source, str]:
    """BUSI at ``$BUS_MTL_DATA`` or ``../shared/data/busi`` if present, else the synthetic
    phantom set. Returns ``(source, sentence saying which)``."""
    from bus_mtl.data.paths import find_busi_root

    root = find_busi_root()
    if root is not None:
        return BUSISource(root, normal=normal), f"using BUSI at {root}"
    return (
        SyntheticSource(n=synthetic_n, image_size=image_size),
        "no BUSI found ($BUS_MTL_DATA or ../shared/data/busi): using the synthetic phantom set",
    )
