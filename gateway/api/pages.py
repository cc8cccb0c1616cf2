"""Cursor pagination, one shape for every list route: ``items``, ``next_cursor`` and a ``Link``.

A list is read a page at a time: ``?limit=N`` (1 to :data:`MAX_LIMIT`, default
:data:`DEFAULT_LIMIT`), then ``?cursor=<next_cursor>`` of the previous answer for the
next page, until ``next_cursor`` is ``null``. The answer also carries the next page's URL
as an RFC 8288 ``Link: <…>; rel="next"`` header.

A cursor is opaque to clients: base64url (unpadded) of ``{"l": <list>, "k": <key>}``,
the list it belongs to and the sort key of the last item sent. It is checked, never
trusted: a cursor that does not decode, belongs to another list or holds a key of the
wrong shape is a 422 problem. (Keyset, not offset: an alert recorded between two pages
neither repeats nor hides an item.)
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query, Request, Response
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from gateway.api.problems import INVALID_CURSOR, Problem

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
CURSOR_MAX_LENGTH = 512

Item = TypeVar("Item")
Key = TypeVar("Key")

Limit = Annotated[
    int,
    Query(ge=1, le=MAX_LIMIT, description=f"items per page, at most {MAX_LIMIT}"),
]
CursorParam = Annotated[
    str | None,
    Query(
        max_length=CURSOR_MAX_LENGTH,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="`next_cursor` of the previous page; absent for the first page",
    ),
]

#: ``responses=`` entry of a list route: its 200 answer carries ``Link`` when more follow.
LINK_HEADER: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            "Link": {
                "description": 'RFC 8288: `<URL of the next page>; rel="next"`, when there is one',
                "schema": {"type": "string"},
            }
        }
    }
}


class Page(BaseModel, Generic[Item]):
    """One page of a list; follow ``next_cursor`` (or the ``Link`` header) for the next."""

    items: list[Item]
    next_cursor: str | None = Field(
        description="pass as `cursor` to get the next page; null on the last page"
    )


class Pager(Generic[Key]):
    """Cursors of one list: ``name`` tags them, ``key`` is the type of its sort key.

    Parameters
    ----------
    name:
        The list's name, written into each cursor: a cursor of another list is refused.
    key:
        The sort key's type (e.g. ``tuple[float, str, int]``), checked on decoding.
    """

    def __init__(self, name: str, key: Any) -> None:
        self.name = name
        self._key: TypeAdapter[Key] = TypeAdapter(key)

    def encode(self, key: Key) -> str:
        """The opaque cursor that starts the page after ``key``."""
        raw = json.dumps({"l": self.name, "k": self._key.dump_python(key, mode="json")})
        return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode("ascii")

    def decode(self, cursor: str | None) -> Key | None:
        """The key a cursor holds; ``None`` for no cursor (the first page).

        Raises
        ------
        Problem
            422: the cursor is not one of this list's.
        """
        if cursor is None:
            return None
        try:
            raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
            if not isinstance(raw, dict) or raw.get("l") != self.name:
                raise ValueError("another list's cursor")
            return self._key.validate_python(raw.get("k"), strict=False)
        except (binascii.Error, UnicodeDecodeError, ValueError, ValidationError):
            raise Problem(
                INVALID_CURSOR,
                f"the cursor is not one this list ({self.name}) gave out; "
                "start again without a cursor",
                errors=[{"loc": ["query", "cursor"], "msg": "not a cursor of this list"}],
            ) from None

    def next_cursor(self, request: Request, response: Response, next_key: Key | None) -> str | None:
        """The cursor of the page after ``next_key``, also set as the ``Link`` header."""
        if next_key is None:
            return None
        cursor = self.encode(next_key)
        response.headers["Link"] = f'<{next_url(request, cursor)}>; rel="next"'
        return cursor

    def page(
        self, request: Request, response: Response, items: list[Item], next_key: Key | None
    ) -> Page[Item]:
        """The answer: ``items``, the cursor after them, and the ``Link`` to the next page."""
        return Page(items=items, next_cursor=self.next_cursor(request, response, next_key))


def slice_after(
    items: Sequence[Item], key: Callable[[Item], Any], *, after: Any, limit: int
) -> tuple[list[Item], Any]:
    """A page of a list already sorted by ``key`` (ascending): the first ``limit`` items
    whose key is past ``after`` (all, for ``None``), and the key the next page starts
    after (``None``: this is the last page). For the lists built in memory (ledger views)."""
    rest = [item for item in items if after is None or key(item) > after]
    page = rest[:limit]
    return page, key(page[-1]) if len(rest) > limit else None


def next_url(request: Request, cursor: str) -> str:
    """This request's path and query with ``cursor`` set (relative, as RFC 8288 allows)."""
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
    query = request.url.replace(query="").include_query_params(**dict(params), cursor=cursor)
    return f"{query.path}?{query.query}"
