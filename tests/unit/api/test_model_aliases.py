"""Which model ids a request may name: the served name, the configured model_name, and the aliases."""

from __future__ import annotations

import pytest
from api_harness import chat_body

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("model", ["openchat-3.5", "org/weights", "openchat/openchat-3.5-0106"])
async def test_served_name_model_name_and_aliases_are_accepted(serve_app, model: str) -> None:
    async with serve_app(model_name="org/weights", model_aliases=("openchat/openchat-3.5-0106",)) as served:
        response = await served.chat(chat_body(max_tokens=4) | {"model": model})
        assert response.status_code == 200
        assert response.json()["model"] == model


async def test_other_names_are_404_and_models_lists_the_served_name_only(serve_app) -> None:
    async with serve_app(model_aliases=("alias-a",)) as served:
        response = await served.chat(chat_body() | {"model": "alias-b"})
        assert response.status_code == 404
        assert response.json()["error"]["param"] == "model"
        listed = (await served.client.get("/v1/models")).json()
        assert [m["id"] for m in listed["data"]] == ["openchat-3.5"]
