"""quadlet/ through Podman's own generator (5.x, from Debian trixie's podman package), as an operator
installs it: the GPU template, two instances with their own ports, and a CPU instance with the drop-in.

What runs for real: the generator (key names, drop-in merging, the podman command line it writes) and
`systemd-analyze verify` on its output where systemd is installed. What is emulated: systemd's
expansion of `%i` and `${VAR}` when it starts an instance (tests/support/quadlet.py), since no systemd
runs here. Podman itself (4.3 on bookworm) is not used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support.quadlet import (
    REPO,
    Instance,
    option_values,
    quadlet_binary,
    render,
    resolve_exec_start,
    service_section,
)

TEMPLATE = REPO / "quadlet" / "citadel-llm@.container"
CPU_DROP_IN = REPO / "quadlet" / "cpu-host.conf"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    quadlet = quadlet_binary()
    if quadlet is None:
        reason = "Podman's quadlet generator is not cached: run scripts/ensure-quadlet (as root)"
        if _in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    units = tmp_path_factory.mktemp("containers-systemd")
    shutil.copy(TEMPLATE, units / TEMPLATE.name)
    # Instances enabled as the documentation says: a symlink per instance; "demo" gets the CPU drop-in.
    for name in ("a", "b", "demo"):
        (units / f"citadel-llm@{name}.container").symlink_to(TEMPLATE.name)
    drop_ins = units / "citadel-llm@demo.container.d"
    drop_ins.mkdir()
    shutil.copy(CPU_DROP_IN, drop_ins / "10-cpu-host.conf")
    return render(quadlet, units, tmp_path_factory.mktemp("generated"))


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    """/etc/citadel-llm with two instances on their own ports."""
    (tmp_path / "a.ports.env").write_text("HXP_LLM_PORT=12402\nHXP_LLM_METRICS_PORT=12403\n")
    (tmp_path / "b.ports.env").write_text(
        "HXP_LLM_PORT=13402\nHXP_LLM_METRICS_PORT=13403\nHXP_LLM_ADDRESS=0.0.0.0\n")
    return tmp_path


def test_generator_makes_the_template_and_each_instance(rendered):
    assert set(rendered) == {"citadel-llm@.service", "citadel-llm@a.service", "citadel-llm@b.service",
                             "citadel-llm@demo.service"}


def test_two_instances_get_their_own_container_and_ports(rendered, etc):
    a = resolve_exec_start(rendered["citadel-llm@a.service"], Instance("a", etc))
    b = resolve_exec_start(rendered["citadel-llm@b.service"], Instance("b", etc))
    assert option_values(a, "--name") == ["citadel-llm-a"]
    assert option_values(b, "--name") == ["citadel-llm-b"]
    assert option_values(a, "--publish") == ["127.0.0.1:12402:11402", "127.0.0.1:12403:11403"]
    assert option_values(b, "--publish") == ["0.0.0.0:13402:11402", "127.0.0.1:13403:11403"]
    assert option_values(a, "--env-file")[-1].endswith("/a.env")
    assert option_values(b, "--env-file")[-1].endswith("/b.env")


def test_an_instance_without_a_ports_file_publishes_the_default_ports(rendered, etc):
    argv = resolve_exec_start(rendered["citadel-llm@.service"], Instance("openchat-3.5", etc))
    assert option_values(argv, "--publish") == ["127.0.0.1:11402:11402", "127.0.0.1:11403:11403"]


def test_gpu_instances_get_every_gpu_and_the_cpu_drop_in_removes_it(rendered, etc):
    gpu = resolve_exec_start(rendered["citadel-llm@a.service"], Instance("a", etc))
    cpu = resolve_exec_start(rendered["citadel-llm@demo.service"], Instance("demo", etc))
    assert option_values(gpu, "--device") == ["nvidia.com/gpu=all"]
    assert gpu[-1] == "docker.io/library/hxp-enterprise-llm:gpu"
    assert option_values(gpu, "--memory") == ["16g"]
    assert option_values(cpu, "--device") == []
    assert cpu[-1] == "docker.io/library/hxp-enterprise-llm:cpu"
    # The drop-in's empty PodmanArgs= drops the GPU host's limits before setting the demo's.
    assert option_values(cpu, "--memory") == ["8g"]


@pytest.mark.parametrize("instance", ["a", "demo"])
def test_the_container_runs_hardened(rendered, etc, instance):
    argv = resolve_exec_start(rendered[f"citadel-llm@{instance}.service"], Instance(instance, etc))
    assert "--read-only" in argv
    assert option_values(argv, "--tmpfs") == ["/tmp:rw,nosuid,nodev,size=512m"]
    assert option_values(argv, "--cap-drop") == ["all"]
    assert option_values(argv, "--security-opt") == ["no-new-privileges"]
    assert int(option_values(argv, "--pids-limit")[0]) > 0
    assert option_values(argv, "--shm-size") == ["1g"]
    assert option_values(argv, "--stop-timeout") == ["45"]
    assert option_values(argv, "--log-driver") == ["journald"]
    assert option_values(argv, "--pull") == ["never"]


def test_readiness_gates_the_start_and_only_liveness_kills(rendered, etc):
    argv = resolve_exec_start(rendered["citadel-llm@a.service"], Instance("a", etc))
    assert option_values(argv, "--sdnotify") == ["healthy"]
    assert option_values(argv, "--health-startup-cmd") == ["hxp-healthcheck ready"]
    # 0: the startup check never restarts the container; TimeoutStartSec bounds a load that hangs.
    assert option_values(argv, "--health-startup-retries") == ["0"]
    assert option_values(argv, "--health-cmd") == ["hxp-healthcheck live"]
    assert option_values(argv, "--health-on-failure") == ["kill"]


def test_systemd_waits_out_the_drain_and_restarts_on_failure(rendered):
    service = dict(service_section(rendered["citadel-llm@a.service"], "Service"))
    assert service["Type"] == "notify"
    assert service["Restart"] == "on-failure"
    # A configuration (2) or model/lock (3) error fails the unit once instead of restarting every 10 s.
    assert service["RestartPreventExitStatus"].split() == ["2", "3"]
    assert int(service["TimeoutStopSec"]) > 45  # longer than podman's --stop-timeout


def test_systemd_accepts_the_generated_units(rendered, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package)")
    for name, text in rendered.items():
        (tmp_path / name).write_text(text)
    for instance in ("a", "demo"):
        result = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / f"citadel-llm@{instance}.service")],
                                capture_output=True, text=True, timeout=60, check=False)
        # Podman is not installed here (the command would be found on a real host); anything else is a defect.
        problems = [line for line in result.stderr.splitlines()
                    if line.strip() and "/usr/bin/podman is not executable" not in line]
        assert not problems, result.stderr
