"""click parameter types for dropr's values: durations and sizes."""

from __future__ import annotations

from typing import Any

import click
from dropr.config import parse_duration, parse_size
from dropr.errors import DroprError


class Duration(click.ParamType):  # type: ignore[type-arg]
    """A duration like 500ms, 30s, 5m, 2h, 7d."""

    name = "DUR"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(str(value))
        except DroprError as exc:
            self.fail(str(exc), param, ctx)


class Size(click.ParamType):  # type: ignore[type-arg]
    """A size like 512, 64KiB, 10MB, 1GiB."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except DroprError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()
SIZE = Size()
