"""LlamaIndex's ``OpenAILike`` (a client many RAG apps use for "an OpenAI-compatible server") against the
live server: text completions (``is_chat_model=False``: ``/v1/completions``), streamed and not, and chat
(``/v1/chat/completions``). It runs in a venv of its own (``make test`` makes ``.venv-llamaindex``):
every release of it needs ``openai<3``, and this project pins the official client at 3.x."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.paths import REPO
from tests.support.server import LiveServer

PYTHON = REPO / ".venv-llamaindex" / "bin" / "python"

SCRIPT = """
import json, sys
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai_like import OpenAILike

base, model = sys.argv[1], sys.argv[2]
# Greedy: the whole and the streamed completion are two generations, equal only without sampling
# (LlamaIndex's default temperature is 0.1).
common = dict(model=model, api_base=base + "/v1", api_key="unused", max_tokens=16, context_window=2048,
              temperature=0.0)
text = OpenAILike(is_chat_model=False, **common)
whole = text.complete("The capital of France is")
streamed = list(text.stream_complete("The capital of France is"))
chat = OpenAILike(is_chat_model=True, **common)
question = "What happens when a break statement is executed inside a loop?"
answer = chat.chat([ChatMessage(role="user", content=question)])
print(json.dumps({
    "complete": whole.text,
    "complete_raw_object": whole.raw["object"] if isinstance(whole.raw, dict) else whole.raw.object,
    "stream_deltas": [r.delta for r in streamed],
    "stream_text": streamed[-1].text if streamed else "",
    "chat": answer.message.content,
    "chat_sources": [s["id"] for s in (answer.raw.model_extra or {}).get("sources", [])],
}))
"""


def test_openai_like_completes_streams_and_chats(live_server: LiveServer, tmp_path: Path) -> None:
    if not PYTHON.is_file():
        pytest.skip(f"{PYTHON} not found: `make test` installs llama-index-llms-openai-like there")
    run = subprocess.run(
        [str(PYTHON), "-c", SCRIPT, live_server.url, "smollm2-135m-instruct"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["complete"].strip() and out["complete_raw_object"] == "text_completion"
    # Streamed: several deltas that add up to the final text (greedy: the same as the whole one).
    assert len(out["stream_deltas"]) >= 2
    assert "".join(out["stream_deltas"]) == out["stream_text"] == out["complete"]
    # Chat retrieves by default: the answer comes with the passage it was built on.
    assert out["chat"].strip()
    assert out["chat_sources"] and out["chat_sources"][0].startswith("pyref:break#")
