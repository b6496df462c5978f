"""One API dialect: every JSON route names its answer's schema in the OpenAPI document, every list
is a Page ``{items, next_cursor}``, and a cursor is only good for the kind of list that made it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from pulse.cloud.api import paging
from pulse.cloud.app import create_app
from pulse.cloud.errors import InvalidError
from pulse.cloud.metrics import api_areas, route_paths
from pulse.cloud.settings import Settings

pytestmark = pytest.mark.unit


def _named(schema: dict[str, Any] | None) -> bool:
    if not schema:
        return False
    if "$ref" in schema:
        return True
    if schema.get("type") == "array":
        return _named(schema.get("items"))
    return False


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    app = create_app(Settings(mode="development", database_url="postgresql://pulse@127.0.0.1:1/pulse"))
    return app.openapi()


def test_every_json_answer_has_a_named_schema(openapi: dict[str, Any]) -> None:
    unnamed = []
    for path, ops in openapi["paths"].items():
        for method, op in ops.items():
            for status, answer in op["responses"].items():
                if not status.startswith("2") or status == "204" or path == "/metrics":
                    continue
                if set(answer.get("content", {})) == {"text/html"}:  # pages for people (email acknowledge links), not JSON
                    continue
                if set(answer.get("content", {})) == {"application/octet-stream"}:  # file downloads (firmware), not JSON
                    continue
                if not _named(answer.get("content", {}).get("application/json", {}).get("schema")):
                    unnamed.append(f"{method.upper()} {path} {status}")
    assert unnamed == []


def test_lists_answer_a_page_and_take_the_cursor_as_a_query_parameter(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    for path, ops in openapi["paths"].items():
        op = ops.get("get")
        if op is None or not any(p["name"] == "cursor" for p in op.get("parameters", [])):
            continue
        ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        assert set(schemas[ref]["properties"]) == {"items", "next_cursor"}, path


def test_a_cursor_carries_its_sort_keys_and_nothing_else_decodes() -> None:
    at = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    cursor = paging.encode(at, 42)
    assert paging.decode(cursor, datetime, int) == (at, 42)
    assert paging.decode(None, datetime, int) is None
    for bad in ("not-a-cursor", paging.encode("dev-1"), paging.encode(at, "42"), paging.encode(at, 42, 1)):
        with pytest.raises(InvalidError):
            paging.decode(bad, datetime, int)


def test_page_cuts_the_extra_row_and_points_after_the_last_item() -> None:
    rows = [{"id": i} for i in range(4)]
    page = paging.page(rows, 3, lambda r: r["id"], lambda r: (r["id"],))
    assert page.items == [0, 1, 2] and paging.decode(page.next_cursor, int) == (2,)
    assert paging.page(rows[:3], 3, lambda r: r["id"], lambda r: (r["id"],)).next_cursor is None


def test_the_metrics_route_groups_come_from_the_routers_and_match_the_openapi_document(openapi: dict[str, Any]) -> None:
    # HttpMetrics labels requests by /api/v1/<area>; the areas are read from the routers' own paths
    # (cheap) rather than from the OpenAPI document (0.6 s of CPU at every process's first request)
    app = create_app(Settings(mode="development", database_url="postgresql://pulse@127.0.0.1:1/pulse"))
    from_routers = api_areas(route_paths(app.state.api_routers))
    assert from_routers - {"live"} == api_areas(openapi["paths"])  # /api/v1/live is a WebSocket: not in OpenAPI
    assert {"alerts", "devices", "jobs", "notify", "reports"} <= from_routers
