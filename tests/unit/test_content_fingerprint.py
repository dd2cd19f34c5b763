"""The content fingerprint (issue 15): the same events give the same fingerprint whatever the bytes; any change of
an event changes it. Real REES46 rows from tests/data."""

from __future__ import annotations

import gzip
import io
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from ml.events_io import content_fingerprint, read_events
from ml.settings import Settings


def _fp(data: bytes, fmt: str = "csv", compression: str | None = None) -> str:
    parsed = read_events(data, fmt, Settings(), compression)
    assert parsed.table is not None and all(r.success for r in parsed.structure), parsed.structure
    return content_fingerprint(parsed.table)


def test_same_events_same_fingerprint_any_encoding(rees46_sample: Path) -> None:
    lines = [x.rstrip(b"\r") for x in rees46_sample.read_bytes().split(b"\n")[:301]]
    header, rows = lines[0], lines[1:]
    base = _fp(b"\n".join(lines) + b"\n")
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    assert _fp(b"\r\n".join([header, *shuffled]) + b"\r\n") == base
    assert _fp(gzip.compress(b"\n".join(lines) + b"\n"), compression="gzip") == base
    table = pcsv.read_csv(io.BytesIO(b"\n".join(lines) + b"\n"),
                          convert_options=pcsv.ConvertOptions(column_types={"user_session": pa.string()}))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    assert _fp(buf.getvalue(), "parquet") == base
    upper = [header, *rows]
    upper[1] = upper[1][:-36] + upper[1][-36:].upper()  # the uuid's case is not content
    assert _fp(b"\n".join(upper) + b"\n") == base


def test_any_changed_dropped_or_repeated_event_changes_it(rees46_sample: Path) -> None:
    lines = [x.rstrip(b"\r") for x in rees46_sample.read_bytes().split(b"\n")[:301]]
    base = _fp(b"\n".join(lines) + b"\n")
    assert _fp(b"\n".join(lines[:-1]) + b"\n") != base
    assert _fp(b"\n".join([*lines, lines[5]]) + b"\n") != base
    changed = lines[:]
    changed[7] = changed[7].replace(b",view,", b",cart,") if b",view," in changed[7] else changed[7] + b"0"
    assert _fp(b"\n".join(changed) + b"\n") != base


def test_fingerprint_is_the_one_stored_for_files_loaded_before(rees46_sample: Path) -> None:
    """raw.ingested_files keeps fingerprints computed by earlier versions: the value must not change. The reference
    is the first definition (one Python string per row and text column, hashed by pandas)."""
    import hashlib

    import numpy as np
    import pandas as pd
    import pyarrow.compute as pc

    from ml.events_io import FINGERPRINT_COLUMNS

    lines = [x.rstrip(b"\r") for x in rees46_sample.read_bytes().split(b"\n")[:301]]
    table = read_events(b"\n".join(lines) + b"\n", "csv", Settings()).table
    assert table is not None
    cols = {}
    for name in FINGERPRINT_COLUMNS:
        col = table.column(name)
        if name == "event_time":
            cols[name] = pc.cast(col, pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
        elif name in ("product_id", "category_id", "user_id", "price"):
            cols[name] = col.to_numpy()
        else:
            col = pc.utf8_lower(col) if name == "user_session" else col
            cols[name] = pd.Series(col.to_pandas(), dtype=object).fillna("\x00null").to_numpy()
    hashes = np.sort(pd.util.hash_pandas_object(pd.DataFrame(cols), index=False).to_numpy(dtype=np.uint64))
    h = hashlib.sha256(np.int64(len(hashes)).tobytes())
    h.update(hashes.tobytes())
    assert table.column("brand").null_count and table.column("user_session").null_count < table.num_rows
    assert content_fingerprint(table) == h.hexdigest()
