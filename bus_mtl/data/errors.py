"""Data problems are collected (all of them, each naming its file) and raised together."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data. ``where`` is the file, folder or config key."""

    where: str
    message: str
    severity: str = "error"  # "error" stops training; "warning" is only reported

    def __str__(self) -> str:
        return f"{self.severity}: {self.where}: {self.message}"


class DataError(ValueError):
    """Bad input data or data configuration; the message names every file or key at fault."""

    def __init__(self, problems: Iterable[Problem] | str) -> None:
        if isinstance(problems, str):
            problems = [Problem("data", problems)]
        self.problems: list[Problem] = list(problems)
        errors = [p for p in self.problems if p.severity == "error"] or self.problems
        head = f"{len(errors)} data problem(s):"
        super().__init__("\n".join([head, *(f"  - {p.where}: {p.message}" for p in errors)]))


class ImageReadError(DataError):
    """One image or mask file that cannot be read (missing, empty or not a decodable image).

    The message is one line, ``"<file>: <why>"``; ``problems`` holds the same as one
    :class:`Problem`, so a caller collecting the problems of many files takes it as any
    :class:`DataError`.
    """

    def __init__(self, path: str | Path, message: str) -> None:
        super().__init__([Problem(str(path), message)])
        self.path = Path(path)
        self.args = (f"{path}: {message}",)  # str(err): the one line

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Rebuilt from (path, message) when it crosses a process boundary.
        return type(self), (str(self.path), self.problems[0].message)


def errors_only(problems: Iterable[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def raise_if_errors(problems: Iterable[Problem]) -> None:
    errs = errors_only(problems)
    if errs:
        raise DataError(errs)
