"""The OpenAI-compatible API: chat completions, completions, embeddings, models (protocol, serving_*,
routes).
"""
