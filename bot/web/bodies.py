"""The request bodies of the JSON API, each defined once as a pydantic model: the handlers parse
with these models and the OpenAPI document describes them, so what is documented is what is
accepted. Unknown fields are refused; a null optional field means absent. A refusal is an
``InvalidRequest`` naming the field at fault, so errors keep the API's shape and wording."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, ValidationError
from pydantic_core import ErrorDetails

from bot.batches import MAX_PROMPTS
from bot.errors import InvalidRequest
from bot.validation import METADATA_LIMIT

Body = TypeVar("Body", bound="StrictBody")
_SURROGATE = re.compile("[\ud800-\udfff]")


def metadata_bytes(metadata: dict[str, Any]) -> int:
    """The size of metadata serialized as compact UTF-8 JSON (how the limit is counted)."""
    return len(
        json.dumps(metadata, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    )


def _fits(metadata: dict[str, JsonValue]) -> dict[str, JsonValue]:
    try:
        size = metadata_bytes(metadata)
    except (ValueError, UnicodeEncodeError):  # NaN/Infinity, or a lone surrogate
        raise ValueError("metadata must be plain JSON text and numbers") from None
    if size > METADATA_LIMIT:
        raise ValueError(f"metadata is {size} bytes as JSON; at most {METADATA_LIMIT} are kept")
    return metadata


Metadata = Annotated[
    dict[str, JsonValue],
    AfterValidator(_fits),
    Field(description=f"Any JSON object of at most {METADATA_LIMIT} bytes as compact UTF-8 JSON; "
                      "stored with the image and echoed exactly"),
]  # fmt: skip


class StrictBody(BaseModel):
    """Strict JSON types (no coercion: ``true`` is not 1, ``"5"`` is not 5), nothing unknown."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)


class GenerateBody(StrictBody):
    prompt: str = Field(max_length=4096)
    model: str | None = Field(None, max_length=200)
    template_id: str | None = Field(None, max_length=100)
    metadata: Metadata | None = None
    width: int | None = Field(None, ge=1, le=100_000)
    height: int | None = Field(None, ge=1, le=100_000)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    steps: int | None = Field(None, ge=1, le=1000)
    negative_prompt: str | None = Field(None, max_length=4096)
    image_id: str | None = Field(None, max_length=100)
    enhance: bool | None = None
    fresh: bool | None = None


class TemplateBody(StrictBody):
    name: str = Field(max_length=200)
    prompt: str = Field(max_length=4096)
    model: str | None = Field(None, max_length=200)
    negative_prompt: str | None = Field(None, max_length=4096)
    aspect_ratio: str | None = Field(None, max_length=10)
    steps: int | None = Field(None, ge=1, le=1000)


class UploadUrlBody(StrictBody):
    url: str = Field(max_length=2048)


class BatchBody(StrictBody):
    prompts: list[Annotated[str, Field(min_length=1, max_length=2048)]] = Field(
        min_length=1, max_length=MAX_PROMPTS
    )
    model: str | None = Field(None, max_length=200)
    webhook_url: str | None = Field(None, max_length=2048)


def parse_body(model: type[Body], data: dict[str, Any]) -> Body:
    """``data`` checked against ``model``; the first fault (unknown fields first) as a 400."""
    for name in data:
        if name not in model.model_fields:  # checked here: the name may not even be valid text
            raise InvalidRequest(name, f"Unknown field {name!r}.")
    present = {name: _text(value) for name, value in data.items() if value is not None}
    try:
        return model.model_validate(present)
    except ValidationError as exc:
        raise _refusal(exc.errors()[0]) from None


def _text(value: Any) -> Any:
    """Lone surrogates (valid JSON escapes, not text) dropped from strings and string lists, as
    the prompt cleaning would; metadata is kept exactly, so there they are refused instead."""
    if isinstance(value, str):
        return _SURROGATE.sub("", value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [_SURROGATE.sub("", v) for v in value]
    return value


def _refusal(error: ErrorDetails) -> InvalidRequest:
    name = str(error["loc"][0]) if error["loc"] else "body"
    kind = error["type"]
    if kind == "missing":
        return InvalidRequest(name, f"The field {name!r} is required.")
    message = error["msg"].removeprefix("Value error, ")
    return InvalidRequest(name, f"{name!r}: {message}.".replace("..", "."))
