"""ingest_files validates file N+1 while file N loads (docs/ingest.md, "Performance"): the row-count band of N+1 is
first computed as if N loaded; when N turns out not to load (here: a duplicate delivery, found only at load time),
N+1 is judged against the band of the files really loaded, exactly as one file at a time would."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from ml.db import make_engine
from ml.ingest import ingest_files
from ml.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def own_engine(server_pg_url: str) -> Iterator[tuple[str, sa.Engine]]:
    """A private database: the row-count band reads the latest loaded files, which must be this test's."""
    from ml.db import create_database, drop_database

    name = f"pipeline_{uuid.uuid4().hex[:10]}"
    url = create_database(server_pg_url, name)
    eng = make_engine(url)
    yield url, eng
    eng.dispose()
    drop_database(server_pg_url, name)


def test_next_file_is_judged_by_the_files_really_loaded(own_engine, rees46_sample: Path, tmp_path: Path) -> None:
    url, engine = own_engine
    s = Settings(postgres_url=url, state_dir=tmp_path / "state", data_docs_enabled=False, row_count_min_history=2,
                 row_count_history_files=2, row_count_tolerance=2.0, row_count_check_severity="critical")
    header, *rows = rees46_sample.read_bytes().rstrip(b"\n").split(b"\n")

    def write(name: str, lines: list[bytes]) -> str:
        path = tmp_path / name
        path.write_bytes(b"\n".join([header, *lines]) + b"\n")
        return str(path)

    a1, a2 = write("a1.csv", rows[:100]), write("a2.csv", rows[100:600])
    assert [r.status for r in ingest_files([a1, a2], s, engine)] == ["loaded", "loaded"]
    # b: a2's 500 events in another order (other bytes): within the band [150, 600] of (500 + 100) / 2, it passes
    # validation, then is quarantined as a duplicate delivery. c: 200 new events: inside the band of the files really
    # loaded ([150, 600]), outside the band that counts b as loaded ([250, 1000]).
    b, c = write("b.csv", rows[100:600][::-1]), write("c.csv", rows[600:800])
    results = ingest_files([b, c], s, engine)
    assert [r.status for r in results] == ["quarantined", "loaded"], [r.message for r in results]
    assert results[0].failed_rules == ["duplicate_delivery"]
    assert results[1].rows_loaded == 200
