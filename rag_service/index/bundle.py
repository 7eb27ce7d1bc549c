"""Snapshot bundles: everything a new replica needs to serve an index, in one archive.

A bundle is an uncompressed tar of a consistent copy of the store (``replication.copy_to``), the FAISS
graph and its manifest, taken so that the graph never holds more than the copy (graph first, copy
second: the copy's rows newer than the graph are replayed on open, as after any restart). A replica
unpacks it into a private folder and opens it with ``LiveIndex.open`` (the encoder-spec check
included), then follows the writer's changes (``follower.py``).
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from pathlib import Path

from rag_service.index.live import LiveIndex
from rag_service.index.snapshot import MANIFEST_FILE, write_snapshot
from rag_service.storage.replication import copy_to
from rag_service.storage.store import STORE_FILE


def make_bundle(live: LiveIndex) -> tuple[bytes, int]:
    """The archive and the sequence number its store copy holds everything up to."""
    data, manifest = live.frozen()  # first: the graph may hold less than the copy, never more
    with tempfile.TemporaryDirectory(prefix="rag-bundle-") as tmp:
        seq = copy_to(live.store, Path(tmp))
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(Path(tmp) / STORE_FILE, arcname=STORE_FILE)
            _add_bytes(tar, str(manifest["file"]), data)
            _add_bytes(tar, MANIFEST_FILE, json.dumps(manifest, indent=2).encode())
    return buffer.getvalue(), seq


def unpack_bundle(archive: bytes, folder: Path) -> None:
    """Write a bundle's files into ``folder`` (emptied of an earlier index first)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if old.is_file():
            old.unlink()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile() and "/" not in m.name}
        manifest = json.loads(_read(tar, members[MANIFEST_FILE]))
        (folder / STORE_FILE).write_bytes(_read(tar, members[STORE_FILE]))
        write_snapshot(folder, _read(tar, members[str(manifest["file"])]), manifest)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    extracted = tar.extractfile(member)
    assert extracted is not None  # a regular file
    return extracted.read()
