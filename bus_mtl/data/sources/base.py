"""Common base of every data source, and ``MultiSource`` for several at once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from bus_mtl.data.errors import Problem, raise_if_errors
from bus_mtl.data.sample import Sample


class Source:
    """A place samples come from. Subclasses implement :meth:`scan`.

    ``scan`` collects every problem it can find (missing mask, unknown label, empty folder,
    ...) instead of stopping at the first, so ``bus-mtl check-data`` can list them all.
    """

    #: True when the source yields normal images as a third class (label 2).
    has_normal_class: bool = False

    def scan(self) -> tuple[list[Sample], list[Problem]]:
        raise NotImplementedError

    def samples(self) -> list[Sample]:
        """The samples; raises :class:`~bus_mtl.data.errors.DataError` listing all errors."""
        samples, problems = self.scan()
        raise_if_errors(problems)
        return samples

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class MultiSource(Source):
    """Several sources at once (e.g. BUSI + UDIAT), each sample keeping its own centre."""

    def __init__(self, sources: Sequence[Source]) -> None:
        if not sources:
            raise ValueError("sources: give at least one source")
        self.sources = list(sources)

    @property
    def has_normal_class(self) -> bool:  # type: ignore[override]
        return any(s.has_normal_class for s in self.sources)

    def scan(self) -> tuple[list[Sample], list[Problem]]:
        samples: list[Sample] = []
        problems: list[Problem] = []
        for src in self.sources:
            s, p = src.scan()
            samples += s
            problems += p
        for sid, n in Counter(s.id for s in samples).items():
            if n > 1:
                problems.append(
                    Problem(sid, f"sample id used {n} times; give sources distinct centres")
                )
        return samples, problems


def as_source(sources: Source | Sequence[Source]) -> Source:
    if isinstance(sources, Source):
        return sources
    sources = list(sources)
    return sources[0] if len(sources) == 1 else MultiSource(sources)
