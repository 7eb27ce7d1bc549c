"""The RAG prompt: numbered passages and the question, in the generator's chat template, as token ids.

The prompt is assembled from token-id pieces: the chat template is rendered once around two
markers and cut into a fixed head, middle and tail; each passage block is tokenized once (cached);
per request only the question is tokenized. So the context's token count is exact by construction
(the ids counted are the ids the engine gets) and the hot path does almost no tokenizing.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from rag_service.domain import Hit, Passage

SEPARATOR = "\n\n"
NO_CONTEXT = "(none found)"
_CONTEXT_MARK = "\x00CONTEXT\x00"
_QUESTION_MARK = "\x00QUESTION\x00"
PASSAGE_CACHE_SIZE = 65_536


class PromptBuilder:
    def __init__(self, tokenizer: Any, system_prompt: str) -> None:
        self._tokenizer = tokenizer
        self.system_prompt = system_prompt
        rendered = self.render(_QUESTION_MARK, _CONTEXT_MARK)
        head, rest = rendered.split(_CONTEXT_MARK)
        middle, tail = rest.split(_QUESTION_MARK)
        self._head, self._middle, self._tail = self.encode(head), self.encode(middle), self.encode(tail)
        self._separator = self.encode(SEPARATOR)
        self._no_context = self.encode(NO_CONTEXT)
        self._passage_ids = lru_cache(maxsize=PASSAGE_CACHE_SIZE)(self._encode_passage)

    @classmethod
    def from_model(cls, model: str, system_prompt: str) -> PromptBuilder:
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(model), system_prompt)

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids)))

    @staticmethod
    def passage_block(number: int, passage: Passage) -> str:
        header = f"[{number}] {passage.title}" if passage.title else f"[{number}]"
        return f"{header}\n{passage.text}"

    def _encode_passage(self, number: int, passage: Passage) -> tuple[int, ...]:
        return tuple(self.encode(self.passage_block(number, passage)))

    def passage_tokens(self, number: int, passage: Passage) -> int:
        return len(self._passage_ids(number, passage))

    @property
    def separator_tokens(self) -> int:
        return len(self._separator)

    def context_ids(self, hits: Sequence[Hit]) -> list[int]:
        ids: list[int] = []
        for number, hit in enumerate(hits, start=1):
            if number > 1:
                ids += self._separator
            ids += self._passage_ids(number, hit.passage)
        return ids

    def messages(self, question: str, context: str) -> list[dict[str, str]]:
        user = f"Passages:\n{context or NO_CONTEXT}{SEPARATOR}Question: {question}"
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]

    def render(self, question: str, context: str) -> str:
        """The whole prompt as text, ending where the assistant's answer starts."""
        return str(
            self._tokenizer.apply_chat_template(
                self.messages(question, context), add_generation_prompt=True, tokenize=False
            )
        )

    def question_overhead(self, question_ids: Sequence[int]) -> int:
        """Prompt tokens that are not passages: template, instructions, the question, and room for the
        note that stands in for passages when none were found."""
        fixed = len(self._head) + len(self._middle) + len(self._tail) + len(self._no_context)
        return fixed + len(question_ids)

    def build(self, question_ids: Sequence[int], hits: Sequence[Hit]) -> list[int]:
        """Token ids of the whole chat prompt; ``render`` gives the same text."""
        context = self.context_ids(hits) if hits else self._no_context
        return [*self._head, *context, *self._middle, *question_ids, *self._tail]

    # --- conversations (the OpenAI-compatible chat API, see rag_service/prompting/plans.py) ---

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """A whole conversation in the chat template, ending where the assistant's reply starts."""
        return str(
            self._tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        )

    def chat_pieces(
        self, system: str, history: Sequence[dict[str, str]]
    ) -> tuple[list[int], list[int], list[int]]:
        """Head, middle and tail token ids of a conversation whose last user turn is the RAG turn
        (passages, then the question), cut around the same markers as the one-question prompt: the
        passages go between head and middle, the latest question between middle and tail."""
        last = self.messages(_QUESTION_MARK, _CONTEXT_MARK)[1]
        rendered = self.render_chat([{"role": "system", "content": system}, *history, last])
        head, rest = rendered.split(_CONTEXT_MARK)
        middle, tail = rest.split(_QUESTION_MARK)
        return self.encode(head), self.encode(middle), self.encode(tail)

    @property
    def no_context_tokens(self) -> int:
        return len(self._no_context)

    def context_or_note_ids(self, hits: Sequence[Hit]) -> list[int]:
        """The passages as they sit in the prompt, or the note standing in for them when none fit."""
        return self.context_ids(hits) if hits else list(self._no_context)
