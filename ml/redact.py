"""Keeping secrets out of everything the pipeline prints: settings, service status, logs, task logs and errors.

What counts as a secret:

- the password of every URL (``postgresql://user:PASSWORD@host/db``, ``redis://:PASSWORD@host``,
  ``redis://user:PASSWORD@host``) and credential-like query parameters (``?password=``, ``?token=``, ``?key=`` ...);
- webhook URLs as a whole (a Slack/Teams webhook's path *is* its credential): only scheme and host are shown;
- every :class:`pydantic.SecretStr` setting (e.g. ``api_jwt_secret``) and every setting whose name says it holds a
  secret (``*password*``, ``*secret*``, ``*token*``, ``*webhook*``, ``*_api_key``), except sha256 digests.

Masked values keep their shape where it helps an operator (``postgresql://pipeline:***@db:5432/propensity``) and
never carry any part or hash of the secret (a hash prefix of a short password invites offline guessing).

:func:`masked_settings` is what ``propensity settings`` prints; :func:`mask_url` / :func:`mask_text` mask one value
or a free text; :class:`RedactingFilter` is a :mod:`logging` filter that masks every known secret value and every
URL password in log records (``ml.observe.setup_logging`` installs it; DAG tasks also register the values with
Airflow's own task-log masker through ``dags/pipeline_common.py``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import SecretStr

MASK = "***"

# scheme://user:password@  or  scheme://:password@   (password = anything up to the last '@' before the host part)
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s'\"]*:)(?P<pw>[^@\s'\"]+)(?P<at>@)")
_SECRET_QUERY = re.compile(r"(?i)^(password|passwd|pwd|secret|token|access_token|api_key|apikey|key|auth|sig|signature)$")
_SECRET_NAME = re.compile(r"(?i)(password|passwd|secret|token|webhook|(^|_)api_key$|credential)")
_NOT_SECRET_NAME = re.compile(r"(?i)(hashes|digests?|_ttl|_timeout|_s$)")
_WEBHOOK_NAME = re.compile(r"(?i)webhook")
_MIN_SECRET_LEN = 4  # shorter values would mask ordinary words in log lines


def mask_url(url: str | None) -> str | None:
    """``url`` with its password (and credential-like query values) replaced by ``***``; other parts unchanged.

    Strings that are not URLs pass through :func:`mask_text` (which still masks embedded ``scheme://u:p@`` forms).
    """
    if url is None:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return mask_text(url)
    if not parts.scheme or not parts.netloc:
        return mask_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{MASK}@{host}"
        elif parts.scheme.startswith(("redis", "rediss", "unix")) and userinfo:
            netloc = f"{MASK}@{host}"  # redis://PASSWORD@host: a bare userinfo is the password
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_QUERY.match(k) for k, _ in pairs):
            query = urlencode([(k, MASK if _SECRET_QUERY.match(k) else v) for k, v in pairs], safe="*/:")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def mask_webhook(url: str | None) -> str | None:
    """A webhook URL reduced to ``scheme://host/***``: its path and query are the credential."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if not parts.scheme or not parts.hostname:
        return MASK
    return f"{parts.scheme}://{parts.hostname}/{MASK}"


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every ``secrets`` value and every URL password replaced by ``***``."""
    for value in sorted({s for s in secrets if s and len(s) >= _MIN_SECRET_LEN}, key=len, reverse=True):
        text = text.replace(value, MASK)
    return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK + m.group("at"), text)


def _is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name)) and not _NOT_SECRET_NAME.search(name)


def _mask_value(name: str, value: Any) -> Any:
    if isinstance(value, SecretStr):
        return MASK if value.get_secret_value() else ""
    if isinstance(value, str):
        if _WEBHOOK_NAME.search(name):
            return mask_webhook(value)
        if _is_secret_name(name):
            return MASK if value else value
        return mask_url(value) if "://" in value else value
    if isinstance(value, dict):
        return {k: _mask_value(f"{name}.{k}", v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(name, v) for v in value]
    return value


def masked_settings(settings: Any) -> dict[str, Any]:
    """The settings as a JSON-ready dict with every secret masked (what ``propensity settings`` prints)."""
    dumped = settings.model_dump(mode="json")  # SecretStr fields already dump as '**********'
    return {name: _mask_value(name, value) for name, value in dumped.items()}


def _url_secrets(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = []
    if parts.password:
        from urllib.parse import unquote

        found += [parts.password, unquote(parts.password)]
    elif parts.username and parts.scheme.startswith(("redis", "unix")) and "@" in parts.netloc:
        found.append(parts.username)
    found += [v for k, v in parse_qsl(parts.query) if _SECRET_QUERY.match(k)]
    return found


def secret_values(settings: Any) -> list[str]:
    """Every secret string the settings hold (URL passwords, webhook URLs and their paths, SecretStr values and
    secret-named fields), for log filters and Airflow's task-log masker. Never printed."""
    values: list[str] = []

    def visit(name: str, value: Any) -> None:
        if isinstance(value, SecretStr):
            values.append(value.get_secret_value())
        elif isinstance(value, str) and value:
            if _WEBHOOK_NAME.search(name):
                values.append(value)
                path = urlsplit(value).path if "://" in value else ""
                if len(path) > 1:
                    values.append(path)
            elif _is_secret_name(name):
                values.append(value)
            if "://" in value:
                values.extend(_url_secrets(value))
        elif isinstance(value, dict):
            for k, v in value.items():
                visit(f"{name}.{k}", v)
        elif isinstance(value, list | tuple):
            for v in value:
                visit(name, v)

    for name in type(settings).model_fields:
        visit(name, getattr(settings, name))
    return sorted({v for v in values if v and len(v) >= _MIN_SECRET_LEN})


class RedactingFilter(logging.Filter):
    """A handler filter that masks known secret values and every ``scheme://user:password@`` in log records.

    The record's message is rendered (``msg % args``) and replaced by its masked text, so secrets passed as
    arguments are caught too; exception texts are masked when they are formatted (see :meth:`mask`)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: set[str] = set()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        self.secrets |= {s for s in secrets if s and len(s) >= _MIN_SECRET_LEN}

    def mask(self, text: str) -> str:
        return mask_text(text, self.secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logged as it is, never dropped
            return True
        masked = self.mask(message)
        if masked != message or record.args:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.mask(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        return True


_FILTER = RedactingFilter()


def log_filter() -> RedactingFilter:
    """The process-wide filter (one instance, so secrets registered later reach every handler it sits on)."""
    return _FILTER


def register_secrets(settings: Any) -> list[str]:
    """Add the settings' secrets to the process-wide log filter; returns them (for Airflow's masker)."""
    values = secret_values(settings)
    _FILTER.add(values)
    return values
