"""Request bodies that read JSON the way JSON Schema (and so our OpenAPI schema) describes it.

The request models are strict (``"5"`` is not a number, unknown fields are refused), but JSON Schema
counts ``375.0`` as an integer, so a client generated from the schema may send it: ``JsonBody`` takes
an integral float as that integer and still refuses ``375.5``, ``"375"`` and ``true``.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# A non-whitespace character, as Python's str.isspace() sees whitespace; the same regex documents the
# rule in the schema (a JSON Schema pattern matches anywhere in the string).
NOT_BLANK = r"\S"
_NOT_BLANK = re.compile(NOT_BLANK)


def _integral_floats_as_ints(value: object) -> object:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral_floats_as_ints(item) for item in value]
    return value


class JsonBody(BaseModel):
    """Base of every request body: strict types, unknown fields refused, JSON Schema's integers."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # On every field, before its type is checked (a float field takes the int back as a float).
    # Written here, not as an annotated int type: pydantic then drops `ge`/`le` from the schema.
    _json_integers = field_validator("*", mode="before")(_integral_floats_as_ints)


def not_blank(value: str) -> str:
    """A validator: the text must hold something other than whitespace."""
    if not _NOT_BLANK.search(value):
        raise ValueError("must contain non-whitespace text")
    return value


def text_field(description: str, max_length: int | None = None) -> Any:
    """A required text field that must not be blank (checked by ``not_blank``), the rule stated in
    the schema."""
    return Field(description=description, max_length=max_length, json_schema_extra={"pattern": NOT_BLANK})
