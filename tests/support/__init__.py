"""Helpers every test file shares, each written once: paths and settings, the live server's start and
stop, a small in-thread server, SSE parsing, the error-shape assertion, index invariants."""
