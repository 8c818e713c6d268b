"""The web page's server side: mounted at /ui with / redirecting to it, its settings JSON, files that load
nothing from outside the service, the switch that turns it off, and the wheel that ships it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_harness import make_config
from fastapi import FastAPI

from hxp_enterprise_llm.web import STATIC_DIR, mount_web_ui

REPO = Path(__file__).resolve().parents[3]
PAGE_FILES = ("index.html", "common.js", "chat.js", "dashboard.js", "style.css")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def get(app: FastAPI, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path)


def app_with_ui(**settings: Any) -> FastAPI:
    app = FastAPI()
    mount_web_ui(app, make_config(**settings))
    return app


@pytest.mark.anyio
async def test_root_redirects_to_the_page_and_the_page_is_served() -> None:
    app = app_with_ui()
    root = await get(app, "/")
    assert root.status_code == 307
    assert root.headers["location"] == "/ui/"
    page = await get(app, "/ui/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>HXP Enterprise LLM</title>" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in PAGE_FILES[1:]:
        response = await get(app, f"/ui/{name}")
        assert response.status_code == 200, name
        assert response.content == (STATIC_DIR / name).read_bytes()


@pytest.mark.anyio
async def test_config_json_gives_the_refresh_interval_and_never_the_key(tmp_path: Path) -> None:
    app = app_with_ui(metrics_collection_interval=3, api_key="s3cret-key", served_model_name="m1")
    response = await get(app, "/ui/config.json")
    assert response.status_code == 200
    assert response.json() == {"model": "m1", "api_key_required": True, "refresh_seconds": 3.0,
                                "max_model_len": 4096, "target_latency_ms": 1000.0}
    assert "s3cret-key" not in response.text
    keys_file = tmp_path / "keys"
    keys_file.write_text("k1\n")
    assert (await get(app_with_ui(api_keys_file=keys_file), "/ui/config.json")).json()["api_key_required"] is True
    open_app = await get(app_with_ui(), "/ui/config.json")
    assert open_app.json()["api_key_required"] is False
    assert open_app.json()["refresh_seconds"] == 10.0  # the spec's metrics_collection_interval default


@pytest.mark.anyio
async def test_switched_off_in_config_serves_nothing() -> None:
    app = app_with_ui(web_ui_enabled=False)
    assert (await get(app, "/")).status_code == 404
    assert (await get(app, "/ui/")).status_code == 404
    assert (await get(app, "/ui/config.json")).status_code == 404


def test_switch_is_a_service_setting_from_yaml_and_env(tmp_path: Path) -> None:
    from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config

    config_file = tmp_path / "c.yaml"
    config_file.write_text("service:\n  web_ui_enabled: false\n")
    assert OpenChat35Config.load(config_file, environ={}).config.web_ui_enabled is False
    loaded = OpenChat35Config.load(None, environ={"OPENCHAT_3_5_WEB_UI_ENABLED": "false"})
    assert loaded.config.web_ui_enabled is False
    assert OpenChat35Config.load(None, environ={}).config.web_ui_enabled is True


def test_page_loads_only_its_own_files() -> None:
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    referenced = re.findall(r'(?:src|href)="([^"]+)"', html)
    local = [ref for ref in referenced if not ref.startswith("data:")]
    assert sorted(local) == sorted(PAGE_FILES[1:]), referenced
    assert sorted(p.name for p in STATIC_DIR.iterdir()) == sorted(PAGE_FILES)
    for name in PAGE_FILES:
        text = (STATIC_DIR / name).read_text(encoding="utf-8")
        # No CDN, no remote font, no protocol-relative URL: the page works on an air-gapped network.
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), name
        assert "import(" not in text, name
        assert "@import" not in text, name


def test_the_wheel_ships_the_page(tmp_path: Path) -> None:
    # The image installs the project as a wheel: a file missing from package-data would be a blank page there.
    # Built from a copy, so setuptools' build/ and egg-info never land in the work tree.
    source = tmp_path / "src"
    shutil.copytree(REPO / "app", source / "app", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(source)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("hxp_enterprise_llm-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in PAGE_FILES:
        assert f"hxp_enterprise_llm/web/static/{name}" in names, name
