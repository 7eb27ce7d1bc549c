"""The RAG prompt and its token counting, and the request plans (question, conversation, raw text) with the
one context-budget rule.
"""
