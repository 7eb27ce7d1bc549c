"""Text to normalized vectors: the encoder, and the query micro-batcher that runs it on one thread."""
