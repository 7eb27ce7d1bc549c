"""The chat page's files ship in the wheel: pyproject's package-data globs cover every file that
``rag_service.api.page`` serves (a non-editable install has only what they name)."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch

from rag_service.api.page import MEDIA_TYPES, static_files
from tests.support.paths import REPO


def test_every_served_page_file_is_package_data() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["rag_service.api"]
    served = static_files()
    assert {"index.html", "main.js", "page.css"} <= set(served), sorted(served)
    for name in served:
        assert any(fnmatch(f"static/{name}", g) for g in globs), (name, globs)
    on_disk = {p.name for p in (REPO / "rag_service" / "api" / "static").iterdir()}
    assert set(served) == on_disk, "a file in static/ that the page would never serve"
    assert all(any(name.endswith(ext) for ext in MEDIA_TYPES) for name in served)
