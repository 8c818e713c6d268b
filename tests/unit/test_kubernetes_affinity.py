"""deploy/kubernetes/session-affinity: the Ingress passes the API schema and routes as HAProxy does
(the same session header, the same bounded-load factor, to the Service's API port)."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml
from test_kubernetes import KUBERNETES, KUBERNETES_VERSIONS
from test_scaling import HAPROXY_DIR, directive, parse_haproxy

INGRESS = KUBERNETES / "session-affinity" / "ingress.yaml"
PREFIX = "nginx.ingress.kubernetes.io/"


@pytest.fixture(scope="module")
def ingress() -> dict:
    return yaml.safe_load(INGRESS.read_text(encoding="utf-8"))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_ingress_passes_the_api_schema(ingress, version):
    kubernetes_validate.validate(ingress, version, strict=True)


def test_it_routes_to_the_services_api_port(ingress):
    service = yaml.safe_load((KUBERNETES / "base" / "service.yaml").read_text(encoding="utf-8"))
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/"
    assert path["backend"]["service"]["name"] == service["metadata"]["name"]
    assert path["backend"]["service"]["port"]["name"] in {port["name"] for port in service["spec"]["ports"]}


def test_it_hashes_on_haproxys_session_header_with_the_same_bounded_load(ingress):
    haproxy = parse_haproxy((HAPROXY_DIR / "haproxy.cfg").read_text(encoding="utf-8"))
    annotations = ingress["metadata"]["annotations"]
    first_key = next(words[2] for words in haproxy["frontend openai"]
                     if words[:2] == ["http-request", "set-var(txn.session_key)"])
    header = first_key.removeprefix("req.hdr(").removesuffix(")")
    # nginx names a request header $http_ + its name in lower case, dashes as underscores.
    assert annotations[PREFIX + "upstream-hash-by"] == "$http_" + header.lower().replace("-", "_")
    factor = int(directive(haproxy["backend sessions"], "hash-balance-factor")[0])
    assert float(annotations[PREFIX + "upstream-hash-by-balance-factor"]) == factor / 100
    # Streams pass unbuffered and are not cut between tokens.
    assert annotations[PREFIX + "proxy-buffering"] == "off"
    assert int(annotations[PREFIX + "proxy-read-timeout"]) >= 120
