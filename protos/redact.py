"""One place that hides secrets in URLs before they are printed or logged.

Agent and controller both print broker and database URLs; ``redact_url`` keeps the user name
(useful to tell accounts apart) and replaces a password with ``***``. It lives in ``protos/``
because both sides import it and ``protos`` is the one package both may depend on.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

MASK = "***"


def redact_url(url: str | None) -> str:
    """``mqtt://ctl:s3cret@host:1883`` -> ``mqtt://ctl:***@host:1883``; other URLs unchanged.

    A string that does not parse as a URL is returned with everything before an ``@`` masked,
    so a malformed URL never leaks its password either."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        password, username = parts.password, parts.username
    except ValueError:
        return MASK + url[url.rindex("@") :] if "@" in url else url
    if password is None:
        return url
    host = parts.netloc.rpartition("@")[2]  # host[:port] as written (even a malformed port)
    netloc = f"{username or ''}:{MASK}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def without_credentials(url: str) -> str:
    """The URL with no user and no password at all (what agents are told about a broker)."""
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def with_credentials(url: str, username: str, password: str) -> str:
    """``mqtt://host:1883`` -> ``mqtt://username:password@host:1883`` (both percent-encoded);
    any user already in the URL is replaced."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
