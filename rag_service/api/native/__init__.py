"""Our own API: ``/v1/ask``, ``/v1/search``, the documents API, health, readiness, metrics (protocol,
serving, routes).
"""
