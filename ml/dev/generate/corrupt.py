"""Corrupt copies of a REES46 CSV, one defect each (:data:`CORRUPTION_KINDS`), to exercise ingest validation and
quarantine."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ml.dev.generate.files import _write_atomic
from ml.schema import REES46_COLUMNS

CORRUPTION_KINDS: tuple[str, ...] = (
    "missing_column",
    "extra_column",
    "wrong_type",
    "negative_price",
    "unknown_event_type",
    "unparseable_timestamp",
    "future_timestamp",
    "empty_file",
    "header_only",
    "truncated_last_line",
    "wrong_delimiter",
    "non_utf8",
    "huge_field",
    "sql_injection_brand",
    "duplicated_rows",
)
SQL_INJECTION_TEXT = "x'); drop table raw.events; --"
HUGE_FIELD_BYTES = 10 * 1024 * 1024


def _choose_rows(rng: np.random.Generator, n: int, share: float = 0.01, cap: int = 1000) -> np.ndarray:
    m = min(n, max(1, min(cap, math.ceil(n * share))))
    return np.sort(rng.choice(n, size=m, replace=False))


def corrupt_file(src: Path, dst: Path, kind: str, seed: int = 0) -> Path:
    """Copy the REES46 CSV ``src`` to ``dst`` with one defect of ``kind`` (one of :data:`CORRUPTION_KINDS`).

    Rows are chosen with ``seed`` (about 1 % of data rows, at least one); the line terminator of ``src`` is kept.

    - ``missing_column``: one column (chosen by seed) removed from header and rows.
    - ``extra_column``: a 10th column ``coupon_code`` appended.
    - ``wrong_type``: text in an integer or price column (column chosen by seed) of the chosen rows.
    - ``negative_price``: chosen rows' price negated (``-35.79``; ``-1.00`` for a zero price).
    - ``unknown_event_type``: chosen rows' event_type = ``wishlist``.
    - ``unparseable_timestamp``: chosen rows' event_time = ``not a timestamp``.
    - ``future_timestamp``: chosen rows' event_time moved to the year 2099 (valid format).
    - ``empty_file``: zero bytes. ``header_only``: the header line alone.
    - ``truncated_last_line``: the last line cut inside its third field, with no line terminator.
    - ``wrong_delimiter``: ``;`` instead of ``,`` everywhere.
    - ``non_utf8``: chosen rows' brand holds Latin-1 bytes (``caf\\xe9``), invalid as UTF-8.
    - ``huge_field``: one row's brand is a 10 MiB string.
    - ``sql_injection_brand``: a *valid* file whose chosen rows' brand is :data:`SQL_INJECTION_TEXT`.
    - ``duplicated_rows``: 3 % of rows (at least 2) repeated right after themselves: duplicate ratio > 1 %.

    ``src`` needs at least one data row (except for ``empty_file``/``header_only``). Writes ``dst`` atomically
    and returns it. Raises ``ValueError`` for an unknown kind or an unusable ``src``."""
    if kind not in CORRUPTION_KINDS:
        raise ValueError(f"unknown corruption kind {kind!r}; choose from {', '.join(CORRUPTION_KINDS)}")
    src, dst = Path(src), Path(dst)
    raw = src.read_bytes()
    first_nl = raw.find(b"\n")
    term = "\r\n" if first_nl > 0 and raw[first_nl - 1 : first_nl] == b"\r" else "\n"
    text = raw.decode("utf-8")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows or tuple(rows[0]) != REES46_COLUMNS:
        raise ValueError(f"{src}: not a REES46 CSV (header {rows[0] if rows else None})")
    header, body = rows[0], rows[1:]
    rng = np.random.default_rng(seed)

    def dump(hdr: list[str], data: Iterable[list[str]], delimiter: str = ",") -> bytes:
        buf = io.StringIO(newline="")
        w = csv.writer(buf, delimiter=delimiter, lineterminator=term, quoting=csv.QUOTE_MINIMAL)
        w.writerow(hdr)
        w.writerows(data)
        return buf.getvalue().encode("utf-8")

    if kind == "empty_file":
        out = b""
    elif kind == "header_only":
        out = (",".join(REES46_COLUMNS) + term).encode()
    else:
        if not body:
            raise ValueError(f"{src}: needs at least one data row for {kind!r}")
        n = len(body)
        col = {c: i for i, c in enumerate(header)}
        if kind == "missing_column":
            drop = int(rng.integers(len(header)))
            out = dump([h for i, h in enumerate(header) if i != drop], ([v for i, v in enumerate(r) if i != drop]
                                                                         for r in body))
        elif kind == "extra_column":
            codes = ["", "SALE10", "WELCOME", "BF2019"]
            out = dump(header + ["coupon_code"], (r + [codes[int(x)]] for r, x in zip(body, rng.integers(0, 4, n))))
        elif kind == "wrong_type":
            target = ("product_id", "category_id", "price", "user_id")[int(rng.integers(4))]
            for i in _choose_rows(rng, n):
                body[i][col[target]] = "twelve"
            out = dump(header, body)
        elif kind == "negative_price":
            for i in _choose_rows(rng, n):
                p = body[i][col["price"]]
                body[i][col["price"]] = "-" + p if float(p) > 0 else "-1.00"
            out = dump(header, body)
        elif kind == "unknown_event_type":
            for i in _choose_rows(rng, n):
                body[i][col["event_type"]] = "wishlist"
            out = dump(header, body)
        elif kind == "unparseable_timestamp":
            for i in _choose_rows(rng, n):
                body[i][col["event_time"]] = "not a timestamp"
            out = dump(header, body)
        elif kind == "future_timestamp":
            for i in _choose_rows(rng, n):
                body[i][col["event_time"]] = "2099" + body[i][col["event_time"]][4:]
            out = dump(header, body)
        elif kind == "truncated_last_line":
            full = dump(header, body)
            last_start = full.rstrip(term.encode()).rfind(term.encode()) + len(term)
            last = full[last_start:]
            cut = last.index(b",", last.index(b",") + 1) + 1  # keep two fields and part of the third
            out = full[:last_start] + last[: cut + max(1, (last.find(b",", cut) - cut) // 2)]
        elif kind == "wrong_delimiter":
            out = dump(header, body, delimiter=";")
        elif kind == "non_utf8":
            marker = "\x00NONUTF8\x00"
            for i in _choose_rows(rng, n):
                body[i][col["brand"]] = marker
            out = dump(header, body).replace(marker.encode(), "café".encode("latin-1"))
        elif kind == "huge_field":
            body[int(rng.integers(n))][col["brand"]] = "x" * HUGE_FIELD_BYTES
            out = dump(header, body)
        elif kind == "sql_injection_brand":
            for i in _choose_rows(rng, n):
                body[i][col["brand"]] = SQL_INJECTION_TEXT
            out = dump(header, body)
        elif kind == "duplicated_rows":
            dup = set(_choose_rows(rng, n, share=0.03).tolist())
            if len(dup) < 2 and n >= 2:
                dup = {0, n - 1}
            out_rows: list[list[str]] = []
            for i, r in enumerate(body):
                out_rows.append(r)
                if i in dup:
                    out_rows.append(list(r))
            if n == 1:
                out_rows.append(list(body[0]))
            out = dump(header, out_rows)
        else:  # pragma: no cover - every kind is handled above
            raise AssertionError(kind)
    dst.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out, dst)
    return dst
