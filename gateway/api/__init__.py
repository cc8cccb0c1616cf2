"""The gateway's HTTP API (FastAPI): health now; verification routes arrive with the verify issue."""

from gateway.api.app import create_app

__all__ = ["create_app"]
