"""Content fingerprints of files loaded before they existed (issue 15: exactly-once by content).

``raw.ingested_files.content_sha256`` (migration 0141) holds :func:`ml.events_io.content_fingerprint` of each
loaded file's events; ingest's ``duplicate_delivery`` rule compares a new file's fingerprint with it. Files loaded
before 0141 have none, so a re-delivery of one of them with other bytes (CRLF, another row order, Parquet) would
not be caught. The fingerprint is a function of the typed events only, and a file is loaded only when all its rows
pass validation, so it can be recomputed from the file's rows in ``raw.events``: :func:`backfill_fingerprints`
does so, file by file (one transaction each).

Called by ingest for the files whose event-time range overlaps a new file's (so a re-delivery is caught even before
any maintenance ran), by the weekly ``maintenance`` DAG and by ``propensity backfill-fingerprints`` for all of them.
A file whose rows are no longer all there (replaced, or trimmed by retention) is left without one (``incomplete``);
two old files holding the same events (a re-delivery loaded twice before 0141) are reported (``duplicate``): the
first keeps the fingerprint, the other is named so its rows can be removed.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ml.db import read_sql

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FingerprintBackfill:
    """The outcome for one file: ``status`` is ``filled`` (content_sha256 set), ``incomplete`` (raw.events no longer
    holds all ``row_count`` rows: left null) or ``duplicate`` (the same events as ``same_as``, another file: left
    null)."""

    file_id: int
    file_name: str
    status: str
    rows: int
    content_sha256: str | None = None
    same_as: tuple[int, str] | None = None

    def line(self) -> str:
        if self.status == "filled":
            return f"file_id {self.file_id} ({self.file_name}): content fingerprint {self.content_sha256[:16]}"
        if self.status == "incomplete":
            return (f"file_id {self.file_id} ({self.file_name}): raw.events holds {self.rows:,} of its rows, not all "
                    "(replaced or trimmed by retention); no fingerprint")
        other = f"file_id {self.same_as[0]} ({self.same_as[1]})" if self.same_as else "another file"
        return (f"file_id {self.file_id} ({self.file_name}): the same events as {other}, loaded twice before content "
                "fingerprints existed; no fingerprint (remove one of them)")


def backfill_fingerprints(engine: Engine, *, lo: dt.datetime | None = None, hi: dt.datetime | None = None,
                          limit: int | None = None) -> list[FingerprintBackfill]:
    """Compute and store the content fingerprint of every loaded file that has none (oldest first; with ``lo`` and
    ``hi``, only files whose event-time range overlaps [lo, hi]; at most ``limit`` files). Returns one outcome per
    file looked at (nothing when every file has one: a single indexed query)."""
    from ml.events_io import content_fingerprint

    with engine.connect() as c:
        files = c.execute(sa.text(read_sql("ingest/fingerprint_missing.sql")),
                          {"lo": lo, "hi": hi, "limit": limit}).all()
    out: list[FingerprintBackfill] = []
    for f in files:
        table = _file_events(engine, f.file_id, f.min_event_time, f.max_event_time)
        if table.num_rows != f.row_count:
            out.append(FingerprintBackfill(f.file_id, f.file_name, "incomplete", table.num_rows))
            log.warning(out[-1].line())
            continue
        content = content_fingerprint(table)
        try:
            with engine.begin() as c:
                same = _holder(c, content)
                if same is None:
                    c.execute(sa.text("update raw.ingested_files set content_sha256 = :c where file_id = :f"
                                      " and content_sha256 is null"), {"c": content, "f": f.file_id})
        except sa.exc.IntegrityError:  # a concurrent ingest or backfill stored the same fingerprint first
            with engine.connect() as c:
                same = _holder(c, content)
        if same is None:
            out.append(FingerprintBackfill(f.file_id, f.file_name, "filled", table.num_rows, content))
            log.info(out[-1].line())
        else:
            out.append(FingerprintBackfill(f.file_id, f.file_name, "duplicate", table.num_rows, content,
                                           (int(same.file_id), str(same.file_name))))
            log.warning(out[-1].line())
    return out


def _holder(conn: sa.Connection, content: str) -> sa.Row | None:
    return conn.execute(sa.text("select file_id, file_name from raw.ingested_files where content_sha256 = :c"),
                        {"c": content}).first()


def _file_events(engine: Engine, file_id: int, lo: dt.datetime | None, hi: dt.datetime | None):  # noqa: ANN202
    """The typed events of one loaded file from raw.events (the columns content_fingerprint hashes), as Arrow."""
    import pandas as pd
    import pyarrow as pa

    with engine.connect() as c:
        frame = pd.read_sql(sa.text(read_sql("ingest/fingerprint_file_events.sql")), c,
                            params={"file_id": file_id, "lo": lo, "hi": hi})
    return pa.Table.from_pandas(frame, preserve_index=False)
