"""Open the backend a store URL names: the one place that knows every backend.

``base.py`` defines the interface; ``fs.py`` and ``s3.py`` implement it and import only
``base``; this module imports the backends, so nothing imports back up.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from gateway.errors import ConfigError
from gateway.store.base import ObjectStore
from gateway.store.fs import FilesystemStore


def open_store(url: str, *, access_key: str | None, secret_key: str | None) -> ObjectStore:
    """Open the backend a store URL names.

    Parameters
    ----------
    url:
        ``file:///absolute/path`` for the filesystem backend; ``s3://host:port/bucket``
        (plain HTTP) or ``s3+https://host:port/bucket`` (TLS) for S3/MinIO.
    access_key, secret_key:
        S3 credentials; required for ``s3`` URLs, ignored for ``file`` URLs. They are
        never part of the URL, so that a logged URL leaks nothing.

    Raises
    ------
    ConfigError
        The URL is malformed, has an unknown scheme, carries credentials, or an S3 URL
        comes without both keys.
    """
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ConfigError("the store URL takes no query or fragment")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError("a file store URL is file:///absolute/path (no host)")
        path = Path(unquote(parts.path))
        if not path.is_absolute() or ".." in path.parts:
            raise ConfigError("a file store URL needs an absolute path without '..'")
        return FilesystemStore(path)
    if parts.scheme in ("s3", "s3+https"):
        if parts.username is not None or parts.password is not None:
            # Refuse rather than use: a URL ends up in logs and process listings.
            raise ConfigError(
                "the store URL must not carry credentials; set GATEWAY_S3_ACCESS_KEY "
                "and GATEWAY_S3_SECRET_KEY"
            )
        if not access_key or not secret_key:
            raise ConfigError("an s3 store needs GATEWAY_S3_ACCESS_KEY and GATEWAY_S3_SECRET_KEY")
        try:
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise ConfigError("the store URL has an invalid port") from exc
        bucket = parts.path.strip("/")
        if not host or not bucket or "/" in bucket:
            raise ConfigError("an s3 store URL is s3://host:port/bucket")
        # Imported here so that a filesystem-only deployment never loads minio/urllib3.
        from gateway.store.s3 import S3Store

        netloc = f"[{host}]" if ":" in host else host
        return S3Store(
            endpoint=netloc if port is None else f"{netloc}:{port}",
            bucket=bucket,
            access_key=access_key,
            secret_key=secret_key,
            secure=parts.scheme == "s3+https",
        )
    raise ConfigError("the store URL scheme must be file, s3 or s3+https")


__all__ = ["open_store"]
