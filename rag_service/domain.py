"""Plain data passed between components. No behaviour beyond small derived values."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Passage:
    """A chunk of a document, the unit the index stores and the retriever returns."""

    id: str
    doc_id: str
    title: str
    text: str


@dataclass(frozen=True, slots=True)
class Hit:
    """A passage found by a search. ``score``: cosine (dense), negated BM25 (lexical) or the
    reciprocal-rank fusion score (hybrid); ``retrievers``: its 1-based rank in each retriever's list."""

    passage: Passage
    score: float
    retrievers: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class SearchOutcome:
    """What a search found and how: the mode asked for and, when one side of a hybrid search missed
    its time, the side used alone (``fallback="dense"`` or ``"lexical"``) with the reason."""

    hits: list[Hit]
    mode: str
    fallback: str | None = None
    reason: str | None = None

    def describe(self) -> dict[str, str | None]:
        return {"mode": self.mode, "fallback": self.fallback, "reason": self.reason}


@dataclass(slots=True)
class Context:
    """Passages packed for the prompt, best first, and what the packing left out."""

    hits: list[Hit]
    tokens: int
    budget: int
    dropped: list[Hit] = field(default_factory=list)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    context_tokens: int = 0


@dataclass(slots=True)
class GenerationChunk:
    """One streamed piece of an answer. ``finish_reason`` is set on the last one."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Sampling:
    """Sampling controls beyond temperature (the OpenAI API's names), passed to vLLM as given.
    The defaults are vLLM's own, so a request that leaves them out samples as before."""

    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_tokens: int = 0  # tokens generated before EOS or a stop string may end the answer


@dataclass(frozen=True, slots=True)
class Document:
    """A source text before chunking."""

    id: str
    title: str
    text: str
