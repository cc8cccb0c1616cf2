"""Object store for sealed images: one small interface, filesystem and S3 backends."""

from gateway.store.base import ObjectStore, open_store, validate_name

__all__ = ["ObjectStore", "open_store", "validate_name"]
