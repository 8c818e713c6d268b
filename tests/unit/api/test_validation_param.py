"""`param` names the request's field, never the union member pydantic tried first (`stop.str`, `prompt.list[int]`).

The request schemas have few unions today (`stop`, `content`, `prompt`, all with `str` first), so the
member names pydantic can put in a path are checked here on one field of each kind of union.
"""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from pydantic import AfterValidator, ValidationError, create_model

from hxp_enterprise_llm.api.errors import validation_error
from hxp_enterprise_llm.schemas.openai import ContentPart


def _same(value: int) -> int:
    return value


@pytest.mark.parametrize(("annotation", "value"), [
    (int | str, []),  # pydantic's path: ("x", "int")
    (float | str, []),
    (bool | str, []),
    (ContentPart | str, 5),  # a model member is named by its class
    (list[int] | str, 5),  # ("x", "list[int]")
    (Annotated[int, AfterValidator(_same)] | str, []),  # ("x", "function-after[_same(), int]")
    (str | list[str], 5),
], ids=["int", "float", "bool", "model", "generic", "validator", "str"])
def test_param_is_the_field_whichever_union_member_failed_first(annotation: Any, value: object) -> None:
    body = create_model("Body", x=(annotation, ...))
    with pytest.raises(ValidationError) as raised:
        body.model_validate({"x": value}, strict=True)
    error = validation_error(raised.value).body()["error"]
    assert error["param"] == "x", error
    assert error["message"].startswith("x: "), error
    assert error["code"] == "invalid_value"
