"""HTTP helpers: the error shape every API answers with, and Server-Sent Events as both APIs send them."""

from __future__ import annotations

from typing import Any

import httpx
import orjson


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "code", "param"}}`` and nothing else, with ``status`` (``code``)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    if code:
        assert error["code"] == code, error
    return error


def sse_frames(raw: bytes) -> list[bytes]:
    """The payloads of a whole SSE body: only ``data: <payload>`` events, each ending in a blank line."""
    assert raw.endswith(b"\n\n"), raw[-200:]
    frames = raw.split(b"\n\n")[:-1]
    assert all(f.startswith(b"data: ") and b"\n" not in f for f in frames), frames
    return [f.removeprefix(b"data: ") for f in frames]


def sse_payloads(raw: bytes) -> list[dict[str, Any]]:
    """The JSON events of a whole SSE body, which must end with ``data: [DONE]``."""
    frames = sse_frames(raw)
    assert frames[-1] == b"[DONE]", frames[-3:]
    return [orjson.loads(f) for f in frames[:-1]]
