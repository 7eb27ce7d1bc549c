"""HTTP layer. Importing it stays light: heavy libraries load only when the service starts."""

from rag_service.api.app import build_app

__all__ = ["build_app"]
