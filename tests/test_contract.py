"""The HTTP contract is one definition: every route's documented request model is the one its
handler parses (each field of the model, and no other, is what the handler knows), and every
documented reply is what the live server really sends, checked against the generated document
and parsed back with the reply model. ``metadata`` is any JSON object up to 1,024 bytes, stored
in the ledger as JSON and echoed exactly."""

from __future__ import annotations

import io
import json
import sqlite3
from typing import Any

import jsonschema_rs
import pytest
import requests
from PIL import Image

from bot.web.bodies import BatchBody, GenerateBody, StrictBody, TemplateBody, UploadUrlBody
from bot.web.openapi import body_model, openapi_path, reply_model
from bot.web.routes import ROUTES, api_document
from tests.live_server import LiveServer

# The smallest valid body of each request model (its required fields only).
SAMPLES: dict[type[StrictBody], dict[str, Any]] = {
    GenerateBody: {"prompt": "a contract cat"},
    TemplateBody: {"name": "contract", "prompt": "ink {prompt}"},
    UploadUrlBody: {"url": "https://example.com/a.png"},
    BatchBody: {"prompts": ["a contract fox"]},
}
WRONG = [[]]  # a nested list: wrong for every field type the bodies have


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), "olive").save(out, format="PNG")
    return out.getvalue()


def schema_of(path: str, method: str, status: int, media: str = "application/json") -> Any:
    doc = api_document()
    content = doc["paths"][path][method.lower()]["responses"][str(status)]["content"]
    return {**content[media]["schema"], "components": doc["components"]}


def test_every_body_model_has_a_sample() -> None:
    assert {body_model(op) for op in ROUTES if op.body is not None} == set(SAMPLES)


@pytest.mark.parametrize(
    "op", [op for op in ROUTES if op.body is not None], ids=lambda op: f"{op.method} {op.path}"
)
def test_the_documented_body_model_is_the_one_the_handler_parses(
    live: LiveServer, op: Any
) -> None:
    model = body_model(op)
    assert model is not None
    path = openapi_path(op.path)
    documented = api_document()["paths"][path][op.method.lower()]["requestBody"]["content"]
    assert documented["application/json"]["schema"] == {
        "$ref": f"#/components/schemas/{model.__name__}"
    }
    component = api_document()["components"]["schemas"][model.__name__]
    assert set(component["properties"]) == set(model.model_fields)
    assert set(component["required"]) == set(SAMPLES[model])
    assert component["additionalProperties"] is False

    refused = live.request(op.method, path, json={**SAMPLES[model], "not_in_the_model": 1})
    assert refused.status_code == 400, refused.text
    assert refused.json()["details"]["field"] == "not_in_the_model"
    for name in model.model_fields:  # the handler checks exactly the model's fields
        response = live.request(op.method, path, json={**SAMPLES[model], name: WRONG})
        assert response.status_code == 400, (name, response.text)
        assert response.json()["details"]["field"] == name
    for name in SAMPLES[model]:
        missing = {k: v for k, v in SAMPLES[model].items() if k != name}
        response = live.request(op.method, path, json=missing)
        assert response.status_code == 400 and response.json()["details"]["field"] == name


