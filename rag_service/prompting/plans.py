"""A conversation (chat messages) -> the text to retrieve with, and a prompt that fits the model.

The rules, also in the README ("OpenAI-compatible API"):

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
from typing import Literal

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


@dataclass(slots=True)
class ChatPlan:
    """What the pipeline needs for one conversation (see ``AskRequest``)."""

    query: str  # the text embedded for retrieval
    build_prompt: Callable[[Sequence[Hit]], list[int]]  # packed passages -> the prompt's token ids
    context_budget: int  # most tokens of passages that still fit
    overhead_tokens: int  # prompt tokens that are not passages
    messages_dropped: int  # older messages left out to fit the context


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


def plan_chat(
    prompts: PromptBuilder,
    messages: Sequence[Message],
    *,
    system_prompt: str,
    retrieve: bool,
    max_model_len: int,
    max_tokens: int,
    context_tokens: int,
    max_query_chars: int,
) -> ChatPlan:
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

    least = cost(len(groups))
    if least >= room:
        raise InvalidRequest(
            f"conversation too long: its system messages and last user message take {least} tokens "
            f"and the answer {max_tokens}, over the model's context of {max_model_len}",
            code="context_length_exceeded",
            param="messages",
        )
    reserve = min(context_tokens, room - least) if retrieve else 0
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
        return ChatPlan(query, lambda hits: list(ids), 0, overhead, dropped_messages)

    def build(hits: Sequence[Hit]) -> list[int]:
        return [*head, *prompts.context_or_note_ids(hits), *middle, *question_ids, *tail]

    budget = min(context_tokens, room - overhead)
    return ChatPlan(query, build, budget, overhead, dropped_messages)
