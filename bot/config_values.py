"""The kinds of value a setting can hold, each turning a variable's text into that value.

Every failure is a ConfigError naming the variable and what is wrong, never the value.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.errors import ConfigError
from bot.money import usd_to_micro

TRUE_SPELLINGS = ("true", "1", "yes", "on")
FALSE_SPELLINGS = ("false", "0", "no", "off")
MAX_SHARDS = 65_536  # far beyond any bot (Discord wants a shard per 1,000-2,500 servers)
FLAG_SPELLINGS = ", ".join(f"{t}/{f}" for t, f in zip(TRUE_SPELLINGS, FALSE_SPELLINGS, strict=True))


class Kind:
    """How one variable's text becomes a value; ``parse`` raises ConfigError naming it."""

    unset: Any = None  # the value when the variable is not set and declares no default

    def parse(self, name: str, raw: str) -> Any:
        return raw


@dataclass(frozen=True)
class Text(Kind):
    min_length: int = 0  # for secrets that must be long enough to be secret
    off_allowed: bool = False  # ``off`` (any case) means None

    def parse(self, name: str, raw: str) -> str | None:
        if self.off_allowed and raw.lower() == "off":
            return None
        if len(raw) < self.min_length:
            raise ConfigError(name, f"must be at least {self.min_length} characters (or unset)")
        return raw


class FilePath(Kind):
    def parse(self, name: str, raw: str) -> Path:
        return Path(raw)


@dataclass(frozen=True)
class Integer(Kind):
    minimum: int = 0
    maximum: int | None = None
    scale: int = 1  # the unit the code keeps: 1000 for milli-Neurons, MEGABYTE for bytes

    def parse(self, name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(name, "must be a whole number") from None
        if value < self.minimum or (self.maximum is not None and value > self.maximum):
            upper = f" and at most {self.maximum}" if self.maximum is not None else ""
            raise ConfigError(name, f"must be at least {self.minimum}{upper}")
        return value * self.scale


@dataclass(frozen=True)
class Usd(Kind):
    """US dollars as integer micro-dollars; ``off_allowed`` lets ``off`` mean None."""

    off_allowed: bool = False

    def parse(self, name: str, raw: str) -> int | None:
        if self.off_allowed and raw.lower() == "off":
            return None
        try:
            return usd_to_micro(raw)
        except ValueError:
            raise ConfigError(
                name, "must be an amount in US dollars such as 0.05, at most 6 decimal places"
            ) from None


class Flag(Kind):
    def parse(self, name: str, raw: str) -> bool:
        value = raw.lower()
        if value not in TRUE_SPELLINGS + FALSE_SPELLINGS:
            raise ConfigError(name, f"must be one of {FLAG_SPELLINGS} (any case)")
        return value in TRUE_SPELLINGS


@dataclass(frozen=True)
class Choice(Kind):
    allowed: tuple[str, ...]
    upper: bool = False  # the value the code keeps (LOG_LEVEL is kept as INFO, DEBUG, …)

    def parse(self, name: str, raw: str) -> str:
        value = raw.lower()
        if value not in self.allowed:
            raise ConfigError(name, f"must be one of {', '.join(self.allowed)}")
        return value.upper() if self.upper else value


class Snowflake(Kind):
    def parse(self, name: str, raw: str) -> int:
        if not raw.isdigit():
            raise ConfigError(name, "must be a Discord id (digits only)")
        return int(raw)


class Snowflakes(Kind):
    unset = frozenset[int]()

    def parse(self, name: str, raw: str) -> frozenset[int]:
        parts = [p.strip() for p in raw.split(",") if p.strip()]
        if not all(p.isdigit() for p in parts):
            raise ConfigError(name, "must be Discord ids (digits) separated by commas")
        return frozenset(int(p) for p in parts)


class ShardIds(Kind):
    """Shard numbers as ``0,1``, ``0-3`` or both (``0-3,8``): sorted, each once."""

    def parse(self, name: str, raw: str) -> tuple[int, ...]:
        found: list[int] = []
        for part in (p.strip() for p in raw.split(",")):
            low, dash, high = part.partition("-")
            if not low.strip().isdigit() or (dash and not high.strip().isdigit()):
                raise ConfigError(name, "must be shard numbers such as 0,1 or 0-3")
            first, last = int(low), int(high) if dash else int(low)
            if last >= MAX_SHARDS:
                raise ConfigError(name, f"must be shard numbers below {MAX_SHARDS}")
            if last < first:
                raise ConfigError(name, "has a range that goes down (write 0-3, not 3-0)")
            found += range(first, last + 1)
        if len(set(found)) != len(found):
            raise ConfigError(name, "lists a shard more than once")
        return tuple(sorted(found))


class Addresses(Kind):
    unset = frozenset[str]()

    def parse(self, name: str, raw: str) -> frozenset[str]:
        try:
            return frozenset(
                str(ipaddress.ip_address(p.strip())) for p in raw.split(",") if p.strip()
            )
        except ValueError:
            raise ConfigError(name, "must be IP addresses separated by commas") from None


class Url(Kind):
    def parse(self, name: str, raw: str) -> str:
        if not raw.startswith(("http://", "https://")):
            raise ConfigError(name, "must start with http:// or https://")
        return raw.rstrip("/")


class PostgresUrl(Kind):
    """``postgresql://user:password@host:port/database``; the error never repeats it."""

    def parse(self, name: str, raw: str) -> str:
        if not raw.startswith(("postgresql://", "postgres://")):
            raise ConfigError(name, "must be a URL starting with postgresql://")
        return raw
