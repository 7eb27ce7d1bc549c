"""HTTP layer: the app, auth, body limit, the one error table (``errors.py``) and the one serving path
(``serving.py``) both APIs answer through. Importing it stays light: heavy libraries load only when the
service starts.
"""

from rag_service.api.app import build_app

__all__ = ["build_app"]
