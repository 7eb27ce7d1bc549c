"""Documents in: corpus readers, chunking, batch ingestion, index builds, the server's writer thread, the
HTTP client.
"""
