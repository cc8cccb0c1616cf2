"""The gateway's HTTP API (FastAPI): health, verification, audits, restore, ledger views."""

from gateway.api.app import create_app

__all__ = ["create_app"]
