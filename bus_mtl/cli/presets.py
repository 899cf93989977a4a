"""``bus-mtl presets``: the YAML presets shipped in the package, by name and full path."""

from __future__ import annotations

import argparse
import sys

from bus_mtl.configs import PRESETS, available, preset


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="bus-mtl presets",
        description=(
            "List the YAML presets shipped in the package (the project's experiments/ folder). "
            "Name one on any command line as --config preset:NAME, or print its path to copy "
            'it: cp "$(bus-mtl presets recipes/cpu.yaml)" my_recipe.yaml'
        ),
    )
    p.add_argument("name", nargs="?", help="print only this preset's full path")
    args = p.parse_args(argv)
    if args.name:
        try:
            print(preset(args.name))
        except FileNotFoundError as err:
            print(f"bus-mtl presets: {err}", file=sys.stderr)
            return 2
        return 0
    print(f"# presets in {PRESETS} (--config preset:NAME)")
    names = available()
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name:<{width}}  {PRESETS / name}")
    return 0
