"""The OpenAPI 3.1 document, generated: components from the pydantic models of the bodies
(``bot/web/bodies.py``, ``bot/public.py``), paths from the route table (``bot/web/routes.py``),
the same table that routes requests, parses their bodies and says which need a key. Nothing in
it is written twice, so it cannot drift from what the server does."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from bot import public
from bot.public import ErrorBody
from bot.web import bodies
from bot.web.bodies import StrictBody
from bot.web.operations import Operation, Reply

REF = "#/components/schemas/{model}"
ERROR_TEXTS = {
    400: "Invalid input",
    401: "Missing or wrong API key",
    403: "Forbidden, over quota, or the content refused",
    404: "Not found",
    409: "Conflict",
    413: "Body too large (every multipart part counts)",
    415: "Wrong content type",
    429: "Rate limited (per key, or per address when anonymous) or busy",
    502: "Image generation or storage failed",
    503: "The database is locked or full: nothing was charged",
}
AUTH_ERRORS = (400, 401, 403, 429, 503)  # what any keyed request may meet


def openapi_path(route_path: str) -> str:
    """aiohttp's ``{name}`` / ``{name:regex}`` (the regex may hold braces) → ``{name}``."""
    out, depth, i = [], 0, 0
    while i < len(route_path):
        char = route_path[i]
        if char == "{" and depth == 0:
            name = re.match(r"\{(\w+)", route_path[i:])
            if name is None:
                raise ValueError(f"not a route path: {route_path!r}")
            out.append("{" + name[1] + "}")
            i += name.end()
            depth = 1
            continue
        if depth:
            depth += {"{": 1, "}": -1}.get(char, 0)
        else:
            out.append(char)
        i += 1
    return "".join(out)


def _json(ref: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref}}}


Refs = dict[Any, dict[str, Any]]  # (model, mode) → its {"$ref": …}


def body_model(op: Operation) -> type[StrictBody] | None:
    """The model the route's body is parsed with (named in the table, from bot/web/bodies.py)."""
    model = getattr(bodies, op.body) if op.body is not None else None
    assert model is None or issubclass(model, StrictBody), op.body
    return model


def reply_model(reply: Reply) -> type[BaseModel] | None:
    """The model of a documented JSON reply (named in the table, from bot/public.py)."""
    model = getattr(public, reply.model) if reply.model is not None else None
    assert model is None or issubclass(model, public.Shape), reply.model
    return model


def _components(operations: Iterable[Operation]) -> tuple[Refs, dict[str, Any]]:
    """Every model's schema under components (requests as validated, replies as serialized)."""
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {
        (ErrorBody, "serialization"): None
    }
    for op in operations:
        if (body := body_model(op)) is not None:
            wanted[(body, "validation")] = None
        for reply in op.replies.values():
            if (model := reply_model(reply)) is not None:
                wanted[(model, "serialization")] = None
    refs, defs = models_json_schema(list(wanted), ref_template=REF)
    return refs, defs.get("$defs", {})


def _operation(op: Operation, refs: Refs) -> dict[str, Any]:
    def reply(r: Reply) -> dict[str, Any]:
        if (model := reply_model(r)) is not None:
            return _json(refs[(model, "serialization")], r.description)
        return {"description": r.description, **({"content": r.media} if r.media else {})}

    error = refs[(ErrorBody, "serialization")]
    statuses = (*AUTH_ERRORS, *op.errors) if not op.public else op.errors
    out: dict[str, Any] = {
        "summary": op.summary,
        "responses": {
            **{str(s): reply(r) for s, r in op.replies.items()},
            **{str(s): _json(error, ERROR_TEXTS[s]) for s in sorted(set(statuses))
               if s not in op.replies},
        },
    }  # fmt: skip
    if op.public:
        out["security"] = []
    names = re.findall(r"\{(\w+)\}", openapi_path(op.path))
    parameters = [
        {"name": n, "in": "path", "required": True,
         "schema": op.path_schemas.get(n, {"type": "string"})}
        for n in names
    ]  # fmt: skip
    if parameters or op.parameters:
        out["parameters"] = [*parameters, *op.parameters]
    if (body := body_model(op)) is not None:
        content = {"application/json": {"schema": refs[(body, "validation")]}}
        if op.multipart:
            file = {"type": "object", "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}}}  # fmt: skip
            content = {"multipart/form-data": {"schema": file}, **content}
        out["requestBody"] = {"required": True, "content": content}
    return out


def openapi_document(operations: Iterable[Operation]) -> dict[str, Any]:
    """The whole document for these routes."""
    operations = list(operations)
    refs, schemas = _components(operations)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(openapi_path(op.path), {})[op.method.lower()] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cf-image-bot API",
            "version": "1",
            "description": "Generate and host images under the same quotas and ledger as the "
            "Discord bot. Authenticate with `Authorization: Bearer <key>` (from /apikey create).",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
