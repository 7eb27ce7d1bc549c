"""Request plans: what to retrieve with, and a prompt that fits the model, one type per kind of prompt.

- ``QuestionPlan`` (``/v1/ask``, and ``/v1/completions`` with retrieval on): one question, asked in the
  RAG prompt with the passages;
- ``ConversationPlan`` (``/v1/chat/completions``): chat messages (rules below);
- ``TextPlan`` (``/v1/completions`` with retrieval off): a raw prompt, continued as sent.

All of them fix the passages' token budget by one rule, ``passage_budget``: the configured
``retriever.context_tokens``, capped by what the model's context holds after the prompt's own tokens
and the answer's ``max_tokens``; no room at all is ``context_length_exceeded``.

The conversation rules, also in the README ("OpenAI-compatible API"):

- System (and ``developer``) messages are gathered, in order, into one system message at the start;
  with retrieval on it follows the server's RAG instruction. User and assistant turns keep their order.
  The last message must be the user's: it is the question the passages are retrieved for, and it
  sits in the same "Passages … Question …" turn as a ``/v1/ask`` question.
- Retrieval query: the latest user message, then the user message before it. Follow-ups such as
  "When is it removed?" name their topic only in an earlier turn; one earlier turn (not more, and no
  assistant text, which may be wrong) keeps a change of topic from being drowned by the past. The
  latest message comes first because the encoder reads only its first 256 tokens.
- Fitting: the system messages and the latest user message must fit the model's context with the
  answer's ``max_tokens`` (else ``context_length_exceeded``). Older turns are then dropped whole
  (a user message with the replies to it), oldest first, until the prompt leaves room for the answer
  and for passages: ``min(retriever.context_tokens, what is left)`` tokens of them. Counts are exact:
  they are the token ids the engine gets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from rag_service.domain import Hit
from rag_service.errors import InvalidRequest
from rag_service.prompting.prompt import PromptBuilder

Role = Literal["system", "user", "assistant"]
QUERY_USER_TURNS = 2  # the latest user message and the one before it
SYSTEM_SEPARATOR = "\n\n"


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str


class PromptPlan(Protocol):
    """What the pipeline needs from any plan (see ``pipeline.AnswerRequest``)."""

    @property
    def query(self) -> str: ...  # the text retrieved with
    @property
    def with_passages(self) -> bool: ...  # False: no embed or retrieve stage, no passages
    @property
    def context_budget(self) -> int: ...  # most tokens of passages that still fit
    def build_prompt(self, hits: Sequence[Hit]) -> list[int]: ...  # packed passages -> token ids


def passage_budget(
    *, max_model_len: int, max_tokens: int, overhead: int, context_tokens: int, too_long: str, param: str
) -> int:
    """The one context-budget rule: ``min(context_tokens, what the context holds after the prompt's
    ``overhead`` tokens and the answer)``; ``InvalidRequest`` (``context_length_exceeded``, the
    message starting with ``too_long``) when nothing is left."""
    room = max_model_len - max_tokens - overhead
    if room <= 0:
        raise InvalidRequest(
            f"{too_long} {overhead} tokens and the answer {max_tokens}, over the model's context "
            f"of {max_model_len}",
            code="context_length_exceeded",
            param=param,
        )
    return min(context_tokens, room)


@dataclass(frozen=True, slots=True)
class QuestionPlan:
    """One question in the RAG prompt (``/v1/ask``)."""

    query: str
    question_ids: list[int]
    context_budget: int
    prompts: PromptBuilder
    with_passages: bool = True

    def build_prompt(self, hits: Sequence[Hit]) -> list[int]:
        return self.prompts.build(self.question_ids, hits)


def plan_question(
    prompts: PromptBuilder, question: str, *, max_model_len: int, max_tokens: int, context_tokens: int
) -> QuestionPlan:
    """Checks the question fits the model and fixes the passages' budget (``passage_budget``)."""
    question_ids = prompts.encode(question)
    budget = passage_budget(
        max_model_len=max_model_len,
        max_tokens=max_tokens,
        overhead=prompts.question_overhead(question_ids),
        context_tokens=context_tokens,
        too_long="question too long: its prompt takes",
        param="question",
    )
    return QuestionPlan(question, question_ids, budget, prompts)


@dataclass(frozen=True, slots=True)
class TextPlan:
    """A raw prompt continued as sent: no template, no passages (``/v1/completions``, retrieval off)."""

    query: str
    prompt_ids: list[int]
    with_passages: bool = False
    context_budget: int = 0

    def build_prompt(self, hits: Sequence[Hit]) -> list[int]:
        return list(self.prompt_ids)


