"""Token-window chunker: long texts become overlapping windows measured in the encoder's tokens.

A chunk is an exact slice of the original text (token offsets map back to characters), so what the
index embeds and what the answer cites are the same words. Windows prefer to end at a line break.
"""

from __future__ import annotations

from typing import Any


class Chunker:
    def __init__(self, tokenizer: Any, chunk_tokens: int, overlap_tokens: int) -> None:
        if overlap_tokens >= chunk_tokens:
            raise ValueError("overlap_tokens must be smaller than chunk_tokens")
        self._tokenizer = tokenizer
        self.chunk_tokens = chunk_tokens
        self.overlap_tokens = overlap_tokens

    def split(self, text: str) -> list[str]:
        text = text.strip()
        if not text:
            return []
        encoded = self._tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets: list[tuple[int, int]] = encoded["offset_mapping"]
        n = len(offsets)
        if n <= self.chunk_tokens:
            return [text]
        chunks: list[str] = []
        start = 0
        while start < n:
            end = min(start + self.chunk_tokens, n)
            if end < n:
                end = self._line_break_before(text, offsets, start, end)
            chunk = text[offsets[start][0] : offsets[end - 1][1]].strip()
            if chunk:
                chunks.append(chunk)
            if end >= n:
                break
            start = max(end - self.overlap_tokens, start + 1)
        return chunks

    def _line_break_before(self, text: str, offsets: list[tuple[int, int]], start: int, end: int) -> int:
        """Move ``end`` back to a token that starts a new line, if one is in the window's second half."""
        half = start + self.chunk_tokens // 2
        for j in range(end, half, -1):
            char = offsets[j][0]
            if char > 0 and text[char - 1] == "\n":
                return j
        return end
