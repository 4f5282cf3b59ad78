"""The OpenAPI document is valid OpenAPI 3.1, served unchanged, in step with the routes, and true
of the real server: schemathesis fuzzes every operation (valid and invalid inputs) over a socket
on 127.0.0.1 and checks every answer against the document; hand-made hostile requests follow.

The server runs on its own event loop in a background thread (schemathesis is synchronous), with
the embedded backends and generous quotas. Host names the API would contact (upload by URL,
batch webhooks) resolve to 127.0.0.1 on that loop, so they are refused as private: nothing is
ever sent off this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import json
import re
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import jsonschema_rs
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from PIL import Image
from schemathesis.core.result import Err
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from bot.config import load_settings
from bot.runtime import Runtime, open_runtime
from bot.web.app import build_web_app
from bot.web.openapi import openapi_document
from bot.web.server import GuardedAppRunner

T = TypeVar("T")

GENEROUS = {
    "QUOTA_USER_DAILY_IMAGES": 100_000,
    "QUOTA_USER_DAILY_USD": 1000,
    "QUOTA_GUILD_DAILY_USD": 100_000,
    "QUOTA_DAILY_NEURONS": 100_000_000,
    "API_RATE_PER_MINUTE": 100_000,
    "PLACEHOLDER_DAILY_IMAGES": 100_000,
    "IMAGE_RATE_PER_MINUTE": 1_000_000,
}
METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")


# --------------------------------------------------------------------------- the live server


@dataclass
class LiveServer:
    """The real app on 127.0.0.1, served by its own event loop on a background thread."""

    url: str
    token: str
    runtime: Runtime
    loop: asyncio.AbstractEventLoop
    lookups: list[str]
    session: requests.Session = field(default_factory=requests.Session)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the server's loop (where the runtime lives) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {**self.auth, **kwargs.pop("headers", {})}
        return self.session.request(method, self.url + path, headers=headers, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the module (the fuzzing runs many operations against it)."""
    env = {"DATA_DIR": str(tmp_path_factory.mktemp("openapi") / "data"), "WEB_PORT": "0"}
    config = load_settings({**env, **{k: str(v) for k, v in GENEROUS.items()}})
    started: Future[tuple[LiveServer, asyncio.Event]] = Future()
    lookups: list[str] = []

    async def resolve_locally(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        lookups.append(str(host))
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", int(port or 443)))]

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        loop.getaddrinfo = resolve_locally  # type: ignore[method-assign]
        async with open_runtime(config) as runtime:
            _, token = await runtime.keys.create(user_id="42", guild_id="", name="openapi")
            runner = GuardedAppRunner(build_web_app(runtime), config)  # as the real server
            await runner.setup()
            try:
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                url = f"http://127.0.0.1:{runner.addresses[0][1]}"
                stop = asyncio.Event()
                started.set_result((LiveServer(url, token, runtime, loop, lookups), stop))
                await stop.wait()
                await runtime.batches.wait_idle()
            finally:
                await runner.cleanup()

    def main() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    thread = threading.Thread(target=main, name="openapi-live-server", daemon=True)
    thread.start()
    server, stop = started.result(timeout=30)
    server.session.trust_env = False  # no proxy: straight to 127.0.0.1
    try:
        yield server
    finally:
        server.session.close()
        server.loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=60)
        assert not thread.is_alive(), "the live server did not shut down"


# --------------------------------------------------------------------------- the document


