"""The optional observability profile, checked offline: Prometheus' config scrapes the cloud's
/metrics on the compose network, Grafana is provisioned with the datasource and the dashboards,
and every metric a dashboard queries is one the cloud exposes on /metrics (names taken from the
cloud's own registry, with the suffixes Prometheus' exposition gives each type)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from pulse.cloud.metrics import Metrics

pytestmark = pytest.mark.unit
DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"), "gauge": ("",)}


def exposed() -> set[str]:
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names |= {family.name + s for s in SUFFIXES.get(family.type, ("",))}
    return names


def dashboards() -> dict[str, dict[str, object]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))}


def test_prometheus_scrapes_the_cloud_metrics_on_the_compose_network() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert re.fullmatch(r"\d+s", config["global"]["scrape_interval"])
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["pulse-cloud"]["metrics_path"] == "/metrics"
    assert jobs["pulse-cloud"]["static_configs"][0]["targets"] == ["cloud:8080"]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert compose["services"]["cloud"]["environment"]["PULSE_PORT"] == "8080"
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_grafana_is_provisioned_with_the_datasource_the_dashboards_name() -> None:
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "pulse.yaml").read_text())
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert f"./grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in compose["services"]["grafana"]["volumes"]
    boards = dashboards()
    assert set(boards) == {"fleet", "pipeline", "gateways"}
    uids = [b["uid"] for b in boards.values()]
    assert len(set(uids)) == len(uids)
    for name, board in boards.items():
        panels = board["panels"]
        assert isinstance(panels, list) and panels, name
        assert len({p["id"] for p in panels}) == len(panels), name
        for panel in panels:
            assert panel["datasource"]["uid"] == source["uid"], (name, panel["title"])
            assert panel["targets"], (name, panel["title"])


def test_every_metric_a_dashboard_queries_exists_on_metrics() -> None:
    names = exposed()
    queried: set[str] = set()
    for name, board in dashboards().items():
        for panel in board["panels"]:  # type: ignore[union-attr]
            for target in panel["targets"]:
                found = set(re.findall(r"\bpulse_[a-z0-9_]+", target["expr"]))
                assert found, (name, target["expr"])
                missing = found - names
                assert not missing, f"{name}/{panel['title']} queries {missing}, which /metrics does not have"
                queried |= found
    # the figures the issue names are all on a dashboard
    for figure in ("pulse_rules_evaluation_lag_seconds", "pulse_notify_dead_letters", "pulse_gateway_backlog_age_seconds",
                   "pulse_http_request_duration_seconds_bucket", "pulse_ingest_latency_seconds_bucket", "pulse_db_pool_connections"):
        assert figure in queried, figure
