"""Validation of event files: structural rules, typed parsing and the GX suite, on the real sample and small files."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import struct
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml.settings import Settings
from ml.validate import (
    EVENT_COLUMNS,
    GxRunner,
    parse_event_time,
    parse_float64,
    parse_int64,
    row_count_bounds,
    validate_bytes,
)

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
HEADER = ",".join(EVENT_COLUMNS)
ROW = "2019-10-01 00:00:{s:02d} UTC,view,{pid},2053013555631882655,electronics.smartphone,xiaomi,{price},{uid},{sess}"

@pytest.fixture(scope="module")
def runner() -> GxRunner:
    return GxRunner(docs_dir=None)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(state_dir=tmp_path_factory.mktemp("state"))


def _rows(n: int, start: int = 0) -> list[str]:
    return [
        ROW.format(s=i % 60, pid=1000 + i, price=f"{10 + i}.50", uid=500000 + i, sess=uuid.UUID(int=i + 1))
        for i in range(start, start + n)
    ]


def _csv(lines: list[str], header: str = HEADER, end: str = "\n") -> bytes:
    return (end.join([header, *lines]) + end).encode()


def _validate(data: bytes, cfg: Settings, runner: GxRunner, fmt: str = "csv", **kw):
    return validate_bytes(data, cfg, file_name=f"t.{fmt}", file_format=fmt, now=NOW, runner=runner, **kw)


def _rule(report, name: str):
    return next(r for r in report.rules if r.rule == name)


def test_real_sample_passes_unchanged(rees46_sample: Path, cfg: Settings, runner: GxRunner) -> None:
    report, parsed = _validate(rees46_sample.read_bytes(), cfg, runner)
    assert report.success, report.failure_lines()
    assert report.warnings == []
    assert report.row_count == parsed.table.num_rows == 17_434
    assert parsed.table.column("line_no").to_pylist()[:2] == [2, 3]
    assert report.min_event_time == dt.datetime(2019, 10, 1, tzinfo=dt.UTC)
    assert report.max_event_time == dt.datetime(2019, 10, 1, 2, 50, tzinfo=dt.UTC)
    # the real sample's empty rates sit well inside the thresholds: calibrated on real data
    nulls = {r.rule: r.failing_count for r in report.rules if r.rule.endswith("_null_ratio")}
    assert nulls == {"category_code_null_ratio": 5_746, "brand_null_ratio": 2_477, "user_session_null_ratio": 0}
    assert _rule(report, "duplicate_rows").failing_count == 5  # real exact repeats, 0.03% < 1%
    assert {r.rule for r in report.rules} >= {"columns_match", "event_time_not_future", "user_session_uuid"}


def test_failure_names_file_row_field_rule(cfg: Settings, runner: GxRunner) -> None:
    lines = _rows(6)
    lines[3] = lines[3].replace(",10", ",abc", 1).replace("13.50", "-2.00")
    report, _ = _validate(_csv(lines), cfg, runner)
    price = _rule(report, "price_range")
    assert not price.success and price.field == "price" and price.failing_count == 1
    assert price.samples[0]["line"] == 5 and price.samples[0]["value"] == -2.0
    assert "-2.00" in price.samples[0]["row"]
    assert report.failure_lines() == [
        "t.csv: rule product_id_type field product_id: 1 of 6 rows fail (lines 5) - product_id is present and "
        "parses as a 64-bit integer",
        "t.csv: rule price_range field price: 1 of 6 rows fail (lines 5) - price is >= 0 and < 1,000,000",
    ]
    text = report.summary_text()
    assert "[price_range] field price" in text and "line 5: value=-2.0" in text
    assert "[product_id_type] field product_id" in text and "line 5: value='abc03'" in text


def test_quoted_fields_crlf_bom_and_line_numbers(cfg: Settings, runner: GxRunner) -> None:
    lines = _rows(4)
    lines[1] = lines[1].replace(",xiaomi,", ',"brand, with comma ""and"" quote",')
    lines[2] = lines[2].replace(",xiaomi,", ',"two\nlines",')
    data = b"\xef\xbb\xbf" + _csv(lines, end="\r\n")
    report, parsed = _validate(data, cfg, runner)
    assert report.success, report.failure_lines()
    assert parsed.table.column("brand").to_pylist()[1:3] == ['brand, with comma "and" quote', "two\nlines"]
    # the multi-line value spans lines 4-5, so the next row is on line 6
    assert parsed.table.column("line_no").to_pylist() == [2, 3, 4, 6]


def test_blank_and_short_lines_fail_field_count_with_line_numbers(cfg: Settings, runner: GxRunner) -> None:
    lines = _rows(5)
    lines.insert(2, "")
    lines[4] = lines[4].rsplit(",", 2)[0]  # two fields short
    data = _csv(lines) + b"\n\n"  # trailing blank lines at the end carry nothing and are ignored
    report, parsed = _validate(data, cfg, runner)
    rule = _rule(report, "field_count")
    assert not rule.success and rule.failing_count == 2
    assert [s["line"] for s in rule.samples] == [4, 6]
    assert parsed.table.column("line_no").to_pylist() == [2, 3, 5, 7]


def test_reordered_columns_pass_duplicate_header_fails(cfg: Settings, runner: GxRunner) -> None:
    df = pd.read_csv(io.BytesIO(_csv(_rows(3))), dtype=str, keep_default_na=False)
    reordered = df[list(reversed(EVENT_COLUMNS))].to_csv(index=False).encode()
    report, parsed = _validate(reordered, cfg, runner)
    assert report.success, report.failure_lines()
    assert parsed.table.column("price").to_pylist() == [10.5, 11.5, 12.5]
    dup = HEADER.replace("user_session", "price")
    report, _ = _validate(_csv(_rows(3), header=dup), cfg, runner)
    cols = _rule(report, "columns_match")
    assert not cols.success and cols.observed == {"missing": ["user_session"], "unexpected": ["price.1"]}


def test_nul_bytes_and_bad_gzip_are_named(cfg: Settings, runner: GxRunner) -> None:
    lines = _rows(3)
    lines[1] = lines[1].replace("xiaomi", "xia\x00omi")
    report, _ = _validate(_csv(lines), cfg, runner)
    assert report.failed_rules == ["encoding_utf8"] and _rule(report, "encoding_utf8").samples[0]["line"] == 3
    report, _ = _validate(gzip.compress(_csv(_rows(3))), cfg, runner, compression="gzip")
    assert report.success and report.row_count == 3
    report, _ = _validate(b"not gzip at all", cfg, runner, compression="gzip")
    assert report.failed_rules == ["file_readable"]


def test_thresholds_come_from_settings(cfg: Settings, runner: GxRunner) -> None:
    lines = [line.replace(",xiaomi,", ",,") for line in _rows(10)]
    data = _csv(lines)
    report, _ = _validate(data, cfg, runner)
    assert report.failed_rules == ["brand_null_ratio"]  # 100% empty > 50%
    relaxed = cfg.model_copy(update={"max_null_ratio_brand": 1.0, "price_cap": 15.0})
    report, _ = _validate(data, relaxed, runner)
    assert report.failed_rules == ["price_range"]  # 15.50 .. 19.50 >= cap 15
    assert _rule(report, "price_range").failing_count == 5


def test_row_count_against_trailing_average(cfg: Settings, runner: GxRunner) -> None:
    assert row_count_bounds(None, 0, cfg) is None
    assert row_count_bounds(1000.0, 2, cfg) is None  # fewer than row_count_min_history (3) files
    assert row_count_bounds(1000.0, 3, cfg) == (100, 10_000)
    data = _csv(_rows(5))
    report, _ = _validate(data, cfg, runner, row_count_bounds=(100, 10_000))
    rule = _rule(report, "row_count_vs_trailing_average")
    assert report.failed_rules == ["row_count_vs_trailing_average"] and rule.observed == 5
    warn = cfg.model_copy(update={"row_count_check_severity": "warning"})
    report, _ = _validate(data, warn, runner, row_count_bounds=(100, 10_000))
    assert report.success and [r.rule for r in report.warnings] == ["row_count_vs_trailing_average"]


def test_parquet_typed_and_string_columns(tmp_path: Path, cfg: Settings, runner: GxRunner) -> None:
    df = pd.read_csv(io.BytesIO(_csv(_rows(4))), dtype=str, keep_default_na=False)
    typed = pa.table(
        {
            "event_time": pa.array(pd.to_datetime(df.event_time, format="%Y-%m-%d %H:%M:%S UTC", utc=True)),
            "event_type": df.event_type,
            "product_id": df.product_id.astype("int64"),
            "category_id": df.category_id.astype("int64"),
            "category_code": df.category_code,
            "brand": pa.array([None, "a", "b", "c"]),
            "price": df.price.astype(float),
            "user_id": df.user_id.astype("int32"),
            "user_session": df.user_session,
        }
    )
    buf = io.BytesIO()
    pq.write_table(typed, buf)
    report, parsed = _validate(buf.getvalue(), cfg, runner, fmt="parquet")
    assert report.success, report.failure_lines()
    assert parsed.table.column("line_no").to_pylist() == [1, 2, 3, 4]
    assert parsed.table.column("user_id").type == pa.int64()
    # all-string Parquet with a bad id: named by row number
    df.loc[2, "product_id"] = "12x"
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf)
    report, _ = _validate(buf.getvalue(), cfg, runner, fmt="parquet")
    assert report.failed_rules == ["product_id_type"]
    assert _rule(report, "product_id_type").samples[0] | {"row": None} == {"line": 3, "value": "12x", "row": None}
    df.loc[2, "product_id"] = "12"
    df.loc[3, "brand"] = "nul\x00byte"
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf)
    report, _ = _validate(buf.getvalue(), cfg, runner, fmt="parquet")
    assert report.failed_rules == ["encoding_utf8"] and _rule(report, "encoding_utf8").samples[0]["line"] == 4
    report, _ = _validate(b"PAR1 garbage", cfg, runner, fmt="parquet")
    assert report.failed_rules == ["file_readable"]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", 1),
        ("007", 7),
        ("9223372036854775807", 2**63 - 1),
        ("9223372036854775808", None),
        ("-5", None),
        ("+5", None),
        ("1.0", None),
        ("", None),
        ("12 ", None),
        ("٣", None),
    ],
)
def test_parse_int64(text: str, value: int | None) -> None:
    vals, ok = parse_int64(pa.array([text]))
    assert vals.to_pylist() == [value] and ok.to_pylist() == [value is not None]


@pytest.mark.parametrize(
    ("text", "value"),
    [("35.79", 35.79), ("-2", -2.0), ("1e3", 1000.0), (".5", 0.5), ("inf", None), ("nan", None), ("1,5", None),
     ("1e999", None), ("", None)],
)
def test_parse_float64(text: str, value: float | None) -> None:
    vals, ok = parse_float64(pa.array([text]))
    assert vals.to_pylist() == [value] and ok.to_pylist() == [value is not None]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2019-10-01 00:00:00 UTC", dt.datetime(2019, 10, 1, tzinfo=dt.UTC)),
        ("2019-10-01T03:04:05Z", dt.datetime(2019, 10, 1, 3, 4, 5, tzinfo=dt.UTC)),
        ("2019-10-01T03:04:05.5+02:00", dt.datetime(2019, 10, 1, 1, 4, 5, 500000, tzinfo=dt.UTC)),
        ("2019-10-01 03:04:05", None),  # no zone: ambiguous
        ("2019-13-01 00:00:00 UTC", None),
        ("not a timestamp", None),
        ("", None),
    ],
)
def test_parse_event_time(text: str, value: dt.datetime | None) -> None:
    vals, ok = parse_event_time(pa.array([text, "2019-10-01 00:00:00 UTC"]))
    assert vals.to_pylist()[0] == value and ok.to_pylist()[0] == (value is not None)


# --- the binary COPY encoder, checked against an independent decoder of PostgreSQL's format -------------------------
def _decode_copy_binary(data: bytes) -> list[tuple]:
    assert data[:11] == b"PGCOPY\n\xff\r\n\x00"
    pos = 19
    rows = []
    while True:
        (n,) = struct.unpack_from(">h", data, pos)
        pos += 2
        if n == -1:
            assert pos == len(data)
            return rows
        fields = []
        for _ in range(n):
            (length,) = struct.unpack_from(">i", data, pos)
            pos += 4
            fields.append(None if length == -1 else data[pos : pos + length])
            pos += max(length, 0)
        rows.append(tuple(fields))


def test_encode_events_binary_matches_the_protocol() -> None:
    from ml.events_load import COPY_COLUMNS, encode_events_binary, events_table_from_frame

    df = pd.DataFrame(
        {
            "event_time": pd.to_datetime(["2019-10-01 00:00:01", "2019-10-02 23:59:59.5"], utc=True, format="ISO8601"),
            "event_type": ["view", "purchase"],
            "product_id": [1, 2**62],
            "category_id": [2053013555631882655, 3],
            "category_code": ["a.b", None],
            "brand": ["café", ""],
            "price": [35.79, 0.0],
            "user_id": [7, 8],
            "user_session": ["72D76FDE-8bb3-4e00-8c23-a032dfed738c", None],
        }
    )
    table = events_table_from_frame(df, line_start=10)
    data = b"".join(encode_events_binary(table, file_id=42, chunk_rows=1))
    rows = _decode_copy_binary(data)
    assert len(rows) == 2 and all(len(r) == len(COPY_COLUMNS) for r in rows)
    got = [dict(zip(COPY_COLUMNS, r, strict=True)) for r in rows]
    pg_epoch = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    us = struct.unpack(">q", got[1]["event_time"])[0]
    assert pg_epoch + dt.timedelta(microseconds=us) == dt.datetime(2019, 10, 2, 23, 59, 59, 500000, tzinfo=dt.UTC)
    assert struct.unpack(">q", got[1]["product_id"])[0] == 2**62
    assert struct.unpack(">q", got[0]["category_id"])[0] == 2053013555631882655
    assert struct.unpack(">d", got[0]["price"])[0] == 35.79
    assert struct.unpack(">q", got[0]["file_id"])[0] == 42
    assert [struct.unpack(">i", g["line_no"])[0] for g in got] == [10, 11]
    assert got[0]["user_session"] == uuid.UUID("72d76fde-8bb3-4e00-8c23-a032dfed738c").bytes
    assert got[1]["user_session"] is None
    assert (got[0]["event_type"], got[1]["event_type"]) == (b"view", b"purchase")
    assert got[0]["brand"] == "café".encode() and got[1]["brand"] is None  # empty text is NULL
    assert got[0]["category_code"] == b"a.b" and got[1]["category_code"] is None


def test_uuid_bytes_rejects_malformed() -> None:
    from ml.events_load import uuid_bytes

    ok, valid = uuid_bytes(pa.array([str(uuid.UUID(int=5)), None]))
    assert ok[0].tobytes() == uuid.UUID(int=5).bytes and valid.tolist() == [True, False]
    with pytest.raises(ValueError, match="uuid"):
        uuid_bytes(pa.array(["zzzzzzzz-8bb3-4e00-8c23-a032dfed738c"]))
    assert np.all(ok[1] == 0)


def _reference_copy_rows(rows: list[dict], types: dict[str, str]) -> bytes:
    """Binary COPY rows encoded one value at a time with struct, the protocol written out plainly."""
    pg_epoch = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    out = bytearray()
    for row in rows:
        out += struct.pack(">h", len(types))
        for name, pg_type in types.items():
            v = row[name]
            if v is None:
                out += struct.pack(">i", -1)
                continue
            body = {
                "int8": lambda x: struct.pack(">q", x),
                "int4": lambda x: struct.pack(">i", x),
                "float8": lambda x: struct.pack(">d", x),
                "timestamptz": lambda x: struct.pack(">q", (x - pg_epoch) // dt.timedelta(microseconds=1)),
                "date": lambda x: struct.pack(">i", (x - dt.date(2000, 1, 1)).days),
                "text": lambda x: x.encode(),
                "uuid": lambda x: uuid.UUID(x).bytes,
            }[pg_type](v)
            out += struct.pack(">i", len(body)) + body
    return bytes(out)


@pytest.mark.parametrize("with_nulls", [False, True], ids=["no-nulls", "nulls"])
@pytest.mark.parametrize("chunk_rows", [1, 3, 1000])
def test_encode_binary_equals_the_plain_protocol(with_nulls: bool, chunk_rows: int) -> None:
    """Columns without NULLs are packed into one record per row, columns with NULLs go value by value: either way
    the bytes are exactly the protocol's, whatever the chunking."""
    from ml.events_load import encode_binary
    from ml.pgcopy import COPY_HEADER, COPY_TRAILER

    types = {"a": "int8", "t": "timestamptz", "s": "uuid", "x": "text", "d": "date", "n": "int4", "f": "float8"}
    rng = np.random.default_rng(3)
    rows = []
    for i in range(7):
        rows.append({
            "a": int(rng.integers(-2**62, 2**62)), "n": int(rng.integers(-2**31, 2**31)), "f": float(rng.normal()),
            "t": dt.datetime(2019, 10, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=int(rng.integers(0, 10**12))),
            "s": str(uuid.UUID(int=int(rng.integers(0, 2**62)) * 7)).upper(), "x": f"brand é {i}" * (i % 3),
            "d": dt.date(2019, 10, 1) + dt.timedelta(days=i),
        })
        if with_nulls and i % 3 == 1:
            rows[-1].update(t=None, s=None, x=None, n=None)
    table = pa.table({
        "a": pa.array([r["a"] for r in rows], pa.int64()), "n": pa.array([r["n"] for r in rows], pa.int32()),
        "f": pa.array([r["f"] for r in rows], pa.float64()),
        "t": pa.array([r["t"] for r in rows], pa.timestamp("us", tz="UTC")),
        "s": pa.array([r["s"] for r in rows], pa.string()), "x": pa.array([r["x"] for r in rows], pa.string()),
        "d": pa.array([r["d"] for r in rows], pa.date32()),
    })
    got = b"".join(encode_binary(table, types, chunk_rows=chunk_rows))
    assert got == COPY_HEADER + _reference_copy_rows(rows, types) + COPY_TRAILER