def _schemas(doc: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every Schema Object in the document, with where it is."""
    for name, schema in doc["components"]["schemas"].items():
        yield f"components/schemas/{name}", schema
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                for parameter in operation:
                    yield f"{path} parameter {parameter['name']}", parameter["schema"]
                continue
            where = f"{method.upper()} {path}"
            for parameter in operation.get("parameters", []):
                yield f"{where} parameter {parameter['name']}", parameter["schema"]
            for media, content in operation.get("requestBody", {}).get("content", {}).items():
                yield f"{where} body {media}", content["schema"]
            for status, response in operation["responses"].items():
                for media, content in response.get("content", {}).items():
                    yield f"{where} {status} {media}", content["schema"]


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.1.")
    OPENAPI_31_VALIDATOR.validate(doc)  # the OAS 3.1 meta-schema schemathesis ships
    # That meta-schema leaves Schema Objects alone: check each against JSON Schema 2020-12.
    for where, schema in _schemas(doc):
        dialect = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
        try:
            jsonschema_rs.meta.validate(dialect)
        except jsonschema_rs.ValidationError as exc:
            pytest.fail(f"{where}: {exc}")
    for ref in set(_refs(doc)):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"], f"dangling {ref}"
    for path, item in doc["paths"].items():
        templated = set(re.findall(r"\{(\w+)\}", path))
        shared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        for method in set(item) & set(METHODS):
            operation = item[method]
            own = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert own | shared == templated, f"{method.upper()} {path}: path parameters"
            assert operation["responses"], f"{method.upper()} {path}: no responses"
    # schemathesis reads every operation without complaint
    loaded = schemathesis.openapi.from_dict(copy.deepcopy(doc))
    errors = [r.err() for r in loaded.get_all_operations() if isinstance(r, Err)]
    assert errors == []


def test_the_document_is_served_unchanged(live: LiveServer) -> None:
    response = live.session.get(f"{live.url}/api/openapi.json", timeout=10)  # no key needed
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == openapi_document()


def _openapi_path(resource: Any) -> str:
    """The route's path as OpenAPI writes it: aiohttp's own formatter (``{name}``, no regex)."""
    info = resource.get_info()
    path = info.get("formatter", info.get("path"))
    assert isinstance(path, str), info
    return path


async def test_every_route_is_documented_and_every_documented_operation_is_routed(
    local_runtime: Runtime,
) -> None:
    app = build_web_app(local_runtime)
    routed: set[tuple[str, str]] = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS"):
            continue
        assert route.resource is not None
        path = _openapi_path(route.resource)
        routed.add((route.method, path))
    assert ("GET", "/{size}/{slug}") in routed  # from /{size:[0-9]+x[0-9]+}/{slug}
    documented = {
        (method.upper(), path)
        for path, item in openapi_document()["paths"].items()
        for method in item
        if method in METHODS
    }
    assert routed - documented == set(), "routes missing from the OpenAPI document"
    assert documented - routed == set(), "documented operations without a route"


# --------------------------------------------------------------------------- fuzzing

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",  # invalid input never gets a 2xx
    "ignored_auth",  # on a 2xx, the same request without / with a wrong key is refused
]
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20260131,  # the same cases every run; change it to explore
        "generation": {
            "mode": "all",  # positive and negative (schema-violating) data
            "max-examples": 40,
            "database": "none",
            # the API ignores query parameters it does not know (bodies are strict: see below)
            "allow-extra-parameters": False,
            "no-shrink": True,
        },
        "phases": {"stateful": {"enabled": False}},
        "checks": {
            "enabled": False,
            **{name: {"enabled": True} for name in CHECKS},
            # 413 is how a too-large invalid body is (rightly) rejected
            "negative_data_rejection": {
                "enabled": True,
                "expected-statuses": [400, 401, 403, 404, 405, 413, 415, 422, 429],
            },
        },
    }
)
SCHEMA = schemathesis.openapi.from_dict(copy.deepcopy(openapi_document()), config=CONFIG)


@SCHEMA.parametrize()
@settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case: schemathesis.Case, live: LiveServer) -> None:
    case.call_and_validate(base_url=live.url, session=live.session, headers=live.auth, timeout=30)


def test_nothing_was_contacted_but_127_0_0_1(live: LiveServer) -> None:
    """Fuzzed upload URLs and webhooks resolve to 127.0.0.1 here, and are refused as private."""
    response = live.request("POST", "/api/upload", json={"url": "https://example.com/a.png"})
    assert response.status_code == 400
    assert response.json()["details"]["field"] == "url"
    assert "example.com" in live.lookups


# --------------------------------------------------------------------------- real resources


def png_bytes(width: int = 40, height: int = 30) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), "purple").save(out, format="PNG")
    return out.getvalue()


def validated(live: LiveServer, path: str, method: str, **case: Any) -> schemathesis.Response:
    """One request on a documented operation, checked against the document like the fuzz."""
    built = SCHEMA[path][method].Case(**case)
    return built.call_and_validate(
        base_url=live.url, session=live.session, headers=live.auth, timeout=30
    )


def test_responses_about_real_resources_match_the_document(live: LiveServer) -> None:
    """Fuzzed ids are almost never found: create real ones and check every 2xx shape."""
    image = validated(live, "/api/generate", "POST", body={"prompt": "a documented cat"}).json()
    template = validated(
        live,
        "/api/templates",
        "POST",
        body={
            "name": "documented template",
            "prompt": "watercolour {prompt}",
            "aspect_ratio": "1:1",
        },
    ).json()
    uploaded = validated(
        live, "/api/upload", "POST", body={"file": png_bytes()}, media_type="multipart/form-data"
    ).json()
    batch = validated(
        live, "/api/batch/generate", "POST", body={"prompts": ["a red fox", "a blue jay"]}
    ).json()
    live.run(live.runtime.batches.wait_idle())
    finished = validated(
        live, "/api/batch/{batch_id}", "GET", path_parameters={"batch_id": batch["id"]}
    )
    assert finished.json()["status"] == "done"
    assert [i["image"]["id"].startswith("img_") for i in finished.json()["items"]] == [True, True]

    listed = validated(live, "/api/images", "GET", query={"limit": 2}).json()
    assert len(listed["images"]) == 2 and listed["next"]
    validated(live, "/api/images", "GET", query={"limit": 100, "before": listed["next"]})
    validated(live, "/api/images/{image_id}", "GET", path_parameters={"image_id": image["id"]})
    validated(live, "/api/templates", "GET")
    validated(
        live, "/api/templates/{template_id}", "GET", path_parameters={"template_id": template["id"]}
    )
    validated(live, "/api/analytics/costs", "GET", query={"scope": "user"})
    validated(live, "/api/models", "GET")
    validated(live, "/healthz", "GET")
    variant = validated(
        live,
        "/images/{image_id}/{variant}",
        "GET",
        path_parameters={"image_id": uploaded["id"], "variant": "w=20,h=20"},
    )
    assert variant.headers["content-type"][0].startswith("image/")
    placeholder = validated(
        live, "/{size}/{slug}", "GET", path_parameters={"size": "64x48", "slug": "documented-otter"}
    )
    assert Image.open(io.BytesIO(placeholder.content)).size == (64, 48)
    validated(live, "/{size}/{slug}", "GET", path_parameters={"size": "64x48", "slug": "NOPE!"})

    validated(
        live,
        "/api/templates/{template_id}",
        "DELETE",
        path_parameters={"template_id": template["id"]},
    )
    deleted = validated(
        live, "/api/images/{image_id}", "DELETE", path_parameters={"image_id": uploaded["id"]}
    )
    assert deleted.json()["is_deleted"] is True
    gone = validated(
        live, "/api/images/{image_id}", "GET", path_parameters={"image_id": uploaded["id"]}
    )
    assert gone.status_code == 404


# --------------------------------------------------------------------------- hostile requests

JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Hostile:
    name: str
    path: str
    body: bytes
    status: int
    blamed: str | None  # the field details.field must name, if any
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    method: str = "POST"


def _dump(data: Any) -> bytes:
    return json.dumps(data).encode()


HOSTILE = [
    Hostile("malformed JSON", "/api/generate", b'{"prompt": "a cat"', 400, "body"),
    Hostile("a JSON array", "/api/generate", b'["a cat"]', 400, "body"),
    Hostile("a JSON string", "/api/templates", b'"a cat"', 400, "body"),
    Hostile("JSON null", "/api/batch/generate", b"null", 400, "body"),
    Hostile("not UTF-8", "/api/generate", b'{"prompt": "\xff\xfe"}', 400, "body"),
    Hostile("NaN", "/api/generate", b'{"prompt": "a cat", "seed": NaN}', 400, "seed"),
    Hostile("Infinity", "/api/generate", b'{"prompt": "a cat", "width": Infinity}', 400, "width"),
    Hostile(
        "text/plain",
        "/api/generate",
        b'{"prompt": "a cat"}',
        415,
        None,
        {"Content-Type": "text/plain"},
    ),
    Hostile(
        "no content type", "/api/templates", b'{"name": "x", "prompt": "a cat"}', 415, None, {}
    ),
    Hostile(
        "form-encoded",
        "/api/upload",
        b"url=https%3A%2F%2Fexample.com",
        415,
        None,
        {"Content-Type": "application/x-www-form-urlencoded"},
    ),
    Hostile("1 MB body", "/api/generate", _dump({"prompt": "a" * (1 << 20)}), 413, None),
    Hostile("64 KB + 1 of whitespace", "/api/templates", b" " * (64 * 1024 + 1), 413, None),
    Hostile(
        "nesting 100 deep",
        "/api/generate",
        b'{"prompt": ' + b"[" * 100 + b"]" * 100 + b"}",
        400,
        "prompt",
    ),
    Hostile(
        "only NULs", "/api/generate", b'{"prompt": "\\u0000\\u0000\\u0000\\u0000"}', 400, "prompt"
    ),
    Hostile(
        "only lone surrogates",
        "/api/generate",
        b'{"prompt": "\\ud800\\udfff\\ud800"}',
        400,
        "prompt",
    ),
    Hostile(
        "only RTL and zero-width marks",
        "/api/generate",
        _dump({"prompt": "\u202e\u200f\u2066\u200b\ufeff"}),
        400,
        "prompt",
    ),
    Hostile(
        "a lone surrogate as a field name",
        "/api/generate",
        b'{"prompt": "a cat", "\\udc00": 1}',
        400,
        "\udc00",
    ),
    Hostile(
        "negative width", "/api/generate", _dump({"prompt": "a cat", "width": -512}), 400, "width"
    ),
    Hostile("zero height", "/api/generate", _dump({"prompt": "a cat", "height": 0}), 400, "height"),
    Hostile(
        "enormous width", "/api/generate", _dump({"prompt": "a cat", "width": 10**30}), 400, "width"
    ),
    Hostile(
        "an integer of 5000 digits",
        "/api/generate",
        b'{"prompt": "a cat", "width": ' + b"9" * 5000 + b"}",
        400,
        "body",
    ),
    Hostile(
        "enormous seed", "/api/generate", _dump({"prompt": "a cat", "seed": 2**64}), 400, "seed"
    ),
    Hostile("float steps", "/api/generate", _dump({"prompt": "a cat", "steps": 4.5}), 400, "steps"),
    Hostile(
        "true as width", "/api/generate", _dump({"prompt": "a cat", "width": True}), 400, "width"
    ),
    Hostile(
        "false as steps",
        "/api/templates",
        _dump({"name": "t", "prompt": "a cat", "steps": False}),
        400,
        "steps",
    ),
    Hostile(
        "1 as enhance", "/api/generate", _dump({"prompt": "a cat", "enhance": 1}), 400, "enhance"
    ),
    Hostile("a number as prompt", "/api/generate", _dump({"prompt": 42}), 400, "prompt"),
    Hostile("missing prompt", "/api/generate", _dump({"width": 512}), 400, "prompt"),
    Hostile(
        "unknown field", "/api/generate", _dump({"prompt": "a cat", "colour": "red"}), 400, "colour"
    ),
    Hostile(
        "unknown field in a template",
        "/api/templates",
        _dump({"name": "t", "prompt": "a cat", "guild_id": "1"}),
        400,
        "guild_id",
    ),
    Hostile(
        "metadata not strings",
        "/api/generate",
        _dump({"prompt": "a cat", "metadata": {"a": 1}}),
        400,
        "metadata",
    ),
    Hostile(
        "a prompt of 4097 characters", "/api/generate", _dump({"prompt": "a" * 4097}), 400, "prompt"
    ),
    Hostile(
        "prompts as a string", "/api/batch/generate", _dump({"prompts": "a cat"}), 400, "prompts"
    ),
    Hostile(
        "51 prompts", "/api/batch/generate", _dump({"prompts": ["a cat"] * 51}), 400, "prompts"
    ),
    Hostile(
        "a webhook on loopback",
        "/api/batch/generate",
        _dump({"prompts": ["a cat"], "webhook_url": "https://127.0.0.1/hook"}),
        400,
        "webhook_url",
    ),
    Hostile(
        "a plain-http upload URL",
        "/api/upload",
        _dump({"url": "http://example.com/a.png"}),
        400,
        "url",
    ),
    Hostile("a number as URL", "/api/upload", _dump({"url": 5}), 400, "url"),
    Hostile("negative limit", "/api/images?limit=-1", b"", 400, "limit", {}, "GET"),
    Hostile("limit 0", "/api/images?limit=0", b"", 400, "limit", {}, "GET"),
    Hostile("limit 101", "/api/images?limit=101", b"", 400, "limit", {}, "GET"),
    Hostile("limit 1e3", "/api/images?limit=1e3", b"", 400, "limit", {}, "GET"),
    Hostile("February 30th", "/api/analytics/costs?from=2026-02-30", b"", 400, "from", {}, "GET"),
    Hostile(
        "from after to",
        "/api/analytics/costs?from=2026-03-02&to=2026-03-01",
        b"",
        400,
        "from",
        {},
        "GET",
    ),
    Hostile("an unknown scope", "/api/analytics/costs?scope=all", b"", 400, "scope", {}, "GET"),
    Hostile(
        "an enormous variant", "/images/img_0/w=99999999999999999999,h=1", b"", 400, None, {}, "GET"
    ),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[h.name for h in HOSTILE])
def test_hostile_requests_get_a_4xx_with_the_error_shape(live: LiveServer, case: Hostile) -> None:
    response = live.request(case.method, case.path, data=case.body, headers=case.headers)
    assert response.status_code == case.status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "details"}
    assert isinstance(body["error"], str) and isinstance(body["details"], dict)
    if case.blamed is not None:
        assert body["details"]["field"] == case.blamed
    assert response.content.isascii()  # whatever came in, the answer is escaped JSON


def test_unicode_oddities_around_a_real_prompt_are_cleaned_not_a_500(live: LiveServer) -> None:
    body = b'{"prompt": "a \\u202ecat\\u200f \\u0000on a\\ud800 mat\\u2066"}'
    response = live.request("POST", "/api/generate", data=body, headers=JSON)
    assert response.status_code == 201, response.text
    assert response.json()["prompt"] == "a cat on a mat"


def test_placeholder_sizes_out_of_range_get_the_html_help(live: LiveServer) -> None:
    for size in ("0x0", "15x600", "4097x10", "99999x99999", "9" * 400 + "x1"):
        response = live.request("GET", f"/{size}/happy-robot")
        assert response.status_code == 400, size
        assert response.headers["Content-Type"].startswith("text/html")
    response = live.request("GET", "/-5x10/happy-robot")  # not digits x digits: no route
    assert response.status_code == 404
    assert set(response.json()) == {"error", "details"}


# --------------------------------------------------------------------------- known handler bugs


@pytest.mark.parametrize(
    "limit", ["²", "9" * 5000, "٣"], ids=["superscript", "5000 digits", "arabic-indic"]
)
def test_images_limit_must_be_ascii_digits(live: LiveServer, limit: str) -> None:
    response = live.request("GET", "/api/images", params={"limit": limit})
    assert response.status_code == 400, response.text
    assert response.json()["details"]["field"] == "limit"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"--x\r\n\r\n"),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="\x08\xc3\xbf"\r\n\r\nhi\r\n--x--\r\n',
        ),
        ("multipart/form-data; boundary=x", b"--x\r\n--x--\r\n"),
    ],
    ids=["no boundary", "control character in a part header", "a part without headers"],
)
def test_malformed_multipart_uploads_get_a_400(
    live: LiveServer, content_type: str, body: bytes
) -> None:
    response = live.request(
        "POST", "/api/upload", data=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error", "details"}


def _send_in_two_segments(live: LiveServer, path: str, body: bytes, chunked: bool) -> bytes:
    """A raw request whose body arrives in two TCP segments, 0.2 s apart."""
    host, port = live.url.removeprefix("http://").split(":")
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {live.token}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\nConnection: close\r\n\r\n"
    ).encode()

    def frame(part: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(part), part) if chunked else part

    first, second = body[:10], body[10:]
    received = b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + frame(first))
        time.sleep(0.2)
        with contextlib.suppress(OSError):  # the server may have answered and closed already
            sock.sendall(frame(second) + (b"0\r\n\r\n" if chunked else b""))
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    return received


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_arriving_in_pieces_is_read_whole(live: LiveServer, chunked: bool) -> None:
    body = _dump({"name": f"slow-{chunked}", "prompt": "a slow loris"})
    answer = _send_in_two_segments(live, "/api/templates", body, chunked)
    assert answer.startswith(b"HTTP/1.1 201"), answer.decode(errors="replace")


def test_a_chunked_megabyte_is_a_413(live: LiveServer) -> None:
    body = _dump({"prompt": "a" * (1 << 20)})
    answer = _send_in_two_segments(live, "/api/generate", body, chunked=True)
    assert answer.startswith(b"HTTP/1.1 413"), answer.decode(errors="replace")


@pytest.mark.parametrize("digits", [309, 400, 4000])
def test_integers_too_large_for_a_float_are_a_400(live: LiveServer, digits: int) -> None:
    body = b'{"prompt": "a cat", "width": 9' + b"0" * (digits - 1) + b"}"
    response = live.request("POST", "/api/generate", data=body, headers=JSON)
    assert response.status_code == 400, response.text
    assert response.json()["details"]["field"] == "width"


@pytest.mark.parametrize("depth", [30000])  # ~1000 suffice on 3.11; 30000 everywhere
def test_deeply_nested_json_is_a_400(live: LiveServer, depth: int) -> None:
    body = b'{"prompt": ' + b"[" * depth + b"]" * depth + b"}"
    response = live.request("POST", "/api/generate", data=body, headers=JSON)
    assert response.status_code == 400, response.text
    assert response.json()["details"]["field"] == "body"
