"""Document sources: the built-in default corpus, BEIR-style JSON Lines, ``.txt``/``.md`` files and
folders of them.

The default corpus is the Python language reference topics that ship with every CPython in
``pydoc_data.topics`` (the text ``help("if")`` prints), so ``make run`` answers questions offline
on any machine.

Every reader checks what it reads and raises ``InvalidRequest`` naming the file and line (not UTF-8,
not JSON, no ``_id``, no text), so the caller can refuse the whole input before writing anything.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson

from rag_service.domain import Document
from rag_service.errors import InvalidRequest

TEXT_SUFFIXES = (".txt", ".md")
SUFFIXES = (".jsonl", *TEXT_SUFFIXES)


def python_reference_topics() -> Iterator[Document]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        text = topics[name]
        # The first line is the topic's own heading, e.g. 'The "pass" statement'.
        heading = text.strip().splitlines()[0].strip() if text.strip() else name
        yield Document(id=f"pyref:{name}", title=heading, text=text)


def read_jsonl(path: Path) -> Iterator[Document]:
    """BEIR corpus lines: ``{"_id", "title", "text"}`` (``title`` optional)."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = orjson.loads(line)  # also refuses invalid UTF-8
            except orjson.JSONDecodeError as exc:
                raise InvalidRequest(f"{where}: not a JSON object ({exc})") from None
            if not isinstance(row, dict):
                raise InvalidRequest(f"{where}: expected a JSON object with _id and text")
            doc_id, title, text = row.get("_id"), row.get("title") or "", row.get("text")
            if isinstance(doc_id, int) and not isinstance(doc_id, bool):
                doc_id = str(doc_id)
            if not isinstance(doc_id, str) or not doc_id.strip():
                raise InvalidRequest(f"{where}: missing or empty _id")
            if not isinstance(text, str) or not text.strip():
                raise InvalidRequest(f"{where}: document {doc_id!r} has no text")
            if not isinstance(title, str):
                raise InvalidRequest(f"{where}: document {doc_id!r} has a title that is not a string")
            yield Document(id=doc_id, title=title, text=text)


def read_text_file(path: Path, doc_id: str) -> Document:
    """A ``.txt``/``.md`` file is one document; its title is its first line (without ``#``)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"{path}: not UTF-8 text (invalid byte at offset {exc.start})") from None
    if not text.strip():
        raise InvalidRequest(f"{path}: the file is empty")
    first = text.strip().splitlines()[0]
    title = first.lstrip("#").strip()[:200] or path.stem
    return Document(id=doc_id, title=title, text=text)


def _files(path: Path) -> Iterator[tuple[Path, str]]:
    """Files to read and the id prefix/base of each: a folder's files get their relative path."""
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES):
            yield file, file.relative_to(path).as_posix()
    elif path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise InvalidRequest(f"{path}: unsupported file type (expected {', '.join(SUFFIXES)})")
        yield path, path.name
    else:
        raise InvalidRequest(f"{path}: no such file or folder")


def read_paths(paths: Sequence[Path]) -> list[Document]:
    """Every document under ``paths``, checked whole: a bad file or a repeated id refuses it all.

    ``.jsonl`` lines keep their ``_id``; a ``.txt``/``.md`` file's id is its path relative to the
    folder given (or its name, when the file itself was given)."""
    docs: list[Document] = []
    where: dict[str, str] = {}
    for path in paths:
        for file, name in _files(Path(path)):
            if file.suffix.lower() == ".jsonl":
                found = [(d, f"{file}") for d in read_jsonl(file)]
            else:
                found = [(read_text_file(file, name), str(file))]
            for doc, origin in found:
                if doc.id in where:
                    raise InvalidRequest(f"{origin}: id {doc.id!r} appears twice (first in {where[doc.id]})")
                where[doc.id] = origin
                docs.append(doc)
    return docs
