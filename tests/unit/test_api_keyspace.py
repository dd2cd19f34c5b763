"""The Redis key scheme shared by the publisher, the API and storefront readers (no server needed)."""

from __future__ import annotations

import fnmatch
import json

import pytest

from ml.api import _validation_message
from ml.errors import ConfigError
from ml.keyspace import KeySpace, decode_details, decode_reason, encode_details, encode_reason


def test_keys_of_one_user_share_a_hash_tag_and_versions_stay_apart() -> None:
    ks = KeySpace("prop")
    assert ks.current() == "prop:current"
    assert ks.recs(17, 42) == "prop:v17:u:{42}" and ks.details(17, 42) == "prop:v17:d:{42}"
    assert ks.meta(17) == "prop:v17:meta" and ks.reasons(17) == "prop:v17:reasons"
    assert ks.recs(17, 42) != ks.recs(18, 42)


@pytest.mark.parametrize(
    ("key", "version"),
    [("prop:v17:meta", 17), ("prop:v3:u:{42}", 3), (b"prop:v120:d:{1}", 120), ("prop:versions", None),
     ("prop:current", None), ("prop:v:meta", None), ("prop:v12", None), ("other:v1:meta", None),
     ("prop2:v1:meta", None)],
)
def test_version_of_parses_only_per_version_keys(key, version) -> None:
    assert KeySpace("prop").version_of(key) == version


def test_version_glob_matches_version_keys_only_and_escapes_the_prefix() -> None:
    ks = KeySpace("a*b")
    pattern = ks.version_glob()
    assert pattern == "a\\*b:v[0-9]*"
    # fnmatch has no backslash escapes; check the unescaped shape on a plain prefix instead
    plain = KeySpace("prop").version_glob()
    assert fnmatch.fnmatchcase("prop:v1:u:{2}", plain) and not fnmatch.fnmatchcase("prop:versions", plain)


@pytest.mark.parametrize("prefix", ["", "a{b", "x}", "has space"])
def test_prefixes_that_break_hash_tags_or_globs_are_refused(prefix) -> None:
    with pytest.raises(ConfigError):
        KeySpace(prefix)


@pytest.mark.parametrize(("tier", "ids"), [("hot", [3, 1, 20]), ("cold", []), ("warm", [7])])
def test_details_payload_round_trips(tier, ids) -> None:
    payload = encode_details(tier, ids)
    assert decode_details(payload) == (tier, ids) == decode_details(payload.encode())


@pytest.mark.parametrize(("code", "text"), [("CART_RECENT", "added to cart 2 times"), ("X", 'ünïcode, "quoted"')])
def test_reason_entry_round_trips_as_compact_json(code, text) -> None:
    raw = encode_reason(code, text)
    assert raw == json.dumps([code, text], ensure_ascii=False, separators=(",", ":"))
    assert decode_reason(raw) == (code, text) == decode_reason(raw.encode())
    assert decode_reason(None) == ("", "")


def test_validation_message_names_every_field() -> None:
    line, fields = _validation_message(
        [{"loc": ("path", "user_id"), "msg": "bad int", "type": "int_parsing", "input": "x"},
         {"loc": ("query", "limit"), "msg": "too big", "type": "less_than_equal"}]
    )
    assert line == "path.user_id: bad int; query.limit: too big"
    assert [f.loc for f in fields] == [["path", "user_id"], ["query", "limit"]]


@pytest.mark.parametrize(
    "reply",
    [[[b"7", 0.5], [b"3", 0.25]], [b"7", b"0.5", b"3", b"0.25"]],
    ids=["resp3-nested", "resp2-flat"],
)
def test_raw_withscores_replies_of_both_protocols_parse_alike(reply) -> None:
    from ml.api import _score_pairs

    assert _score_pairs(reply) == [(b"7", 0.5), (b"3", 0.25)]
