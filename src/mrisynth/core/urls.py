"""Passwords in URLs (pure): found, so a parameter can refuse one, and masked, so no log, MLflow param,
tag or error message shows one."""
from __future__ import annotations

import re

_URL_PASSWORD = re.compile(r"^(?P<head>[a-zA-Z][\w+.-]*://[^/:@]*:)(?P<password>.*)(?P<tail>@[^@]*)$")
_QUERY_PASSWORD = re.compile(r"(?i)([?&](?:password|passwd|pwd)=)[^&]*")


def url_password(url: str) -> str | None:
    """The password of a scheme://user:password@host URL, or of a ?password= query, None when it has none
    (parsed as SQLAlchemy does for database URLs, so an unencoded '/' in a password is found too)."""
    if not isinstance(url, str) or "://" not in url:
        return None
    query = _QUERY_PASSWORD.search(url)
    if query:
        return url[query.end(1):query.end()] or None
    match = _URL_PASSWORD.match(url)
    return match["password"] if match and match["password"] else None


def mask_url(url: str) -> str:
    """The URL with any password (user:password@ or ?password=) replaced by ***, for logs, params, tags, errors."""
    if not url_password(url):
        return url
    url = _QUERY_PASSWORD.sub(lambda m: f"{m[1]}***", url)
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}" if m["password"] else m[0], url)
