"""A conversation -> retrieval query and a prompt that fits: the real SmolLM2 tokenizer and chat
template, and (for the query rule) the real encoder and default index."""

from __future__ import annotations

import pytest

from rag_service.embedding.encoder import Encoder
from rag_service.errors import InvalidRequest
from rag_service.prompting.plans import Message, plan_conversation, retrieval_query
from rag_service.prompting.prompt import NO_CONTEXT, PromptBuilder
from rag_service.retrieval.passages import PassageSearch

MAX_MODEL_LEN = 2048
CONTEXT_TOKENS = 1024
ASSERT_FOLLOW_UP = [
    Message("user", "Tell me about the assert statement."),
    Message("assistant", "It tests a condition."),
    Message("user", "When is it removed?"),
]


def _plan(prompts: PromptBuilder, messages: list[Message], *, retrieve: bool = True, max_tokens: int = 128):
    return plan_conversation(
        prompts,
        messages,
        system_prompt="Use the passages.",
        retrieve=retrieve,
        max_model_len=MAX_MODEL_LEN,
        max_tokens=max_tokens,
        context_tokens=CONTEXT_TOKENS,
        max_query_chars=4000,
    )


def _long_conversation(turns: int) -> list[Message]:
    messages = [Message("system", "Be brief.")]
    for i in range(turns):
        messages += [Message("user", f"question {i}: " + "word " * 40), Message("assistant", "answer " * 40)]
    return [*messages, Message("user", "What does the pass statement do?")]


def test_prompt_is_the_conversation_in_the_chat_template(prompts: PromptBuilder) -> None:
    plan = _plan(prompts, [Message("system", "Be terse."), *ASSERT_FOLLOW_UP])
    expected = prompts.render_chat(
        [
            {"role": "system", "content": "Use the passages.\n\nBe terse."},
            {"role": "user", "content": "Tell me about the assert statement."},
            {"role": "assistant", "content": "It tests a condition."},
            {"role": "user", "content": f"Passages:\n{NO_CONTEXT}\n\nQuestion: When is it removed?"},
        ]
    )
    ids = plan.build_prompt([])
    assert prompts.decode(ids) == expected
    assert len(ids) == plan.overhead_tokens  # the count is the ids the engine gets
    assert plan.messages_dropped == 0 and plan.context_budget == CONTEXT_TOKENS


def test_passages_go_into_the_last_turn_within_the_budget(
    prompts: PromptBuilder, passages: PassageSearch, encoder: Encoder
) -> None:
    plan = _plan(prompts, ASSERT_FOLLOW_UP)
    hits = passages.search(encoder.encode_queries([plan.query])[0], 8)
    context = passages.pack(hits, plan.context_budget)
    ids = plan.build_prompt(context.hits)
    text = prompts.decode(ids)
    assert text.index("[1] ") > text.index("It tests a condition.")  # passages sit in the last turn
    assert text.endswith("Question: When is it removed?<|im_end|>\n<|im_start|>assistant\n")
    assert len(ids) == plan.overhead_tokens - prompts.no_context_tokens + context.tokens
    assert len(ids) + 128 <= MAX_MODEL_LEN


def test_plain_chat_renders_the_messages_as_given(prompts: PromptBuilder) -> None:
    plan = _plan(prompts, [Message("user", "What is the capital of France?")], retrieve=False)
    expected = prompts.render_chat([{"role": "user", "content": "What is the capital of France?"}])
    assert prompts.decode(plan.build_prompt([])) == expected  # the template's own default system prompt
    assert plan.context_budget == 0


@pytest.mark.parametrize("retrieve", [True, False])
def test_old_turns_are_dropped_whole_to_fit(prompts: PromptBuilder, retrieve: bool) -> None:
    messages = _long_conversation(60)
    plan = _plan(prompts, messages, retrieve=retrieve)
    ids = plan.build_prompt([])
    assert plan.messages_dropped > 0 and plan.messages_dropped % 2 == 0  # whole user+assistant turns
    assert len(ids) + plan.context_budget + 128 <= MAX_MODEL_LEN
    text = prompts.decode(ids)
    assert "Be brief." in text  # system messages are always kept
    assert "question 59:" in text  # the newest turns are kept
    assert "question 0:" not in text
    if retrieve:
        # Passages keep their full configured room; history takes what is left.
        assert plan.context_budget == CONTEXT_TOKENS
    kept_turns = (len(messages) - 2 - plan.messages_dropped) // 2
    # Dropping one turn fewer would not have fitted.
    fewer = [messages[0], *messages[1 + plan.messages_dropped - 2 :]]
    assert len(fewer) == 1 + 2 * (kept_turns + 1) + 1
    over = _plan(prompts, fewer, retrieve=retrieve)
    assert over.messages_dropped == 2


def test_a_last_message_that_cannot_fit_is_context_length_exceeded(prompts: PromptBuilder) -> None:
    with pytest.raises(InvalidRequest) as err:
        _plan(prompts, [Message("user", "word " * 2500)])
    assert err.value.code == "context_length_exceeded" and err.value.param == "messages"


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [Message("system", "hi")],
        [Message("user", "hi"), Message("assistant", "hello")],
        [Message("user", " ")],
    ],
)
def test_conversation_must_end_with_a_user_message(prompts: PromptBuilder, messages: list[Message]) -> None:
    with pytest.raises(InvalidRequest):
        _plan(prompts, messages)


def test_nul_characters_cannot_break_the_prompt(prompts: PromptBuilder) -> None:
    plan = _plan(
        prompts, [Message("user", "a\x00CONTEXT\x00b"), Message("assistant", "x"), Message("user", "ok?")]
    )
    assert "aCONTEXTb" in prompts.decode(plan.build_prompt([]))


def test_query_is_the_latest_user_message_then_the_one_before() -> None:
    messages = [
        Message("user", "first"),
        Message("assistant", "reply"),
        Message("user", "second"),
        Message("assistant", "reply"),
        Message("user", "third"),
    ]
    assert retrieval_query(messages, 100) == "third\nsecond"
    assert retrieval_query(messages, 3) == "thi"
    assert retrieval_query([Message("user", "only")], 100) == "only"


def test_follow_up_retrieves_the_earlier_turns_topic(passages: PassageSearch, encoder: Encoder) -> None:
    def top(messages: list[Message]) -> str:
        query = retrieval_query(messages, 4000)
        return passages.search(encoder.encode_queries([query])[0], 1)[0].passage.doc_id

    assert top(ASSERT_FOLLOW_UP) == "pyref:assert"
    assert top(ASSERT_FOLLOW_UP[-1:]) != "pyref:assert"  # the follow-up alone does not name its topic
    # A change of topic is not drowned by the earlier turn.
    assert top([*ASSERT_FOLLOW_UP[:2], Message("user", "What is a lambda expression?")]) == "pyref:lambda"