def plan_text(prompts: PromptBuilder, text: str, *, max_model_len: int, max_tokens: int) -> TextPlan:
    ids = prompts.encode(text)
    passage_budget(
        max_model_len=max_model_len,
        max_tokens=max_tokens,
        overhead=len(ids),
        context_tokens=0,
        too_long="prompt too long: it takes",
        param="prompt",
    )
    return TextPlan(text, ids)


@dataclass(frozen=True, slots=True)
class ConversationPlan:
    """One conversation (``/v1/chat/completions``)."""

    query: str  # the text embedded for retrieval
    prompt_for: Callable[[Sequence[Hit]], list[int]]  # packed passages -> the prompt's token ids
    context_budget: int  # most tokens of passages that still fit
    overhead_tokens: int  # prompt tokens that are not passages
    messages_dropped: int  # older messages left out to fit the context
    with_passages: bool = True

    def build_prompt(self, hits: Sequence[Hit]) -> list[int]:
        return self.prompt_for(hits)


def retrieval_query(messages: Sequence[Message], max_chars: int) -> str:
    users = [m.content.strip() for m in messages if m.role == "user" and m.content.strip()]
    return "\n".join(reversed(users[-QUERY_USER_TURNS:]))[:max_chars]


def _clean(text: str) -> str:
    # NUL characters delimit the prompt's pieces (see PromptBuilder); they mean nothing in a chat.
    return text.replace("\x00", "")


def _groups(turns: Sequence[Message]) -> list[list[Message]]:
    """Whole turns: each user message with the assistant replies that follow it."""
    groups: list[list[Message]] = []
    for message in turns:
        if message.role == "user" or not groups:
            groups.append([])
        groups[-1].append(message)
    return groups


def plan_conversation(
    prompts: PromptBuilder,
    messages: Sequence[Message],
    *,
    system_prompt: str,
    retrieve: bool,
    max_model_len: int,
    max_tokens: int,
    context_tokens: int,
    max_query_chars: int,
) -> ConversationPlan:
    """Raises ``InvalidRequest`` for a conversation without a final user message or one that
    cannot fit even without its older turns."""
    messages = [Message(m.role, _clean(m.content)) for m in messages]
    if not messages or messages[-1].role != "user":
        raise InvalidRequest("the last message must be a user message", param="messages")
    latest = messages[-1]
    if not latest.content.strip():
        raise InvalidRequest("the last user message is empty", param="messages")
    client_system = [m.content for m in messages if m.role == "system"]
    history = [m for m in messages[:-1] if m.role != "system"]
    groups = _groups(history)
    if retrieve:
        system = SYSTEM_SEPARATOR.join([system_prompt, *client_system])
        question_ids = prompts.encode(latest.content.strip())
    else:
        system_messages = [{"role": "system", "content": SYSTEM_SEPARATOR.join(client_system)}]
        system_messages = system_messages if client_system else []
    room = max_model_len - max_tokens

    def kept(dropped: int) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for g in groups[dropped:] for m in g]

    def pieces(dropped: int) -> tuple[list[int], list[int], list[int]]:
        if retrieve:
            return prompts.chat_pieces(system, kept(dropped))
        last = {"role": "user", "content": latest.content}
        return prompts.encode(prompts.render_chat([*system_messages, *kept(dropped), last])), [], []

    def cost(dropped: int) -> int:
        head, middle, tail = pieces(dropped)
        if not retrieve:
            return len(head)
        return len(head) + len(middle) + len(tail) + len(question_ids) + prompts.no_context_tokens

    def budget(overhead: int) -> int:
        return passage_budget(
            max_model_len=max_model_len,
            max_tokens=max_tokens,
            overhead=overhead,
            context_tokens=context_tokens if retrieve else 0,
            too_long="conversation too long: its system messages and last user message take",
            param="messages",
        )

    reserve = budget(cost(len(groups)))
    # The fewest whole turns to drop (cost only falls as turns go): usually none, one render.
    low, high = 0, len(groups)
    while low < high:
        mid = (low + high) // 2
        if cost(mid) <= room - reserve:
            high = mid
        else:
            low = mid + 1
    head, middle, tail = pieces(low)
    overhead = cost(low)
    dropped_messages = sum(len(g) for g in groups[:low])
    query = retrieval_query(messages, max_query_chars)
    if not retrieve:
        ids = head
        return ConversationPlan(query, lambda hits: list(ids), 0, overhead, dropped_messages, False)

    def build(hits: Sequence[Hit]) -> list[int]:
        return [*head, *prompts.context_or_note_ids(hits), *middle, *question_ids, *tail]

    return ConversationPlan(query, build, budget(overhead), overhead, dropped_messages)
