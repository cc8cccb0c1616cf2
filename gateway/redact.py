"""URLs without their secrets: userinfo is taken out of a URL before the URL reaches a message.

A URL such as ``http://user:pw@orthanc:8042`` is split once, where the client is built:
:func:`userinfo` gives the credentials (passed on as HTTP basic auth) and
:func:`redact_url` the URL every message, log line and stored error may carry.
:func:`redact_text` is the safety net for text that quotes a URL we did not build
(a library's exception message).
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

# scheme://userinfo@ inside any text; userinfo stops at the first '/', '@' or whitespace.
_USERINFO_IN_TEXT = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/@\s]+@")


def _netloc_without_userinfo(netloc: str) -> str:
    return netloc.rpartition("@")[2]


def redact_url(url: str) -> str:
    """``url`` without its userinfo (``user:password@``); any other URL unchanged.

    Parameters
    ----------
    url:
        An absolute URL, with or without credentials.

    Returns
    -------
    str
        The same URL with no ``user[:password]@`` part.
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=_netloc_without_userinfo(parts.netloc)))


def userinfo(url: str) -> tuple[str, str] | None:
    """The ``(user, password)`` a URL carries (percent-decoded), or ``None`` without any.

    A URL with a user and no password gives an empty password.
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc or parts.username is None:
        return None
    return unquote(parts.username), unquote(parts.password or "")


def redact_text(text: str) -> str:
    """``text`` with the userinfo of every URL it quotes taken out."""
    return _USERINFO_IN_TEXT.sub(r"\g<scheme>", text)