def _query_probes(schema: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Values the documented schema of a query parameter allows, and values it refuses."""
    if schema.get("type") == "integer":
        low, high = schema["minimum"], schema["maximum"]
        return [str(low), str(high)], [str(low - 1), str(high + 1), "1e1"]
    if "enum" in schema:
        return list(schema["enum"]), ["not-a-choice"]
    if schema.get("anyOf") == [{"format": "date"}, {"maxLength": 0}]:
        return ["", "2026-01-31"], ["2026-02-30", "yesterday"]
    return [], []


QUERIED = [
    (op, parameter)
    for op in ROUTES
    for parameter in api_document()["paths"][openapi_path(op.path)][op.method.lower()].get(
        "parameters", []
    )
    if parameter["in"] == "query" and _query_probes(parameter["schema"]) != ([], [])
]


def test_some_query_parameters_are_checked() -> None:
    assert {p["name"] for _, p in QUERIED} == {"limit", "from", "to", "scope"}


@pytest.mark.parametrize(
    ("op", "parameter"), QUERIED, ids=[f"{op.path} {p['name']}" for op, p in QUERIED]
)
def test_documented_query_parameters_are_what_the_handler_reads(
    live: LiveServer, op: Any, parameter: dict[str, Any]
) -> None:
    allowed, refused = _query_probes(parameter["schema"])
    name, path = parameter["name"], openapi_path(op.path)
    for value in refused:
        response = live.request(op.method, path, params={name: value})
        assert response.status_code == 400, (name, value, response.text)
        assert response.json()["details"]["field"] == name
    for value in allowed:
        response = live.request(op.method, path, params={name: value})
        assert response.status_code != 400, (name, value, response.text)


def _exercise(live: LiveServer) -> list[tuple[str, str, int, requests.Response]]:
    """At least one real answer for every documented reply of every route."""
    seen: list[tuple[str, str, int, requests.Response]] = []

    def call(method: str, path: str, url: str | None = None, **kwargs: Any) -> requests.Response:
        response = live.request(method, url or path, **kwargs)
        seen.append((method, path, response.status_code, response))
        return response

    image = call("POST", "/api/generate", json={"prompt": "a contract owl"}).json()
    call("GET", "/api/images", params={"limit": 1})
    call("GET", "/api/images/{image_id}", f"/api/images/{image['id']}")
    upload = call("POST", "/api/upload", files={"file": ("a.png", png_bytes(), "image/png")})
    uploaded = upload.json()["id"]
    variant = call("GET", "/images/{image_id}/{variant}", f"/images/{uploaded}/w=20,h=20")
    call("GET", "/images/{image_id}/{variant}", f"/images/{uploaded}/w=20,h=20",
         headers={"If-None-Match": variant.headers["ETag"]})  # fmt: skip
    call("DELETE", "/api/images/{image_id}", f"/api/images/{uploaded}")
    call("GET", "/api/models")
    template = call("POST", "/api/templates", json={"name": "owls", "prompt": "owl {prompt}"})
    call("GET", "/api/templates")
    template_url = f"/api/templates/{template.json()['id']}"
    call("GET", "/api/templates/{template_id}", template_url)
    call("DELETE", "/api/templates/{template_id}", template_url)
    call("GET", "/api/analytics/costs")
    batch = call("POST", "/api/batch/generate", json={"prompts": ["an owl", "a jay"]}).json()
    live.run(live.runtime.batches.wait_idle())
    call("GET", "/api/batch/{batch_id}", f"/api/batch/{batch['id']}")
    call("GET", "/api/openapi.json")
    call("GET", "/{size}/{slug}", "/64x48/contract-otter")
    call("GET", "/{size}/{slug}", "/64x48/NOPE!")
    server_link = live.runtime.gallery.links.token("77", "g-contract", server=True)
    for page in ("/gallery", "/gallery/chart.png", "/gallery/usage.csv"):
        call("GET", page, params={"t": server_link})
        call("GET", page, params={"t": server_link[:-2]})  # altered: 403
    call("GET", "/healthz")
    call("GET", "/metrics")
    ledger = live.runtime.ledger

    async def locked() -> None:
        raise sqlite3.OperationalError("database is locked")

    ledger.ping = locked  # type: ignore[method-assign]
    try:
        call("GET", "/healthz")
    finally:
        del ledger.ping
    return seen


def test_every_documented_reply_is_what_the_handler_sends(live: LiveServer) -> None:
    seen = _exercise(live)
    documented = {
        (op.method, openapi_path(op.path), status): reply
        for op in ROUTES
        for status, reply in op.replies.items()
    }
    answered = {(method, path, status) for method, path, status, _ in seen}
    assert set(documented) - answered == set(), "documented replies never seen"
    for method, path, status, response in seen:
        reply = documented.get((method, path, status))
        assert reply is not None, (method, path, status, response.text)
        media = response.headers.get("Content-Type", "").split(";")[0]
        model = reply_model(reply)
        if model is None:
            allowed = reply.media or {}
            assert any(media == m or (m.endswith("/*") and media.startswith(m[:-1]))
                       for m in allowed) or (not allowed and not response.content)  # fmt: skip
            continue
        assert media == "application/json", (method, path, status)
        body = response.json()
        validator = jsonschema_rs.Draft202012Validator(schema_of(path, method, status))
        errors = [e.message for e in validator.iter_errors(body)]
        assert errors == [], (method, path, status, errors)
        assert model.model_validate_json(response.content).model_dump(
            mode="json", by_alias=True
        ) == body, (method, path, status)  # the model reads back exactly what was sent


def test_batch_items_hold_the_images_they_made(live: LiveServer) -> None:
    batch = live.request("POST", "/api/batch/generate", json={"prompts": ["a dry heron"]}).json()
    live.run(live.runtime.batches.wait_idle())
    item = live.request("GET", f"/api/batch/{batch['id']}").json()["items"][0]
    assert item["status"] == "done" and item["error"] is None
    assert item["image"]["metadata"] == {"batch_id": batch["id"], "position": "0"}
    assert item["image"]["prompt"] == "a dry heron"


# --------------------------------------------------------------------------- metadata

METADATA = {
    "ref": "a-42",
    "batch_no": 7,
    "ratio": 0.25,
    "ok": True,
    "none": None,
    "nested": {"tags": ["a", 1, False, {"deep": [[]]}], "é": "ünïcødé 🦊"},
}


def _stored_metadata(live: LiveServer, image_id: str) -> Any:
    with sqlite3.connect(live.runtime.settings.database_path) as db:
        (raw,) = db.execute("SELECT metadata FROM images WHERE id = ?", (image_id,)).fetchone()
    return json.loads(raw)


def test_metadata_of_any_json_round_trips_through_the_ledger_and_the_api(
    live: LiveServer,
) -> None:
    created = live.request("POST", "/api/generate",
                           json={"prompt": "a metadata heron", "metadata": METADATA})  # fmt: skip
    assert created.status_code == 201, created.text
    image_id = created.json()["id"]
    assert created.json()["metadata"] == METADATA
    assert _stored_metadata(live, image_id) == METADATA  # a JSON object in the ledger
    assert live.request("GET", f"/api/images/{image_id}").json()["metadata"] == METADATA
    listed = live.request("GET", "/api/images", params={"limit": 100}).json()["images"]
    assert [i["metadata"] for i in listed if i["id"] == image_id] == [METADATA]


def _sized(size: int) -> dict[str, str]:
    """Metadata whose compact UTF-8 JSON is exactly ``size`` bytes (two-byte characters)."""
    fixed = len(json.dumps({"k": ""}, separators=(",", ":")))
    room = size - fixed
    return {"k": "é" * (room // 2) + "x" * (room % 2)}


@pytest.mark.parametrize(("size", "status"), [(1024, 201), (1025, 400)])
def test_metadata_up_to_1024_bytes_is_kept_and_over_it_is_refused_uncharged(
    live: LiveServer, size: int, status: int
) -> None:
    metadata = _sized(size)
    assert len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode()) == size

    def images() -> int:
        with sqlite3.connect(live.runtime.settings.database_path) as db:
            return int(db.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    before = images()
    body = {"prompt": f"a sized owl {size}", "metadata": metadata}
    response = live.request("POST", "/api/generate", json=body)
    assert response.status_code == status, response.text
    if status == 201:
        assert response.json()["metadata"] == metadata
        assert images() == before + 1
    else:
        refusal = response.json()
        assert refusal["error"] == "Invalid request" and refusal["details"]["field"] == "metadata"
        assert "1024" in refusal["details"]["message"]
        assert images() == before  # nothing stored, nothing charged


def _nested(depth: int) -> dict[str, Any]:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return {"a": value}


@pytest.mark.parametrize(
    "bad",
    ["text", 5, ["a"], True, _nested(300)],
    ids=["a string", "a number", "a list", "a boolean", "nested 300 deep"],
)
def test_metadata_must_be_an_object_of_plain_json(live: LiveServer, bad: Any) -> None:
    response = live.request("POST", "/api/generate", json={"prompt": "an owl", "metadata": bad})
    assert response.status_code == 400
    assert response.json()["error"] == "Invalid request"
    assert response.json()["details"]["field"] == "metadata"


def test_metadata_nested_255_deep_is_kept(live: LiveServer) -> None:
    metadata = _nested(255)
    response = live.request("POST", "/api/generate",
                            json={"prompt": "a deep owl", "metadata": metadata})  # fmt: skip
    assert response.status_code == 201, response.text
    assert response.json()["metadata"] == metadata


