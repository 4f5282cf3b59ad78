"""The OpenAPI 3.1 description of the HTTP API, kept true by tests (every route is described,
and schemathesis checks that every response matches it)."""

from __future__ import annotations

from typing import Any

from bot.web.gallery import GALLERY_PATHS

NULLABLE_STR: dict[str, Any] = {"type": ["string", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    texts = {
        400: "Invalid input",
        401: "Missing or wrong API key",
        403: "Forbidden or over quota",
        404: "Not found",
        409: "Conflict",
        413: "Body too large (every multipart part counts)",
        415: "Wrong content type",
        429: "Rate limited (per key, or per address when anonymous) or busy",
        502: "Image generation or storage failed",
        503: "The database is locked or full: nothing was charged",
    }
    return {str(s): _json(_ref("Error"), texts[s]) for s in statuses}


AUTH_ERRORS = (400, 401, 403, 429, 503)
SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "details"],
        "properties": {"error": {"type": "string"}, "details": {"type": "object"}},
    },
    "Image": {
        "type": "object",
        "required": [
            "id",
            "prompt",
            "model",
            "storage_key",
            "url",
            "width",
            "height",
            "created_at",
            "user_id",
            "cost",
            "cached",
            "is_deleted",
            "metadata",
        ],
        "properties": {
            "id": {"type": "string", "pattern": "^img_"},
            "kind": {"enum": ["generated", "upload"]},
            "prompt": NULLABLE_STR,
            "prompt_used": NULLABLE_STR,
            "negative_prompt": NULLABLE_STR,
            "model": NULLABLE_STR,
            "storage_key": {"type": "string"},
            "url": {"type": "string"},
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "steps": {"type": ["integer", "null"]},
            "seed": {"type": ["integer", "null"]},
            "created_at": {"type": "string"},
            "user_id": {"type": "string"},
            "guild_id": NULLABLE_STR,
            "cost": {"type": "number", "description": "USD"},
            "cost_micro_usd": {"type": "integer"},
            "cached": {"type": "boolean"},
            "is_deleted": {"type": "boolean"},
            "source_image_id": NULLABLE_STR,
            "metadata": {"type": "object"},
        },
    },
    "Model": {
        "type": "object",
        "required": ["id", "name", "cost_per_image", "speed_seconds", "capabilities"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "cost_per_image": {"type": "number"},
            "neurons_per_image": {"type": "number"},
            "price_published": {
                "type": "boolean",
                "description": "false: Cloudflare's pricing page lists no price for this model",
            },
            "price_source": {"type": "string", "enum": ["cloudflare", "operator", "default"]},
            "price_note": NULLABLE_STR,
            "default_width": {"type": "integer"},
            "default_height": {"type": "integer"},
            "speed_seconds": {"type": "number"},
            "capabilities": {"type": "array", "items": {"type": "string"}},
            "description": {"type": "string"},
        },
    },
    "Template": {
        "type": "object",
        "required": ["id", "name", "prompt"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "prompt": {"type": "string"},
            "model": NULLABLE_STR,
            "negative_prompt": NULLABLE_STR,
            "aspect_ratio": NULLABLE_STR,
            "steps": {"type": ["integer", "null"]},
            "created_by": {"type": "string"},
            "created_at": {"type": "string"},
        },
    },
    "Batch": {
        "type": "object",
        "required": ["id", "status", "items", "counts"],
        "properties": {
            "id": {"type": "string"},
            "status": {"enum": ["running", "done"]},
            "model": NULLABLE_STR,
            "created_at": {"type": "string"},
            "finished_at": NULLABLE_STR,
            "counts": {"type": "object"},
            "webhook": {"type": ["object", "null"]},
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["position", "prompt", "status"],
                    "properties": {
                        "position": {"type": "integer"},
                        "prompt": {"type": "string"},
                        "status": {"enum": ["queued", "running", "done", "failed"]},
                        "image": {"oneOf": [_ref("Image"), {"type": "null"}]},
                        "error": {"type": ["object", "null"]},
                    },
                },
            },
        },
    },
    "Usage": {
        "type": "object",
        "properties": {"images": {"type": "integer"}, "cost": {"type": "number"}},
    },
}

