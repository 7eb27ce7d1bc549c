"""rag-service: low-latency retrieval-augmented generation in one process."""

__version__ = "0.1.0"
