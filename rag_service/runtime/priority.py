"""Background threads at a lower CPU priority, so queries get the cores whenever both want them.

Linux nice values are per thread (and the OpenMP threads torch starts from one inherit it): the
server's ingestion thread and the index's rebuild thread both run at ``RAG_INGEST__NICE``.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)


def lower_priority(nice: int = 10) -> None:
    """Raise the calling thread's niceness (Linux: per thread; elsewhere: the process)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, max(current, nice))
    except OSError as exc:  # not allowed here: ingestion still works, at normal priority
        log.warning("could not lower the ingestion priority: %s", exc)
