"""monitoring/: promtool accepts the config and the rules and every alert's test case passes; the Grafana
dashboard is well formed; rules and dashboard name only metrics the service exports; the scrape targets are compose's
service names. (tests/container proves every expression against a real Prometheus scraping the image.)"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from hxp_enterprise_llm.api.key_metrics import KeyMetrics
from hxp_enterprise_llm.api.metrics import ServiceMetrics
from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config
from support.promql import (
    DASHBOARD,
    RULES,
    comparison_operands,
    dashboard,
    dashboard_queries,
    metric_name,
    panels,
    rule_queries,
    selectors,
    shipped_queries,
)

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "monitoring" / "prometheus"
GRAFANA = REPO / "monitoring" / "grafana"



def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool is missing (Debian package prometheus; scripts/setup installs it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def run_promtool(*args: str) -> str:
    result = subprocess.run([promtool(), *args], capture_output=True, text=True, cwd=PROMETHEUS)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_promtool_checks_config_and_rules() -> None:
    assert "SUCCESS" in run_promtool("check", "config", "prometheus.yml")
    output = run_promtool("check", "rules", str(RULES.relative_to(PROMETHEUS)))
    assert f"SUCCESS: {len(list(rule_queries()))} rules found" in output


def test_promtool_rule_tests_pass_and_cover_every_alert() -> None:
    tests = sorted((PROMETHEUS / "tests").glob("*.yml"))
    assert "SUCCESS" in run_promtool("test", "rules", *(str(t.relative_to(PROMETHEUS)) for t in tests))
    tested = {case["alertname"] for path in tests
              for group in yaml.safe_load(path.read_text())["tests"] for case in group.get("alert_rule_test", [])
              if any(expected for expected in case.get("exp_alerts") or [])}
    alerts = {q.source.removeprefix("alert ") for q in rule_queries() if q.kind == "alert"}
    assert alerts - tested == set(), "alerts without a case that makes them fire"


def test_the_alerts_the_issue_asks_for_exist() -> None:
    alerts = {q.source.removeprefix("alert ") for q in rule_queries() if q.kind == "alert"}
    assert alerts >= {"HxpLlmTargetDown", "HxpLlmEngineFailed", "HxpLlmSloAttainmentLow", "HxpLlmTimeToFirstTokenHigh",
                      "HxpLlmQueueSaturating", "HxpLlmQueueFullRejections", "HxpLlmMemoryNearLimit",
                      "HxpLlmModelLoadSlow"}
    for rule in yaml.safe_load(RULES.read_text())["groups"][1]["rules"]:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def exported_sample_names() -> set[str]:
    names = set()
    registry = ServiceMetrics(OpenChat35Config()).registry
    KeyMetrics("openchat-3.5", registry)  # the per-key counters build_app adds to the same registry
    for family in registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
        names |= {family.name + suffix for suffix in suffixes}
    return names


def test_every_openchat_metric_named_is_exported() -> None:
    exported = exported_sample_names()
    recorded = {q.source.removeprefix("record ") for q in rule_queries() if q.kind == "record"}
    named = {metric_name(s) for q in shipped_queries("m") for s in selectors(q.expr)}
    unknown = {n for n in named if n.startswith("openchat_") and n not in exported}
    assert unknown == set(), "metric names the service does not export (typo?)"
    assert {n for n in named if n.startswith("hxp_llm:")} <= recorded
    assert {n.split(":")[0] for n in named if ":" in n} <= {"vllm", "hxp_llm"}


def test_selector_and_operand_extraction() -> None:
    expr = ('(sum by (model) (rate(a_total{x="1"}[5m])) or sum by (model) (rate(b_total[5m])) * 0)'
            ' / on (model) group_left max without (le) (c{y=~"a|b"})')
    assert selectors(expr) == ['a_total{x="1"}', "b_total", 'c{y=~"a|b"}']
    assert comparison_operands("x:ratio > 0.9") == ["x:ratio"]
    assert comparison_operands("p95 > on (model) max by (model) (target)") == ["p95", "max by (model) (target)"]
    assert comparison_operands('max_over_time(s{state="failed"}[5m]) == 1') == ['max_over_time(s{state="failed"}[5m])']
    assert comparison_operands('absent(up{job="j"})') == ['up{job="j"}']
    assert comparison_operands('a{l=">"} / b') == ['a{l=">"} / b']


def test_grafana_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] == "hxp-llm-overview"
    assert board["title"]
    assert isinstance(board["schemaVersion"], int)
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] >= 0
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["type"] == "query"


def test_every_dashboard_query_filters_on_the_model_variable() -> None:
    for query in dashboard_queries():
        if query.kind == "variable":  # the variable lists the models; it cannot filter on itself
            continue
        for selector in selectors(query.expr):
            name = metric_name(selector)
            if name.startswith("openchat_"):
                assert 'model=~"$model"' in selector, (query.source, selector)
            elif name.startswith("vllm:"):
                assert 'model_name=~"$model"' in selector, (query.source, selector)
            else:
                assert selector == 'up{job="hxp-llm"}', (query.source, selector)


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    source = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [datasource] = source["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "hxp-llm.yml").read_text())
    [entry] = provider["providers"]
    assert entry["type"] == "file"
    assert entry["options"]["path"].startswith("/")
    assert DASHBOARD.parent == GRAFANA / "dashboards"


def test_scrape_targets_are_the_compose_service_names_and_the_rules_job() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["job_name"] == "hxp-llm"
    for query in rule_queries():
        for selector in selectors(query.expr):
            if metric_name(selector) == "up":
                assert selector == 'up{job="hxp-llm"}'
    [dns] = job["dns_sd_configs"]
    assert dns["port"] == 11403
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    llm_services = {name for name, service in compose["services"].items()
                    if any(p in ("gpu", "cpu") for p in service.get("profiles", []))}
    assert set(dns["names"]) == llm_services
