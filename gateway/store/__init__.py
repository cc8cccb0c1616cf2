"""Object store for sealed images: one small interface, filesystem and S3 backends."""

from gateway.store.base import ObjectStore, validate_name
from gateway.store.url import open_store

__all__ = ["ObjectStore", "open_store", "validate_name"]
