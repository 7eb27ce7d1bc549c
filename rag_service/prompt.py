"""The RAG prompt: numbered passages and the question, in the generator's chat template.

Everything here is counted in the generator's own tokens, so the context budget is exact: the
prompt is handed to the engine as token ids, the same ids that were counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rag_service.types import Hit, Passage

SEPARATOR = "\n\n"


class PromptBuilder:
    def __init__(self, tokenizer: Any, system_prompt: str) -> None:
        self._tokenizer = tokenizer
        self.system_prompt = system_prompt

    @classmethod
    def from_model(cls, model: str, system_prompt: str) -> PromptBuilder:
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(model), system_prompt)

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    @staticmethod
    def passage_block(number: int, passage: Passage) -> str:
        header = f"[{number}] {passage.title}" if passage.title else f"[{number}]"
        return f"{header}\n{passage.text}"

    def context_text(self, hits: Sequence[Hit]) -> str:
        return SEPARATOR.join(self.passage_block(i, h.passage) for i, h in enumerate(hits, start=1))

    def messages(self, question: str, context: str) -> list[dict[str, str]]:
        user = f"Passages:\n{context or '(none found)'}{SEPARATOR}Question: {question}"
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]

    def build(self, question: str, context: str) -> list[int]:
        """Token ids of the whole chat prompt, ending where the assistant's answer starts."""
        return self.encode_chat(self.messages(question, context))

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        ids = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
