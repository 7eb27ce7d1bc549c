"""Reading an answer for "not in the documents" (rag_service/prompting/grounding.py)."""

from __future__ import annotations

import pytest

from rag_service.config import GeneratorSettings
from rag_service.prompting.grounding import judge

PHRASE = GeneratorSettings().abstain_phrase


@pytest.mark.parametrize(
    "answer",
    [
        "Not in the documents.",
        "not in the documents",
        "NOT IN THE DOCUMENTS!",
        "The answer is: Not in the documents.",
        "I don't know.",
        "I do not know the answer to that.",
        "I can\u2019t find that in the passages.",
        "The passages do not mention the boiling point of tungsten.",
        "The provided passages do not contain this information.",
        "The information is not provided in the passages.",
        "There is no information about that.",
        "It is not mentioned in the passages.",
    ],
)
def test_abstentions_are_not_grounded(answer: str) -> None:
    g = judge(answer, passages=4, abstain_phrase=PHRASE)
    assert (g.grounded, g.reason) == (False, "model_abstained")


@pytest.mark.parametrize(
    "answer",
    [
        "Paris.",
        "The global statement declares names as globals of the module.",
        "Denver Broncos",
        "No, the study found no effect.",  # "no" answers a yes/no question; it is not an abstention
        "Knowledge of the documents is not required to use it.",
        "Yes.",
    ],
)
def test_answers_are_grounded(answer: str) -> None:
    g = judge(answer, passages=4, abstain_phrase=PHRASE)
    assert (g.grounded, g.reason) == (True, None)


def test_nothing_to_stand_on() -> None:
    assert judge("Paris.", passages=0, abstain_phrase=PHRASE).reason == "no_passages"
    assert judge("", passages=3, abstain_phrase=PHRASE).reason == "no_answer"
    assert judge("  \n", passages=3, abstain_phrase=PHRASE).describe() == {
        "grounded": False,
        "grounded_reason": "no_answer",
    }


def test_the_phrase_is_in_the_instruction_the_model_reads() -> None:
    settings = GeneratorSettings(abstain_phrase="Not found.")
    assert settings.rag_instruction.endswith("reply exactly: Not found.")
    assert "{abstain_phrase}" not in settings.rag_instruction
    assert judge("Not found.", passages=2, abstain_phrase="Not found.").reason == "model_abstained"