# Optional body fields may be null, which the API reads as absent.
GENERATE_BODY: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["prompt"],
    "properties": {
        "prompt": {"type": "string", "minLength": 3, "maxLength": 4096},
        "model": {"type": ["string", "null"], "maxLength": 200},
        "template_id": {"type": ["string", "null"], "maxLength": 100},
        "metadata": {
            "type": ["object", "null"],
            "maxProperties": 20,
            "propertyNames": {"maxLength": 64},
            "additionalProperties": {"type": "string", "maxLength": 256},
        },
        "width": {"type": ["integer", "null"], "minimum": 1, "maximum": 100000},
        "height": {"type": ["integer", "null"], "minimum": 1, "maximum": 100000},
        "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": 4294967295},
        "steps": {"type": ["integer", "null"], "minimum": 1, "maximum": 1000},
        "negative_prompt": {"type": ["string", "null"], "maxLength": 4096},
        "image_id": {"type": ["string", "null"], "maxLength": 100},
        "enhance": {"type": ["boolean", "null"]},
        "fresh": {"type": ["boolean", "null"]},
    },
}

TEMPLATE_BODY: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "prompt"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "prompt": {"type": "string", "minLength": 3, "maxLength": 4096},
        "model": {"type": ["string", "null"], "maxLength": 200},
        "negative_prompt": {"type": ["string", "null"], "maxLength": 4096},
        "aspect_ratio": {"type": ["string", "null"], "maxLength": 10},
        "steps": {"type": ["integer", "null"], "minimum": 1, "maximum": 1000},
    },
}


DAY_OR_EMPTY: dict[str, Any] = {"type": "string", "anyOf": [{"format": "date"}, {"maxLength": 0}]}


