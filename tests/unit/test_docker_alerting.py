"""docker/'s Prometheus alert rules and Grafana dashboard, checked statically: they load,
every metric they name is one gateway/metrics.py exposes, and compose mounts what they
reference."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1].parent
DOCKER = ROOT / "docker"
METRIC = re.compile(r"\b(xray_gateway_[a-z_]+)\b")
#: What a histogram or a counter adds to its family's name on the wire.
SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def exposed() -> set[str]:
    """Metric families gateway/metrics.py defines (``f"{PREFIX}_name"``), with the
    ``_total`` its counters are exposed under."""
    source = (ROOT / "gateway" / "metrics.py").read_text()
    names = {f"xray_gateway_{n}" for n in re.findall(r'f"\{PREFIX\}_([a-z_]+)"', source)}
    assert "xray_gateway_alerts" in names and "xray_gateway_commit_latency_seconds" in names
    return names


def family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def unknown(expressions: list[str]) -> set[str]:
    names = exposed()
    used = {m for expr in expressions for m in METRIC.findall(expr)}
    assert used, "no gateway metric used at all"
    return {m for m in used if m not in names and family(m) not in names}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return loaded


def mounts(service: str) -> dict[str, str]:
    """Bind mounts of ``service``: target in the container -> source under docker/."""
    found = {}
    for volume in compose()["services"][service]["volumes"]:
        source, target, *_ = str(volume).split(":")
        if source.startswith("./"):
            found[target] = source
    return found


def test_the_alert_rules_load_and_name_only_exposed_metrics() -> None:
    rules = yaml.safe_load((DOCKER / "prometheus" / "alerts.yml").read_text())
    found = [rule for group in rules["groups"] for rule in group["rules"]]
    names = {rule["alert"] for rule in found}
    assert {"XrayImageTampered", "XrayImageUnregistered", "XrayRowsParked", "XrayQueueDeep",
            "XrayCommitLatencyHigh", "XrayChainUnavailable", "XrayPacsUnavailable"} <= names  # fmt: skip
    assert all(rule["labels"]["severity"] in ("warning", "critical") for rule in found)
    assert unknown([rule["expr"] for rule in found]) == set()


def test_the_dashboard_loads_and_names_only_exposed_metrics() -> None:
    board = json.loads((DOCKER / "grafana" / "dashboards" / "xray-gateway.json").read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    titles = {panel["title"] for panel in board["panels"]}
    assert {"Ingest and commit rate", "Ack latency", "Commit latency", "Alerts by kind",
            "Queue per stage"} <= titles  # fmt: skip
    assert unknown(exprs) == set()
    datasource = yaml.safe_load(
        (DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    assert {p["datasource"]["uid"] for p in board["panels"]} == {datasource["uid"]}
    assert datasource["url"] == "http://prometheus:9090"


def test_compose_mounts_what_prometheus_and_grafana_reference() -> None:
    services = compose()["services"]
    prometheus = mounts("prometheus")
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert rule_file in prometheus, f"{rule_file} is not mounted into prometheus"
        assert (DOCKER / prometheus[rule_file]).is_file()
    grafana = mounts("grafana")
    assert all((DOCKER / source).exists() for source in grafana.values())
    provider = yaml.safe_load(
        (DOCKER / "grafana" / "provisioning" / "dashboards" / "xray-gateway.yml").read_text()
    )["providers"][0]
    assert provider["options"]["path"] in grafana  # the dashboards' dir is mounted there
    assert grafana["/etc/grafana/provisioning"] == "./grafana/provisioning"
    assert services["grafana"]["profiles"] == services["prometheus"]["profiles"] == ["metrics"]
    assert "prometheus" in services["grafana"]["depends_on"]


def test_a_metric_the_code_does_not_expose_is_caught() -> None:
    assert unknown(["rate(xray_gateway_no_such_thing_total[5m])"]) == {
        "xray_gateway_no_such_thing_total"
    }
