"""Requests the API fuzz (test_api_fuzz.py) found answered with a 500: each is now a coded 4xx,
translated in one place (cloud/db/refusals.py) for every route that reaches PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.integration

Cloud = Any  # the `cloud` fixture (conftest.py)


async def test_patching_a_site_address_to_null_is_a_coded_422(cloud: Cloud) -> None:
    _, h = await cloud.tenant_user()
    site = (await cloud.client.post("/api/v1/sites", json={"name": "plant"}, headers=h)).json()
    r = await cloud.client.patch(f"/api/v1/sites/{site['id']}", json={"address": None, "name": "plant 2"}, headers=h)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "api.invalid" and "address" in r.json()["message"]
    assert (await cloud.client.get(f"/api/v1/sites/{site['id']}", headers=h)).json()["name"] == "plant"  # nothing changed


async def test_login_with_a_nul_byte_in_the_email_is_a_coded_422(cloud: Cloud) -> None:
    r = await cloud.client.post("/auth/login", json={"email": "a\x00@example.com", "password": "whatever-password"})
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "api.invalid" and "NUL" in r.json()["message"]


async def test_a_nul_byte_in_an_operator_query_is_a_coded_422(cloud: Cloud) -> None:
    h = await cloud.user("operator", tenant=None)
    r = await cloud.client.get("/api/v1/operator/alerts", params={"severity": "ma\x00jor"}, headers=h)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "api.invalid"


@pytest.mark.parametrize("action", ["ack", "close"])
async def test_an_alert_id_beyond_64_bits_is_a_coded_422(cloud: Cloud, action: str) -> None:
    _, h = await cloud.tenant_user()
    r = await cloud.client.post(f"/api/v1/alerts/{2**90}/{action}", json={}, headers=h)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "api.invalid" and "out of range" in r.json()["message"]


async def test_bulk_alert_ids_beyond_64_bits_are_a_coded_422(cloud: Cloud) -> None:
    _, h = await cloud.tenant_user()
    r = await cloud.client.post("/api/v1/alerts/bulk", json={"ids": [1, -(2**90)], "action": "close"}, headers=h)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "api.invalid"