def _id_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def openapi_document() -> dict[str, Any]:
    image = _json(_ref("Image"))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cf-image-bot API",
            "version": "1",
            "description": "Generate and host images under the same quotas and ledger as the "
            "Discord bot. Authenticate with `Authorization: Bearer <key>` (from /apikey create).",
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/generate": {
                "post": {
                    "summary": "Generate one image",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "description": "Retries with the same key and body get the same "
                            "image; the whole key counts. The same key with a different body "
                            "is a 409 (Idempotency-Key reused).",
                            "schema": {"type": "string"},
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": GENERATE_BODY}},
                    },
                    "responses": {
                        "201": _json(_ref("Image"), "Created"),
                        **_errors(*AUTH_ERRORS, 404, 409, 413, 415, 502),
                    },
                }
            },
            "/api/images": {
                "get": {
                    "summary": "Your images, newest first",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                        },
                        {"name": "before", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["images", "next"],
                                "properties": {
                                    "images": {"type": "array", "items": _ref("Image")},
                                    "next": NULLABLE_STR,
                                },
                            }
                        ),
                        **_errors(*AUTH_ERRORS),
                    },
                }
            },
            "/api/images/{image_id}": {
                "parameters": [_id_param("image_id")],
                "get": {
                    "summary": "One image",
                    "responses": {"200": image, **_errors(*AUTH_ERRORS, 404)},
                },
                "delete": {
                    "summary": "Delete an image (its owner or an admin)",
                    "responses": {"200": image, **_errors(*AUTH_ERRORS, 404, 502)},
                },
            },
            "/api/upload": {
                "post": {
                    "summary": "Host an image: multipart field 'file', or JSON {url}",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["file"],
                                    "properties": {"file": {"type": "string", "format": "binary"}},
                                }
                            },
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["url"],
                                    "properties": {"url": {"type": "string", "maxLength": 2048}},
                                }
                            },
                        },
                    },
                    "responses": {
                        "201": _json(
                            {
                                "type": "object",
                                "required": ["id", "url", "image"],
                                "properties": {
                                    "id": {"type": "string"},
                                    "url": {"type": "string"},
                                    "image": _ref("Image"),
                                },
                            },
                            "Created",
                        ),
                        **_errors(*AUTH_ERRORS, 413, 415, 502),
                    },
                }
            },
            "/api/models": {
                "get": {
                    "summary": "The models and their price per image",
                    "security": [],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["models"],
                                "properties": {"models": {"type": "array", "items": _ref("Model")}},
                            }
                        )
                    },
                }
            },
            "/api/templates": {
                "post": {
                    "summary": "Save a template",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": TEMPLATE_BODY}},
                    },
                    "responses": {
                        "201": _json(_ref("Template"), "Created"),
                        **_errors(*AUTH_ERRORS, 409, 413, 415),
                    },
                },
                "get": {
                    "summary": "Templates of the key's server",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["templates"],
                                "properties": {
                                    "templates": {"type": "array", "items": _ref("Template")}
                                },
                            }
                        ),
                        **_errors(*AUTH_ERRORS),
                    },
                },
            },
            "/api/templates/{template_id}": {
                "parameters": [_id_param("template_id")],
                "get": {
                    "summary": "One template",
                    "responses": {"200": _json(_ref("Template")), **_errors(*AUTH_ERRORS, 404)},
                },
                "delete": {
                    "summary": "Delete a template (its creator or an admin)",
                    "responses": {"200": _json(_ref("Template")), **_errors(*AUTH_ERRORS, 404)},
                },
            },
            "/api/analytics/costs": {
                "get": {
                    "summary": "Costs between two UTC days (yours, or your server's for admins)",
                    "parameters": [
                        {
                            "name": "from",
                            "in": "query",
                            "description": "First day; empty or absent: 29 days before 'to'",
                            "schema": DAY_OR_EMPTY,
                        },
                        {
                            "name": "to",
                            "in": "query",
                            "description": "Last day; empty or absent: today (UTC)",
                            "schema": DAY_OR_EMPTY,
                        },
                        {"name": "scope", "in": "query", "schema": {"enum": ["user", "server"]}},
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": [
                                    "total_cost",
                                    "total_images",
                                    "average_cost",
                                    "by_model",
                                    "by_day",
                                ],
                                "properties": {
                                    "from": {"type": "string"},
                                    "to": {"type": "string"},
                                    "scope": {"type": "string"},
                                    "total_cost": {"type": "number"},
                                    "total_images": {"type": "integer"},
                                    "average_cost": {"type": "number"},
                                    "by_model": {
                                        "type": "object",
                                        "additionalProperties": _ref("Usage"),
                                    },
                                    "by_day": {
                                        "type": "object",
                                        "additionalProperties": _ref("Usage"),
                                    },
                                },
                            }
                        ),
                        **_errors(*AUTH_ERRORS),
                    },
                }
            },
            "/api/batch/generate": {
                "post": {
                    "summary": "Generate many images; poll the batch or get a signed webhook",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["prompts"],
                                    "properties": {
                                        "prompts": {
                                            "type": "array",
                                            "minItems": 1,
                                            "maxItems": 50,
                                            "items": {
                                                "type": "string",
                                                "minLength": 3,
                                                "maxLength": 2048,
                                            },
                                        },
                                        "model": {"type": ["string", "null"], "maxLength": 200},
                                        "webhook_url": {
                                            "type": ["string", "null"],
                                            "maxLength": 2048,
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _json(
                            {
                                "type": "object",
                                "required": ["id", "status", "status_url"],
                                "properties": {
                                    "id": {"type": "string"},
                                    "status": {"type": "string"},
                                    "status_url": {"type": "string"},
                                    "items": {"type": "integer"},
                                },
                            },
                            "Accepted",
                        ),
                        **_errors(*AUTH_ERRORS, 413, 415),
                    },
                }
            },
            "/api/batch/{batch_id}": {
                "parameters": [_id_param("batch_id")],
                "get": {
                    "summary": "A batch and each item's state",
                    "responses": {"200": _json(_ref("Batch")), **_errors(*AUTH_ERRORS, 404)},
                },
            },
            "/api/openapi.json": {
                "get": {
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": _json({"type": "object"})},
                }
            },
            "/{size}/{slug}": {
                "get": {
                    "summary": "A placeholder image: /800x600/sunglasses-sloth, resized exactly",
                    "security": [],
                    "parameters": [
                        {
                            "name": "size",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^[0-9]{1,5}x[0-9]{1,5}$"},
                        },
                        {
                            "name": "slug",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "redo",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": "Generate again (needs an API key)",
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The image",
                            "content": {
                                "image/*": {"schema": {"type": "string", "format": "binary"}}
                            },
                        },
                        "400": {
                            "description": "Not a placeholder path: a page of examples",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        },
                        "404": _json(_ref("Error"), "The size is not digits x digits: no route"),
                        **_errors(401, 403, 429, 502),
                    },
                }
            },
            "/images/{image_id}/{variant}": {
                "get": {
                    "summary": "An image from the local store: 'public' or 'w=,h=,fit='",
                    "security": [],
                    "parameters": [_id_param("image_id"), _id_param("variant")],
                    "responses": {
                        "200": {
                            "description": "The image",
                            "content": {
                                "image/*": {"schema": {"type": "string", "format": "binary"}}
                            },
                        },
                        "304": {"description": "Not modified"},
                        **_errors(400, 404, 429),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Database, provider and store reachable",
                    "security": [],
                    "responses": {
                        "200": _json({"type": "object"}),
                        "503": _json({"type": "object"}, "Degraded"),
                    },
                }
            },
            **GALLERY_PATHS,
        },
    }
