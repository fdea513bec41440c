"""/metrics, the alert rules and the dashboard, checked with Prometheus's own tools.

A real gateway (with the in-process Bybit simulator, so exchange metrics have
values) gets a few clients, subscriptions, an error reply, auth failures and
a close code, then:

* ``promtool check metrics`` lints its /metrics exposition;
* a real Prometheus server (Debian's ``prometheus`` package, 2.42) scrapes it
  every second and evaluates ``metrics/alerts.yml``: the rules load, evaluate
  without error, and none is pending or firing against a healthy gateway;
* ``promtool check rules`` and ``promtool test rules metrics/alerts_test.yml``;
* every alert has a ``runbook_url`` whose anchor is a heading of the
  "Alert runbooks" section of ``docs/operations.md``;
* every PromQL expression of ``metrics/grafana-dashboard.json`` names only
  series the scrape really has, selects ``job=~"$job"``, and evaluates on that
  Prometheus; every panel takes its data source from the ``datasource``
  variable and has a unit that fits its queries.

Without ``promtool``/``prometheus`` on PATH these tests skip, or fail when
``GATEWAY_REQUIRE_TOOLS=1`` (CI sets it; ``.ci/run`` installs the package).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import websocket
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from metrics.definitions import Metrics, build
from tests.harness import ROOT, Client, GatewayProcess
from tests.tools import require_tool

ALERTS = ROOT / "metrics" / "alerts.yml"
ALERT_TESTS = ROOT / "metrics" / "alerts_test.yml"
DASHBOARD = ROOT / "metrics" / "grafana-dashboard.json"
DOCS = (ROOT / "docs" / "metrics.md", ROOT / "docs" / "operations.md")
RUNBOOKS = ROOT / "docs" / "operations.md"
# Every runbook_url is this + "#" + the alert's heading anchor. A placeholder operators
# replace when installing the rules (docs/metrics.md says how): Alertmanager needs an
# absolute URL, and the repository's own address is not known here.
RUNBOOK_BASE = "https://git.example.com/trading-ws-gateway/blob/main/docs/operations.md"
# What every panel and query of the dashboard uses: the `datasource` variable, which
# works with file provisioning (an `__inputs` placeholder is resolved only by the import dialog).
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
JOB = "ws-gateway"  # the job name alerts.yml expects
WAIT = 15.0  # every wait below is bounded by this

# Series Prometheus adds to every scrape, with their labels.
SCRAPE_SERIES = {name: {"job", "instance"} for name in (
    "up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
    "scrape_series_added")}
# Which sample names each metric type exposes (prometheus-client's text format).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "unknown": ("",),
}


# -- tools ----------------------------------------------------------------------------------------

def _tool(name: str) -> str:
    return require_tool(name, install="Debian's `prometheus` package: apt-get install prometheus; .ci/run does it")


@pytest.fixture(scope="module")
def promtool() -> str:
    return _tool("promtool")


@pytest.fixture(scope="module")
def prometheus_bin() -> str:
    return _tool("prometheus")


def run_promtool(promtool: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], input=stdin, capture_output=True, text=True, timeout=30, cwd=ROOT)


def wait_until(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` with ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, ValueError) as exc:  # server not up yet, connection refused, bad JSON
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")


def http_get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.headers.get("Content-Type", ""), resp.read().decode()


# -- the gateway and its traffic ------------------------------------------------------------------

@pytest.fixture(scope="module")
def gw() -> Iterator[GatewayProcess]:
    with GatewayProcess({"MARKET_SOURCE": "simulator", "POPULAR_PAIRS": "BTCUSDT"}) as g:
        wait_until(lambda: exchange_connected(http_get(g.http + "/metrics")[1]) >= {"spot", "linear"},
                   "both simulated exchange streams connected")
        clients = make_traffic(g)
        yield g
        for c in clients:
            c.close()


def exchange_connected(text: str) -> set[str]:
    return {s.labels["category"] for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "ws_exchange_connected" and s.value == 1}


def make_traffic(g: GatewayProcess) -> list[Client]:
    """Clients that stay connected for the module, plus one of each failure the metrics count."""
    md = g.connect("metrics-md")
    assert md.recv()["type"] == "connection"
    reply = md.request({"type": "subscribe", "channel": "market-data",
                        "data": {"symbol": "BTCUSDT", "streams": ["ticker", "orderbook"]}})
    assert reply["type"] == "subscribed", reply
    streams: set[str] = set()
    while streams != {"ticker", "orderbook.50"}:
        streams.add(md.recv_until(lambda m: m["type"] == "data", timeout=10)["stream"])

    private = g.connect("metrics-private")
    assert private.recv()["type"] == "connection"
    reply = private.request({"type": "subscribe", "channel": "positions"})
    assert reply["type"] == "subscribed", reply
    error = private.request({"type": "no-such-type"})  # an error reply
    assert error["type"] == "error", error

    for token in ("not-a-jwt", g.token("metrics-expired", ttl=-3600)):  # auth failures: malformed, expired
        with pytest.raises(websocket.WebSocketBadStatusException) as rejected:
            websocket.create_connection(f"{g.ws_url}?token={token}", timeout=5)
        assert rejected.value.status_code == 401

    binary = g.connect("metrics-binary")  # a close code: 1003 for a binary frame
    binary.recv()
    binary.ws.send_binary(b"\x00")
    assert binary.expect_close()[0] == 1003
    binary.close()
    return [md, private]


@pytest.fixture(scope="module")
def scrape(gw: GatewayProcess) -> tuple[str, str]:
    """(Content-Type, body) of /metrics once the traffic above is counted."""
    def counted() -> tuple[str, str] | None:
        content_type, text = http_get(gw.http + "/metrics")
        needed = ('ws_errors_sent_total{code="unknown_type"}', 'ws_auth_failures_total{reason="expired"}',
                  'ws_close_codes_total{code="1003"}', 'ws_messages_sent_total{channel="market-data",type="data"}')
        return (content_type, text) if all(n in text for n in needed) else None
    return wait_until(counted, "the test traffic in /metrics")


# -- reading expositions and PromQL ---------------------------------------------------------------

def exposed_series(text: str) -> dict[str, tuple[str, str]]:
    """Every series name Prometheus can hold from this exposition -> (family, type).

    A family's type decides its sample names: a counter ``x`` is only ``x_total``
    and ``x_created``, a histogram ``h`` only ``h_bucket``/``h_count``/``h_sum``/
    ``h_created`` (never ``h`` itself), a gauge only its own name. Families with
    no child yet (a labelled counter never incremented) still count.
    """
    out: dict[str, tuple[str, str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES[family.type]:
            out[family.name + suffix] = (family.name, family.type)
        for sample in family.samples:
            out.setdefault(sample.name, (family.name, family.type))
    return out


def metric_families(text: str) -> list[Any]:
    """The exposition's metric families. The 0.0.4 text parser also returns each
    counter's and histogram's ``_created`` samples as a family of their own: left out."""
    families = list(text_string_to_metric_families(text))
    created = {f.name + "_created" for f in families if f.type in ("counter", "histogram", "summary")}
    return [f for f in families if f.name not in created]


def sampled_series(text: str) -> set[str]:
    """Series names that have at least one sample in this exposition."""
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_MATCHERS = re.compile(r"\{([^}]*)\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
             "bool", "inf", "nan", "atan2"}


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) an expression refers to. Strings, ranges and
    grouping clauses are removed first; a word followed by ``(`` is a function."""
    text = _STRING.sub('""', expr)
    labels = {m.group(1) for block in _MATCHERS.findall(text)
              for m in re.finditer(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", block)}
    labels |= {word.strip() for group in _GROUPING.findall(text) for word in group.split(",") if word.strip()}
    text = _GROUPING.sub(" ", _MATCHERS.sub(" ", re.sub(r"\[[^\]]*\]", " ", text)))
    text = re.sub(r"\boffset\s+\S+", " ", text)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][\w:]*", text):
        before = text[m.start() - 1] if m.start() else " "
        if before.isdigit() or before in ".$" or m.group(0).lower() in _KEYWORDS:
            continue  # 1e-9, 0.5, $variables, keywords
        if text[m.end():].lstrip().startswith("("):
            continue  # a function call
        names.add(m.group(0))
    return names, labels


def label_names(text: str) -> dict[str, set[str]]:
    """Label names of each series name: from metrics.definitions (families with no
    sample yet included), plus ``le`` on buckets and the target labels."""
    by_family: dict[str, set[str]] = {}
    metrics = build()
    for f in fields(Metrics):
        collector = getattr(metrics, f.name)
        if f.name != "registry":  # prometheus-client has no public accessor for a family's label names
            by_family[collector._name] = set(collector._labelnames)
    out = {}
    for series, (family, _type) in exposed_series(text).items():
        bucket = {"le"} if series.endswith("_bucket") else set()
        out[series] = by_family.get(family, set()) | {"job", "instance"} | bucket
    return out | SCRAPE_SERIES


def test_promql_names_and_suffix_rules() -> None:
    names, labels = promql_names(
        'histogram_quantile(0.99, sum by (le, kind) (rate(h_bucket{job="a", x=~"$v"}[$__rate_interval])))'
        ' / on (instance) group_left (kind) (c_total offset 5m) > 1e-9 or vector(0) and g unless absent(up)')
    assert names == {"h_bucket", "c_total", "g", "up"}
    assert labels == {"le", "kind", "job", "x", "instance"}
    text = ("# TYPE c_total counter\nc_total 1.0\nc_created 5.0\n# TYPE g gauge\ng 2.0\n"
            "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 0.0\nh_count 0.0\nh_sum 0.0\n"
            "# TYPE e_total counter\n")  # a labelled counter with no child yet
    series = exposed_series(text)
    assert set(series) == {"c_total", "c_created", "g", "h_bucket", "h_count", "h_sum", "h_created", "e_total",
                           "e_created"}
    for wrong in ("c", "g_total", "h", "h_total", "e", "g_bucket"):
        assert wrong not in series


# -- the exposition -------------------------------------------------------------------------------

def test_metrics_endpoint_passes_promtool_lint(scrape: tuple[str, str], promtool: str) -> None:
    content_type, text = scrape
    assert content_type == CONTENT_TYPE_LATEST
    result = run_promtool(promtool, "check", "metrics", stdin=text)
    assert (result.returncode, result.stdout + result.stderr) == (0, ""), result


def test_every_defined_metric_is_exposed_with_its_type(scrape: tuple[str, str]) -> None:
    defined = {(f.name, f.type) for f in build().registry.collect()}
    exposed = {(f.name, f.type) for f in metric_families(scrape[1])}
    assert defined <= exposed, defined - exposed


def test_every_metric_is_documented(scrape: tuple[str, str]) -> None:
    docs = "\n".join(p.read_text() for p in DOCS if p.exists())
    assert docs, f"none of {[str(p.relative_to(ROOT)) for p in DOCS]} exists"
    missing = []
    for family in metric_families(scrape[1]):
        exposed_name = family.name + ("_total" if family.type == "counter" else "")
        if f"`{exposed_name}`" not in docs:
            missing.append(exposed_name)
    assert not missing, f"metrics not described in docs/metrics.md: {missing}"


# -- a real Prometheus ----------------------------------------------------------------------------

class Prometheus:
    def __init__(self, binary: str, target: str) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="ws-gateway-prometheus-")
        base = Path(self.dir.name)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = base / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
        }))
        self.log = open(base / "prometheus.log", "w")  # closed in stop()
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={base / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=base)

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        _, body = http_get(f"http://127.0.0.1:{self.port}/api/v1/{path}" + (f"?{query}" if query else ""))
        reply = json.loads(body)
        assert reply["status"] == "success", reply
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def logs(self) -> str:
        self.log.flush()
        return (Path(self.dir.name) / "prometheus.log").read_text()[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        self.dir.cleanup()


@pytest.fixture(scope="module")
def prom(prometheus_bin: str, gw: GatewayProcess, scrape: tuple[str, str]) -> Iterator[Prometheus]:
    server = Prometheus(prometheus_bin, f"127.0.0.1:{gw.port}")
    try:
        try:
            # Three scrapes, so that rate() over any window has two points or more.
            wait_until(lambda: server.query(f'count_over_time(up{{job="{JOB}"}}[1m]) >= 3'),
                       "three scrapes of the gateway")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nprometheus log:\n{server.logs()}") from None
        yield server
    finally:
        server.stop()


def test_prometheus_scrapes_the_gateway(prom: Prometheus, gw: GatewayProcess) -> None:
    [up] = prom.query(f'up{{job="{JOB}"}}')
    assert up["metric"]["instance"] == f"127.0.0.1:{gw.port}" and up["value"][1] == "1"
    [opened] = prom.query("ws_connections_opened_total")
    assert float(opened["value"][1]) >= 3  # two clients that stay, one closed with 1003
    connected = {r["metric"]["category"]: r["value"][1] for r in prom.query("ws_exchange_connected")}
    assert connected == {"spot": "1", "linear": "1"}
    # The restart alerts watch the process start time (not a `_created` series, which
    # PROMETHEUS_DISABLE_CREATED_SERIES switches off): it must reach Prometheus.
    [start] = prom.query(f'process_start_time_seconds{{job="{JOB}"}}')
    assert time.time() - 600 < float(start["value"][1]) <= time.time(), start


def test_alert_rules_evaluate_and_stay_quiet_on_a_healthy_gateway(prom: Prometheus, scrape: tuple[str, str]) -> None:
    def rules() -> list[dict[str, Any]]:
        return [r for g in prom.api("rules")["groups"] for r in g["rules"]]

    started = time.time()
    # Every rule evaluated again after this point (the fixture already waited for three scrapes).
    wait_until(lambda: all(_rfc3339(r["lastEvaluation"]) > started + 1 for r in rules()), "rule evaluations")
    names = label_names(scrape[1])
    for rule in rules():
        alert = rule["name"]
        assert rule["type"] == "alerting", alert
        assert rule["health"] == "ok", (alert, rule.get("lastError"))
        assert rule["labels"].get("severity") in {"critical", "warning"}, alert
        assert rule["annotations"].get("summary") and len(rule["annotations"].get("description", "")) > 80, alert
        assert rule["annotations"].get("runbook_url") == f"{RUNBOOK_BASE}#{github_anchor(alert)}", alert
        assert "_created" not in rule["query"], alert  # can be switched off: never alert on it
        used, labels = promql_names(rule["query"])
        assert used <= set(names), (alert, used - set(names))
        known = set().union(*(names[n] for n in used))
        assert labels <= known, (alert, labels - known)
    alerts = prom.api("alerts")["alerts"]
    assert alerts == [], [(a["labels"]["alertname"], a["state"]) for a in alerts]


def _rfc3339(stamp: str) -> float:
    # "2026-11-26T15:33:27.295123456Z": Python wants at most 6 fractional digits
    stamp = re.sub(r"(\.\d{6})\d+", r"\1", stamp).replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp()


# -- rules with promtool --------------------------------------------------------------------------

def test_promtool_check_rules(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(ALERTS))
    rules = re.split(r"^\s*- alert:", ALERTS.read_text(), flags=re.M)[1:]
    assert result.returncode == 0, result
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout, result
    for rule in rules:  # `for:` written out on each (0m on the restart alerts, on purpose)
        assert re.search(r"^\s+for: \d+[smh]$", rule, re.M), rule.split()[0]


def test_promtool_alert_unit_tests(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    defined = set(re.findall(r"^\s*- alert: (\w+)", ALERTS.read_text(), re.M))
    assert tested == defined, defined ^ tested


# -- runbooks -------------------------------------------------------------------------------------

def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading (github-slugger): the text as rendered
    (link targets and backticks gone), lower case, everything but letters, digits, ``_``,
    ``-`` and spaces removed, spaces turned into ``-``. GitLab and Gitea agree for
    headings like ours."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def markdown_headings(text: str) -> list[tuple[int, str, str]]:
    """(level, text, anchor) of every ATX heading outside code fences, in order; a repeated
    anchor gets ``-1``, ``-2``... as on GitHub."""
    out, seen, fence = [], {}, None
    for line in text.splitlines():
        marker = re.match(r"\s{0,3}(`{3,}|~{3,})", line)
        if marker:
            if fence is None:
                fence = marker.group(1)[0]
            elif marker.group(1)[0] == fence:
                fence = None
            continue
        heading = re.match(r"\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$", line)
        if fence is None and heading:
            anchor = github_anchor(heading.group(2))
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            out.append((len(heading.group(1)), heading.group(2), anchor if not count else f"{anchor}-{count}"))
    return out


def runbook_urls() -> dict[str, str | None]:
    """alert name -> its runbook_url annotation, read from alerts.yml (no YAML library in the
    project: each rule is a `- alert:` block; the Prometheus test checks the parsed rules too)."""
    out: dict[str, str | None] = {}
    for block in re.split(r"^\s*- alert: ", ALERTS.read_text(), flags=re.M)[1:]:
        name = block.split()[0]
        url = re.search(r"^\s+runbook_url:\s*['\"]?([^'\"\s]+)['\"]?\s*$", block, re.M)
        out[name] = url.group(1) if url else None
    return out


def test_github_anchor() -> None:
    assert github_anchor("WsGatewayDown") == "wsgatewaydown"
    assert github_anchor("Alert runbooks") == "alert-runbooks"
    assert github_anchor("Reading the supervisor's log") == "reading-the-supervisors-log"
    assert github_anchor("(a) burst fan-out, one symbol") == "a-burst-fan-out-one-symbol"
    assert github_anchor("Tickers (`tickers.{symbol}`)") == "tickers-tickerssymbol"
    assert github_anchor("Alert rules (`metrics/alerts.yml`)") == "alert-rules-metricsalertsyml"
    text = "# A\n```\n# not a heading\n```\n## B b\n### B b\n"
    assert markdown_headings(text) == [(1, "A", "a"), (2, "B b", "b-b"), (3, "B b", "b-b-1")]


def test_every_alert_links_to_its_runbook() -> None:
    urls = runbook_urls()
    assert len(urls) == len(re.findall(r"^\s*- alert: ", ALERTS.read_text(), re.M)) >= 13
    headings = markdown_headings(RUNBOOKS.read_text())
    anchors = {anchor for _level, _text, anchor in headings}
    # The `### <AlertName>` headings of the "Alert runbooks" section (up to the next `##`).
    [start] = [i for i, (level, text, _a) in enumerate(headings) if level == 2 and text == "Alert runbooks"]
    section = []
    for level, text, anchor in headings[start + 1:]:
        if level <= 2:
            break
        if level == 3:
            section.append((text, anchor))
    for alert, url in urls.items():
        assert url, f"{alert} has no runbook_url annotation"
        parts = urllib.parse.urlsplit(url)
        assert parts.scheme == "https" and parts.netloc, f"{alert}: {url} is not an absolute URL"
        base, _, anchor = url.partition("#")
        assert base == RUNBOOK_BASE, f"{alert}: {base} is not the documented base"
        assert anchor in anchors, f"{alert}: no heading of docs/operations.md has the anchor #{anchor}"
        assert (alert, anchor) in section, f"{alert}: #{anchor} is not its section under 'Alert runbooks'"
    assert sorted(text for text, _a in section) == sorted(urls), "one runbook section per alert, no other"
    assert RUNBOOK_BASE in (ROOT / "docs" / "metrics.md").read_text(), "docs/metrics.md names the base"


def test_no_alert_relies_on_created_series() -> None:
    # `_created` series disappear with PROMETHEUS_DISABLE_CREATED_SERIES=True; the
    # restart alerts use process_start_time_seconds of the gateway's job.
    exprs = re.findall(r"^\s+expr: (\|\n(?:\s{10,}.*\n)+|.*\n)", ALERTS.read_text(), re.M)
    assert len(exprs) == len(runbook_urls())
    assert not [e for e in exprs if "_created" in e], "an alert on a `_created` series"
    restarts = [e for e in exprs if "process_start_time_seconds" in e]
    assert len(restarts) == 2 and all(f'process_start_time_seconds{{job="{JOB}"}}' in e for e in restarts)


# -- the Grafana dashboard ------------------------------------------------------------------------

def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


# Grafana's variables as Grafana fills them for "All" and a short range: `job` has no
# custom "All" value (it expands to the jobs found), `instance` has ".+".
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".+", "$job": f"({JOB})"}


def grafana_fill(expr: str) -> str:
    concrete = re.sub(r"\$\{(\w+)\}", r"$\1", expr)
    for variable, value in GRAFANA_VARIABLES.items():
        concrete = concrete.replace(variable, value)
    assert "$" not in concrete, f"a variable the test does not fill: {expr}"
    return concrete


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    text = DASHBOARD.read_text()
    dashboard = json.loads(text)
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["id"] is None and dashboard["uid"]
    # Nothing only the import dialog resolves: file provisioning loads the file as it is.
    assert "__inputs" not in dashboard and "${DS_" not in text, "import-only data source placeholders"
    ids = [p["id"] for p in dashboard_panels(dashboard)]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
    for panel in dashboard_panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"] == DATASOURCE, panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"] == DATASOURCE and target["refId"], panel["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables)[:1] == ["datasource"], "the data source variable comes first: the others use it"
    datasource = variables["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus"), datasource
    for name, variable in variables.items():
        if name != "datasource":
            assert variable["type"] == "query" and variable["datasource"] == DATASOURCE, name
    job = variables["job"]
    assert job["multi"] and job["includeAll"] and "allValue" not in job, "All = the gateway jobs found"
    assert "$job" in variables["instance"]["definition"], "instances of the selected jobs"


_RATE_UNITS = {"ops", "reqps"}


def expected_units(expr: str) -> set[str] | None:
    """The units a panel showing ``expr`` may have; None when any count-like unit fits."""
    names, _labels = promql_names(expr)
    if "process_cpu_seconds_total" in names:
        return {"percentunit"}  # CPU seconds per second: the fraction of one core busy
    if "histogram_quantile(" in expr:
        [bucket] = {n for n in names if n.endswith("_bucket")}
        return {"s"} if "_seconds_" in bucket else {"bytes"} if "_bytes_" in bucket else None
    if re.search(r"\brate\(", expr):
        return {"Bps"} if any("bytes" in n for n in names) else _RATE_UNITS
    if re.search(r"\b(?:changes|increase|count|resets)\(", expr):
        return None  # counts of events or series
    if names and all(n.endswith("_seconds") for n in names):
        return {"s"}
    if names and all(n.endswith("_bytes") for n in names):
        return {"bytes"}
    return None


def test_dashboard_selects_the_job_everywhere_and_gives_units() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard_panels(dashboard):
        if panel["type"] == "row":
            continue
        title = panel["title"]
        expected = set()
        for target in panel["targets"]:
            expr = target["expr"]
            assert "$job" in expr, f"{title}: {expr}"
            # Every series the query reads is selected with job=~"$job", not just one of them.
            bare = _MATCHERS.sub("{}", _STRING.sub('""', expr))
            for name in promql_names(expr)[0]:
                word = rf"(?<![\w:$.]){re.escape(name)}(?![\w:])"
                selectors = re.findall(word + r"\s*\{([^}]*)\}", expr)
                with_job = [m for m in selectors if re.search(r'\bjob=~"\$job"', m)]
                assert len(with_job) == len(re.findall(word, bare)), f"{title}: {name} without job=~\"$job\""
            units = expected_units(expr)
            if units is not None:
                expected.add(frozenset(units))
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert unit, f"{title}: no unit (fieldConfig.defaults.unit)"
        assert len(expected) <= 1, f"{title}: queries of different units in one panel: {expected}"
        if expected:
            [allowed] = expected
            assert unit in allowed, f"{title}: unit {unit!r}, expected one of {sorted(allowed)}"
        if panel["type"] == "heatmap":  # the bucket axis has the unit of the histogram
            [bucket] = {n for t in panel["targets"] for n in promql_names(t["expr"])[0] if n.endswith("_bucket")}
            axis = "bytes" if "_bytes_" in bucket else "s" if "_seconds_" in bucket else "short"
            assert panel["options"]["yAxis"]["unit"] == axis, title


def test_dashboard_queries_name_real_series_and_evaluate(prom: Prometheus, scrape: tuple[str, str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    text = scrape[1]
    names = label_names(text)
    series = exposed_series(text)
    sampled = sampled_series(text) | {"up"}
    on_dashboard: set[str] = set()
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "datasource":
            continue
        query = re.fullmatch(r"label_values\((\w+)(\{[^}]*\})?, *(\w+)\)", variable["definition"])
        assert query, variable["definition"]
        metric, selector, label = query.groups()
        assert metric in names and label in names[metric], variable["definition"]
        # What Grafana asks Prometheus for the variable's values, with the variables it uses filled in.
        values = prom.api(f"label/{label}/values", **{"match[]": grafana_fill(metric + (selector or ""))})
        assert values, f"variable {variable['name']}: {variable['definition']} has no values"
    for title, expr in dashboard_exprs(dashboard):
        used, labels = promql_names(expr)
        assert used, (title, expr)
        assert used <= set(names), f"{title}: {sorted(used - set(names))} not in the scrape"
        known = set().union(*(names[n] for n in used))
        assert labels <= known, f"{title}: labels {sorted(labels - known)} not on {sorted(used)}"
        on_dashboard |= {series[n][0] for n in used if n in series}
        concrete = grafana_fill(expr)
        result = prom.query(concrete)
        if used <= sampled:  # every series it reads has samples: it must return something
            assert result, f"{title}: {concrete} returned nothing"
    # The standard process collectors' virtual memory, python_info
    # and GC object counts need no panel of their own.
    families = {f.name for f in metric_families(text)} - {
        "process_virtual_memory_bytes", "python_info",
        "python_gc_objects_collected", "python_gc_objects_uncollectable"}
    assert families <= on_dashboard, f"not on the dashboard: {sorted(families - on_dashboard)}"


# -- the per-connection queue ----------------------------------------------------------------------

def test_queue_bytes_are_sampled_per_connection(gw: GatewayProcess) -> None:
    """The liveness sweep samples every connection's queued bytes every 10 s (the module's
    two clients stay connected): the histogram the 4001 limit is read against. Last in the
    module, so the gateway has usually been up that long already."""
    def samples() -> float:
        for family in text_string_to_metric_families(http_get(gw.http + "/metrics")[1]):
            for sample in family.samples:
                if sample.name == "ws_connection_queue_bytes_count":
                    return sample.value
        return 0.0
    wait_until(lambda: samples() >= 2, "a sweep sampling ws_connection_queue_bytes")
