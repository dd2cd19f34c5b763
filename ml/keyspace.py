"""The Redis key space of published scores: key names, value formats and the reader protocol. Shared by the writer
(:mod:`ml.publish`) and the read-only API (:mod:`ml.api`); it imports neither, nor Redis.

Key layout (``P`` = ``settings.redis_prefix``, ``V`` = a version id, ``U`` = a user id; every value is UTF-8 text)::

    P:current          string  the served version id, e.g. "17". One SET flips it: the only key readers must follow.
    P:versions         zset    version id -> version id: every complete version still stored (rollback targets).
    P:seq              string  counter handing out version ids (INCR); ids only grow.
    P:lock             string  lock held by publish / rollback / cleanup; it expires only if its holder died.
    P:monitor          hash    pipeline health for Prometheus (max_psi, open_alerts, realized metrics per model
                               version, ...): written by ml.monitor.push_monitor_summary, read by the API's /metrics.
    P:v{V}:meta        hash    version, score_date, model_version, run_id, scored_pairs, users, pairs, reasons, top_n,
                               min_probability, published_at (ISO-8601 UTC), previous (version served before V).
    P:v{V}:reasons     hash    reason id -> JSON ["code", "text"]: the version's dictionary of reasons.
    P:v{V}:u:{U}       zset    product_id -> probability: the user's top-N hot products (ZREVRANGE for best first).
    P:v{V}:d:{U}       hash    product_id -> "tier|rid,rid,..." (reason ids into P:v{V}:reasons, strongest first).
    P:v{V}:a:{U}       string  the user's experiment arm (variant) when V was scored during an A/B experiment; absent
                               for users outside it. P:v{V}:meta then has experiment_id and arms (JSON arm -> model
                               version; model_version is the control's, the champion).
    P:xp:{E}:{A}:{D}:users     HyperLogLog of users served arm A of experiment E on UTC day D (YYYYMMDD), and
    P:xp:{E}:{A}:{D}:requests  counter of those responses: written by the API (PFADD, INCR, EXPIRE), moved to
                               experiments.exposures daily. The only keys the API writes (ACL: ``%W~P:xp:*``).

Reading (the API and any storefront do the same): ``GET P:current`` -> V; then ``ZREVRANGE P:v{V}:u:{U} 0 n-1
WITHSCORES`` and ``HGETALL P:v{V}:d:{U}`` (same slot, so one pipeline, even on a cluster); reason ids resolve through
``HMGET P:v{V}:reasons`` and version facts through ``HGETALL P:v{V}:meta`` (both immutable: cache them per version).
Every lookup is a chain of single-key commands, so it works unchanged on Redis Cluster. The ``{U}`` hash tag puts
both keys of one user in one slot while users spread over all slots; a per-version tag (``{P:vV}``) was rejected
because it would put a whole version, millions of keys, on one node.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ml.errors import ConfigError

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


@dataclass(frozen=True)
class KeySpace:
    """Every Redis key name this project uses, derived from one prefix. The only place key names are built."""

    prefix: str

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "{} \t\r\n"):
            raise ConfigError(f"redis_prefix {self.prefix!r} must be non-empty, without braces or whitespace")

    def current(self) -> str:
        return f"{self.prefix}:current"

    def versions(self) -> str:
        return f"{self.prefix}:versions"

    def seq(self) -> str:
        return f"{self.prefix}:seq"

    def lock(self) -> str:
        return f"{self.prefix}:lock"

    def monitor(self) -> str:
        """Hash of pipeline health figures for the API's /metrics (issue 13, written by ml.monitor)."""
        return f"{self.prefix}:monitor"

    def meta(self, version: int) -> str:
        return f"{self.prefix}:v{version}:meta"

    def reasons(self, version: int) -> str:
        return f"{self.prefix}:v{version}:reasons"

    def recs(self, version: int, user_id: int) -> str:
        return f"{self.prefix}:v{version}:u:{{{user_id}}}"

    def details(self, version: int, user_id: int) -> str:
        return f"{self.prefix}:v{version}:d:{{{user_id}}}"

    def arm(self, version: int, user_id: int) -> str:
        """The user's experiment arm in version ``version`` (same slot as the user's other keys)."""
        return f"{self.prefix}:v{version}:a:{{{user_id}}}"

    def exposure_users(self, experiment_id: str, arm: str, day: str) -> str:
        """HyperLogLog of users served ``arm`` of ``experiment_id`` on ``day`` (YYYYMMDD, UTC). The ``{E}`` hash
        tag keeps one experiment in one slot, so a PFCOUNT over several days works on a cluster."""
        return f"{self.prefix}:xp:{{{experiment_id}}}:{arm}:{day}:users"

    def exposure_requests(self, experiment_id: str, arm: str, day: str) -> str:
        """Counter of responses that served ``arm`` of ``experiment_id`` on ``day`` (YYYYMMDD, UTC)."""
        return f"{self.prefix}:xp:{{{experiment_id}}}:{arm}:{day}:requests"

    def exposure_glob(self) -> str:
        """The pattern of every exposure key (the API's only write permission: ACL ``%W~<this>``)."""
        return _GLOB_SPECIAL.sub(r"\\\1", self.prefix) + ":xp:*"

    def version_glob(self) -> str:
        """SCAN MATCH pattern covering every key of every version (never the pointer, registry, seq or lock)."""
        return _GLOB_SPECIAL.sub(r"\\\1", self.prefix) + ":v[0-9]*"

    def version_of(self, key: bytes | str) -> int | None:
        """The version a key belongs to, or None if it is not a per-version key of this prefix."""
        text = key.decode() if isinstance(key, bytes) else key
        head = f"{self.prefix}:v"
        if not text.startswith(head):
            return None
        digits, sep, _ = text[len(head) :].partition(":")
        return int(digits) if sep and digits.isdigit() else None


def encode_details(tier: str, reason_ids: Iterable[int]) -> str:
    """The per-pair payload stored in ``P:v{V}:d:{U}``: ``"tier|rid,rid"`` (``"hot|"`` when there are no reasons)."""
    return tier + "|" + ",".join(map(str, reason_ids))


def decode_details(payload: bytes | str) -> tuple[str, list[int]]:
    """Inverse of :func:`encode_details`: (tier, reason ids strongest first)."""
    text = payload.decode() if isinstance(payload, bytes) else payload
    tier, _, ids = text.partition("|")
    return tier, [int(i) for i in ids.split(",")] if ids else []


def encode_reason(code: str, text: str) -> str:
    """One entry of ``P:v{V}:reasons``: compact JSON ``["code","text"]`` (UTF-8 kept as is)."""
    return json.dumps([code, text], ensure_ascii=False, separators=(",", ":"))


def decode_reason(raw: bytes | str | None) -> tuple[str, str]:
    """Inverse of :func:`encode_reason`: (code, text); ``("", "")`` for a missing entry (``None``)."""
    if raw is None:
        return "", ""
    code, text = json.loads(raw)
    return code, text
