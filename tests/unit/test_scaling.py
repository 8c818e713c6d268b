"""The compose `scale` profile and its HAProxy: the balancer's health checks, retries, timeouts and
limits agree with the settings the replicas run with, and the profile wires them together.

HAProxy itself checks the syntax (`haproxy -c` while scripts/build-haproxy-image builds the image);
tests/container/test_scale.py runs it for real.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config
from support.compose_files import compose_defaults, read_env_file

REPO_ROOT = Path(__file__).resolve().parents[2]
HAPROXY_DIR = REPO_ROOT / "deploy" / "haproxy"
REPLICA_SERVICE = "openchat-3.5-replica"
LB_SERVICE = "openchat-3.5-lb"
CPU_SERVICE = "openchat-3.5-cpu"
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_haproxy(text: str) -> dict[str, list[list[str]]]:
    """Sections ("global", "defaults", "backend replicas", ...) -> their directives as word lists."""
    sections: dict[str, list[list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        words = line.split()
        if not raw[0].isspace():
            current = " ".join(words)
            assert current not in sections, f"section {current} appears twice"
            sections[current] = []
        else:
            assert current is not None, f"directive outside a section: {raw!r}"
            sections[current].append(words)
    return sections


def directive(section: list[list[str]], *prefix: str) -> list[str]:
    found = [words[len(prefix):] for words in section if words[:len(prefix)] == list(prefix)]
    assert len(found) == 1, f"{' '.join(prefix)}: expected once, found {found}"
    return found[0]


def duration(value: str) -> float:
    """HAProxy time format: a number in milliseconds unless a unit follows."""
    match = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", value)
    assert match, f"not a HAProxy duration: {value}"
    return int(match[1]) * (_UNITS[match[2]] if match[2] else 1e-3)


def server_options(words: list[str]) -> dict[str, str]:
    """`check inter 1s fall 1 ...` -> {"check": "", "inter": "1s", "fall": "1", ...}."""
    flags = {"check", "backup", "disabled"}
    options: dict[str, str] = {}
    i = 0
    while i < len(words):
        if words[i] in flags:
            options[words[i]] = ""
            i += 1
        else:
            options[words[i]] = words[i + 1]
            i += 2
    return options


@pytest.fixture(scope="module")
def haproxy() -> dict[str, list[list[str]]]:
    return parse_haproxy((HAPROXY_DIR / "haproxy.cfg").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services() -> dict[str, dict]:
    document = compose_defaults(yaml.safe_load((REPO_ROOT / "compose.yaml").read_text(encoding="utf-8")))
    assert isinstance(document, dict)
    return document["services"]


@pytest.fixture(scope="module")
def replica(services) -> OpenChat35Config:
    """The settings a replica runs with: its env files, then its `environment` (compose's order)."""
    service = services[REPLICA_SERVICE]
    environ: dict[str, str] = {}
    for env_file in service["env_file"]:
        environ |= read_env_file(REPO_ROOT / env_file)
    environ |= {key: str(value) for key, value in service["environment"].items()}
    return OpenChat35Config.load(environ=environ).config


def test_parser_reads_sections_and_directives():
    parsed = parse_haproxy("global\n    maxconn 10  # comment\n# note\nbackend b\n    balance leastconn\n")
    assert parsed == {"global": [["maxconn", "10"]], "backend b": [["balance", "leastconn"]]}
    assert duration("1s") == 1
    assert duration("500ms") == 0.5
    assert duration("2000") == 2
    with pytest.raises(AssertionError):
        parse_haproxy("    maxconn 10\n")


def test_clients_reach_the_balancer_on_the_service_port(haproxy, services, replica):
    assert directive(haproxy["frontend openai"], "bind") == [f":{replica.port}"]
    assert directive(haproxy["frontend openai"], "default_backend") == ["replicas"]
    # On loopback unless HXP_LLM_ADDRESS opens it, like the single service (the API is open without a key).
    assert f"127.0.0.1:{replica.port}:{replica.port}" in services[LB_SERVICE]["ports"]
    # Replicas publish nothing: a client that bypasses the balancer loses the retries.
    assert services[REPLICA_SERVICE]["ports"] == []


def test_replicas_are_discovered_by_their_compose_service_name(haproxy, replica):
    backend = haproxy["backend replicas"]
    prefix, count, address = directive(backend, "server-template")
    host, _, port = address.partition(":")
    assert host == REPLICA_SERVICE
    assert int(port) == replica.port
    low, _, high = count.partition("-")
    assert int(high or low) - int(low if high else 1) + 1 >= 2
    options = server_options(directive(backend, "default-server"))
    assert directive(haproxy["resolvers docker"], "nameserver", "dns") == ["127.0.0.11:53"]
    assert options["resolvers"] == "docker"
    # Start without an address (replicas may still be starting) rather than fail the config.
    assert options["init-addr"] == "none"


def test_balancing_is_least_outstanding_requests(haproxy):
    assert directive(haproxy["backend replicas"], "balance") == ["leastconn"]


def test_a_session_key_picks_a_replica_by_bounded_load_consistent_hashing(haproxy):
    frontend, sessions = haproxy["frontend openai"], haproxy["backend sessions"]
    keys = [words for words in frontend if words[:2] == ["http-request", "set-var(txn.session_key)"]]
    # X-Session-ID first, then the API key; without either, backend replicas (least connections).
    assert [words[2] for words in keys] == ["req.hdr(X-Session-ID)", "req.hdr(Authorization)"]
    assert directive(frontend, "use_backend") == ["sessions", "if", "{", "var(txn.session_key)", "-m", "found", "}"]
    assert directive(sessions, "balance") == ["hash", "var(txn.session_key)"]
    # Consistent: a replica leaving (drain, failure) moves only its own sessions. Bounded load:
    # a hot session spills to the next replica on the ring instead of overloading one.
    assert directive(sessions, "hash-type") == ["consistent"]
    assert 125 <= int(directive(sessions, "hash-balance-factor")[0]) <= 200


def test_both_backends_serve_the_same_replicas_alike(haproxy):
    """The session backend differs only in how it picks a replica and in its share of maxconn."""
    def same_part(section: list[list[str]]) -> list[list[str]]:
        kept = [w for w in section if w[0] not in ("balance", "hash-type", "hash-balance-factor", "default-server")]
        options = server_options(directive(section, "default-server"))
        options.pop("maxconn")
        return [*kept, sorted(options.items())]

    assert same_part(haproxy["backend sessions"]) == same_part(haproxy["backend replicas"])


def test_active_check_takes_a_draining_replica_out_within_seconds_but_not_a_busy_one(haproxy):
    backend = haproxy["backend replicas"]
    assert ["option", "httpchk"] in backend
    send = directive(backend, "http-check", "send")
    assert send[send.index("uri") + 1] == "/health"
    assert directive(backend, "http-check", "expect") == ["status", "200"]
    options = server_options(directive(backend, "default-server"))
    assert "check" in options
    # A draining replica (503 at once) is out after `fall` failed checks: the first within `inter`,
    # the rest `fastinter` apart.
    fall = int(options["fall"])
    assert duration(options["inter"]) + (fall - 1) * duration(options["fastinter"]) <= 3
    # One late answer from a busy replica is not enough to take it out (it may be the last one).
    assert fall >= 2
    assert int(options["rise"]) >= 2  # a replica comes back only when it answers 200 twice
    # Passive: only broken connections on live traffic count. A 5xx means overload, and marking an
    # overloaded replica down moves its load onto the others (or empties the pool).
    assert options["observe"] == "layer4"
    assert options["on-error"] == "mark-down"


def test_only_requests_that_never_started_are_retried(haproxy):
    backend = haproxy["backend replicas"]
    retry_on = set(directive(backend, "retry-on"))
    # Refusals the service sends before any byte (503 draining, not ready, queue_timeout) and
    # connections that never got an answer.
    assert retry_on == {"conn-failure", "empty-response", "503"}
    # Never: a timeout or 5xx after work started (504 request_timeout, 500 engine error, a
    # response-timeout on a stream that is still being generated).
    assert not retry_on & {"504", "500", "response-timeout", "junk-response", "all-retryable-errors"}
    assert directive(backend, "option", "redispatch") == ["1"]  # every retry goes to another replica
    assert 1 <= int(directive(backend, "retries")[0]) <= 3
    assert ["option", "http-buffer-request"] in backend


def test_a_replica_never_has_to_refuse_with_429(haproxy, replica):
    # HAProxy 2.6 cannot retry a 429, so it must never see one: it holds back what a replica's
    # slots and queue could not take, and queues the rest itself.
    # The two backends reach the same replicas: their shares add up to what one replica takes.
    shares = [int(server_options(directive(haproxy[backend], "default-server"))["maxconn"])
              for backend in ("backend replicas", "backend sessions")]
    assert all(share > 0 for share in shares)
    assert sum(shares) == replica.concurrent_users + replica.max_queue_size
    assert duration(directive(haproxy["defaults"], "timeout", "queue")[0]) == replica.queue_timeout_seconds


def test_timeouts_are_long_enough_for_a_stream_and_a_full_answer(haproxy, replica):
    defaults = haproxy["defaults"]
    for side in ("client", "server"):
        limit = duration(directive(defaults, "timeout", side)[0])
        # A stream sends something every stream_ping_seconds at worst; a non-streamed answer
        # arrives within connection_timeout_seconds (queue wait included) or the replica says 504.
        assert limit > replica.stream_ping_seconds * 2, side
        assert limit > replica.connection_timeout_seconds, side


def test_retried_requests_fit_the_buffer(haproxy, replica):
    # A request larger than one buffer is forwarded but never replayed. A prompt filling the whole
    # context is about 4 bytes of text per token, twice that once JSON-escaped.
    assert int(directive(haproxy["global"], "tune.bufsize")[0]) >= replica.max_model_len * 4 * 2


def test_own_errors_are_openai_shaped_and_503_says_when_to_retry(haproxy):
    errors = [words for words in haproxy["backend replicas"] if words[0] == "http-error"]
    by_status = {words[2]: words for words in errors}
    assert set(by_status) == {"502", "503", "504"}
    for words in errors:
        assert words[words.index("content-type") + 1] == "application/json"
        body = " ".join(words[words.index("string") + 1:]).strip("'")
        assert yaml.safe_load(body)["error"]["code"]
    assert by_status["503"][by_status["503"].index("Retry-After") + 1].isdigit()


def test_stats_page_and_prometheus_endpoint_are_exposed(haproxy, services):
    stats = haproxy["frontend stats"]
    assert directive(stats, "bind") == [":8404"]
    assert directive(stats, "stats", "uri") == ["/stats"]
    assert ["http-request", "use-service", "prometheus-exporter", "if", "{", "path", "/metrics", "}"] in stats
    assert any(port.endswith(":8404") for port in services[LB_SERVICE]["ports"])


def test_replicas_run_like_the_cpu_demo(services):
    replica_service, cpu = services[REPLICA_SERVICE], services[CPU_SERVICE]
    for key in ("image", "volumes", "mem_limit", "cpus", "shm_size", "healthcheck", "stop_grace_period"):
        assert replica_service[key] == cpu[key], key
    # The demo's own settings, plus what a replica behind the balancer needs (client address, keep-alive).
    assert replica_service["env_file"] == [*cpu["env_file"], "config/container-replica.env"]
    assert replica_service["profiles"] == services[LB_SERVICE]["profiles"] == ["scale"]
    assert int(replica_service["deploy"]["replicas"]) >= 2


def test_balancer_soft_stop_outlasts_a_replica_drain(haproxy, services, replica):
    hard_stop = duration(directive(haproxy["global"], "hard-stop-after")[0])
    assert hard_stop > replica.drain_timeout_seconds
    grace = services[LB_SERVICE]["stop_grace_period"]
    assert duration(grace) > hard_stop
    dockerfile = (HAPROXY_DIR / "Dockerfile").read_text(encoding="utf-8")
    assert "STOPSIGNAL SIGUSR1" in dockerfile  # HAProxy's soft stop; SIGTERM would cut streams
    assert re.search(r"^USER haproxy$", dockerfile, re.MULTILINE)
