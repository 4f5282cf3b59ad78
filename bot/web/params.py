"""Query parameters, each defined once: how a handler reads it (with the API's own refusals)
and how the OpenAPI document describes it. The route table documents the very objects the
handlers read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from aiohttp import web

from bot.errors import InvalidRequest

EARLIEST, LATEST = date(2000, 1, 1), date(9998, 12, 31)  # day arithmetic never overflows


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    described = {"description": description} if description else {}
    return {"name": name, "in": "query", "required": False, "schema": schema, **described}


@dataclass(frozen=True)
class WholeNumber:
    """ASCII digits only (no '²', no '1e3'), within ``low``..``high``; ``default`` if absent."""

    name: str
    default: int
    low: int
    high: int
    description: str = ""

    def read(self, request: web.Request) -> int:
        raw = request.query.get(self.name)
        if raw is None:
            return self.default
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 6) or not (
            self.low <= int(raw) <= self.high
        ):
            raise InvalidRequest(
                self.name, f"{self.name!r} must be a whole number from {self.low} to {self.high}."
            )
        return int(raw)

    def document(self) -> dict[str, Any]:
        schema = {"type": "integer", "minimum": self.low, "maximum": self.high,
                  "default": self.default}  # fmt: skip
        return _query(self.name, schema, self.description)


@dataclass(frozen=True)
class Day:
    """A UTC day like 2026-01-31 between EARLIEST and LATEST; empty or absent is None."""

    name: str
    description: str = ""

    def read(self, request: web.Request) -> date | None:
        raw = request.query.get(self.name)
        if not raw:
            return None
        try:
            day = date.fromisoformat(raw)
        except ValueError:
            message = f"{self.name!r} must be a date like 2026-01-31."
            raise InvalidRequest(self.name, message) from None
        if not EARLIEST <= day <= LATEST:
            raise InvalidRequest(
                self.name,
                f"{self.name!r} must be a date from {EARLIEST.isoformat()} to "
                f"{LATEST.isoformat()}.",
            )
        return day

    def document(self) -> dict[str, Any]:
        schema = {"type": "string", "anyOf": [{"format": "date"}, {"maxLength": 0}]}
        return _query(self.name, schema, self.description)


@dataclass(frozen=True)
class Choice:
    """One of ``choices``; the first if absent."""

    name: str
    choices: tuple[str, ...]
    description: str = ""

    def read(self, request: web.Request) -> str:
        value = request.query.get(self.name, self.choices[0])
        if value not in self.choices:
            spelled = " or ".join(repr(c) for c in self.choices)
            raise InvalidRequest(self.name, f"{self.name} is {spelled}.")
        return value

    def document(self) -> dict[str, Any]:
        schema = {"type": "string", "enum": list(self.choices), "default": self.choices[0]}
        return _query(self.name, schema, self.description)


@dataclass(frozen=True)
class Text:
    """Any text; empty or absent is None."""

    name: str
    description: str = ""

    def read(self, request: web.Request) -> str | None:
        return request.query.get(self.name) or None

    def document(self) -> dict[str, Any]:
        return _query(self.name, {"type": "string"}, self.description)


@dataclass(frozen=True)
class Flag:
    """Present or not (``?redo``); its value is ignored."""

    name: str
    description: str = ""

    def read(self, request: web.Request) -> bool:
        return self.name in request.query

    def document(self) -> dict[str, Any]:
        return _query(self.name, {"type": "string"}, self.description)
