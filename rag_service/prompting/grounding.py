"""Whether an answer stands on the passages: "not in the documents" instead of invention.

The system prompt tells the model to reply with the abstain phrase (``RAG_GENERATOR__ABSTAIN_PHRASE``)
when the passages do not hold the answer; this module reads an answer for that reply, and for the
other ways small models say the same thing ("I don't know", "the passages do not mention..."), so that
the response can say ``grounded: false`` with its reason instead of leaving a client to parse text:

- ``no_passages``: nothing was retrieved or nothing fitted the context, so nothing could support it;
- ``model_abstained``: the model said the passages do not hold the answer;
- ``no_answer``: no text at all (a budget cut the answer before its first word).

How often it abstains on questions whose passage was removed, and how often on answerable ones, is
measured by ``benchmarks/answers.py`` (README, "Answer quality").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Said by the models here when they abstain without the exact phrase (seen in benchmarks/answers.py).
_ABSTAINING = re.compile(
    r"^(i (do not|don't|cannot|can't) (know|find|answer|say|tell|determine)"
    r"|(the )?(answer|information) (is )?not (found|in|available|provided|given|mentioned)"
    r"|(there is )?no (answer|information|mention)"
    r"|(the )?(given |provided )?(passages?|documents?|context|texts?) (do|does) not"
    r"|(it is )?not (mentioned|stated|specified|provided|given|found|in the)"
    r"|unknown\b|not known\b|i am not sure|i'm not sure|sorry)"
)


def normalize(text: str) -> str:
    text = text.lower().replace("\u2019", "'")
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s']", " ", text)).strip()


@dataclass(frozen=True, slots=True)
class Grounding:
    grounded: bool
    reason: str | None  # None when grounded

    def describe(self) -> dict[str, bool | str | None]:
        return {"grounded": self.grounded, "grounded_reason": self.reason}


def judge(answer: str, passages: int, abstain_phrase: str) -> Grounding:
    """``passages``: how many passages the prompt held."""
    if passages == 0:
        return Grounding(False, "no_passages")
    said = normalize(answer)
    if not said:
        return Grounding(False, "no_answer")
    phrase = normalize(abstain_phrase)
    if (phrase and phrase in said) or _ABSTAINING.match(said):
        return Grounding(False, "model_abstained")
    return Grounding(True, None)
