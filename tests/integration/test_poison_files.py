"""Issue 15 (3): every bad file is quarantined with a report naming file, line and reason, never a crash; the other
files of the run still load; the next run does not see the bad ones again (real PostgreSQL, real files)."""

from __future__ import annotations

import gzip
import io
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml.ingest import discover_files, ingest_files

pytestmark = pytest.mark.integration


def _good(sample: Path, rows: int = 60) -> bytes:
    lines = sample.read_bytes().split(b"\n")[: rows + 1]
    lines[1] = lines[1].replace(b",shiseido,", f",p{uuid.uuid4().hex[:8]},".encode())  # unique content
    return b"\n".join(lines) + b"\n"


def _bad_parquet() -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"a": list(range(100))}), buf)
    return buf.getvalue()[:-30]


def test_every_poison_file_is_quarantined_and_the_good_one_loads(settings, engine, rees46_sample: Path) -> None:
    cfg = settings.model_copy(update={"row_count_min_history": 10**6, "data_docs_enabled": False})
    landing = Path(cfg.location("landing"))
    landing.mkdir(parents=True)
    good = _good(rees46_sample)
    poison = {
        "random.csv": (os.urandom(4000), {"file_type"}),
        "utf16.csv": (good.decode().encode("utf-16"), {"file_type"}),
        "latin1.csv": (good.replace(b"samsung", "s\u00e4msung".encode("latin-1")), {"encoding_utf8"}),
        "cr_only.csv": (good.replace(b"\n", b"\r"), {"line_endings"}),
        "mixed_endings.csv": (good.replace(b"\n", b"\r", 7), {"line_endings"}),
        "gzip_named_plain.csv": (gzip.compress(good), {"file_type"}),
        "nul_bytes.csv": (good.replace(b"view", b"vi\x00w", 2), {"encoding_utf8"}),
        "truncated.csv": (good[:-25], {"last_line_complete"}),
        "empty.csv": (b"", {"file_not_empty"}),
        "header_only.csv": (good.split(b"\n")[0] + b"\n", {"row_count_positive"}),
        "broken.parquet": (_bad_parquet(), {"file_readable"}),
        "broken.csv.gz": (gzip.compress(good)[:300], {"file_readable"}),
    }
    for name, (data, _) in poison.items():
        (landing / name).write_bytes(data)
    (landing / "good.csv").write_bytes(good)

    results = {r.file_name: r for r in ingest_files(discover_files(cfg), cfg, engine)}
    assert results["good.csv"].status == "loaded" and results["good.csv"].rows_loaded == 60
    for name, (_, rules) in poison.items():
        r = results[name]
        assert r.status == "quarantined", (name, r.status, r.message)
        assert rules <= set(r.failed_rules), (name, r.failed_rules)
        assert all(line.startswith(f"{name}: rule ") for line in r.failures), r.failures
        assert Path(r.quarantine_uri).exists() and Path(r.report_uri).exists()
    structural = [results[n] for n in ("random.csv", "cr_only.csv", "mixed_endings.csv", "gzip_named_plain.csv",
                                       "nul_bytes.csv", "truncated.csv")]
    assert all("line" in r.failures[0] for r in structural), [r.failures for r in structural]
    assert discover_files(cfg) == []  # nothing left in landing: the next run does not see them again
