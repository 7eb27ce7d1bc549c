"""Test-only fault delays, applied by wrapping the pipeline's real components for one request."""
