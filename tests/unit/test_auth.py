"""The bearer-key check shared by the write endpoints and the OpenAI-compatible API."""

from __future__ import annotations

import pytest

from rag_service.api.auth import check_api_key
from rag_service.errors import Unauthorized


def test_no_key_configured_lets_everything_through() -> None:
    check_api_key(None, None)
    check_api_key(None, "Bearer whatever")


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic s3cret", "s3cret"])
def test_missing_key_is_refused(header: str | None) -> None:
    with pytest.raises(Unauthorized) as err:
        check_api_key("s3cret", header)
    assert err.value.status == 401 and err.value.code == "unauthorized"


def test_wrong_key_is_refused() -> None:
    with pytest.raises(Unauthorized) as err:
        check_api_key("s3cret", "Bearer s3cret-not")
    assert err.value.code == "invalid_api_key"


@pytest.mark.parametrize("header", ["Bearer s3cret", "bearer s3cret", "Bearer  s3cret "])
def test_right_key_passes(header: str) -> None:
    check_api_key("s3cret", header)
