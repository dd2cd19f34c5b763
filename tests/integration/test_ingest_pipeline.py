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


def test_two_loaders_of_one_new_day_both_load_and_the_rollups_stay_exact(own_engine) -> None:
    """Two files of the same new day loading at the same moment: one creates the day's tables (index-free, attached
    at its commit), the other waits on the day's lock, then finds the partitions and adds its rows and rollups to
    them. Both load; one partition per table; the rollups equal a rebuild from raw.events."""
    import datetime as dt
    import threading

    import pandas as pd

    from ml.dev.generate import GeneratorConfig, generate_events
    from ml.events_load import events_table_from_frame, load_events_table

    _, engine = own_engine
    frame = generate_events(GeneratorConfig(start=dt.date(2024, 5, 2), days=1, n_users=400, n_products=150, seed=4))
    halves = [frame.iloc[0::2], frame.iloc[1::2]]
    barrier = threading.Barrier(2)
    outcome: dict[int, object] = {}

    def load(i: int) -> None:
        table = events_table_from_frame(halves[i].reset_index(drop=True))
        record = {"file_name": f"half{i}.csv", "file_uri": f"half{i}.csv", "checksum_sha256": uuid.uuid4().hex,
                  "file_format": "csv", "row_count": table.num_rows, "min_event_time": None, "max_event_time": None,
                  "validation_id": None}
        barrier.wait()
        try:
            outcome[i] = load_events_table(engine, table, file_record=record)
        except Exception as e:  # noqa: BLE001 - asserted below
            outcome[i] = e

    threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(o, tuple) for o in outcome.values()), outcome
    assert sorted(o[1] for o in outcome.values()) == sorted(len(h) for h in halves)  # type: ignore[index]
    rollups = ("rollup_pair_day", "rollup_user_session_day", "rollup_product_day")

    def snapshot() -> dict[str, pd.DataFrame]:
        out = {}
        with engine.connect() as c:
            for t in rollups:
                f = pd.read_sql_query(sa.text(f"select * from raw.{t}"), c)
                if "sessions" in f:
                    f["sessions"] = f["sessions"].map(lambda a: tuple(sorted(str(u) for u in a)))
                f = f.astype({"user_session": str}) if "user_session" in f else f
                out[t] = f.sort_values(list(f.columns[:3])).reset_index(drop=True)
        return out

    with engine.connect() as c:
        parts = c.execute(sa.text(
            "select p.relname, count(*) from pg_inherits i join pg_class p on p.oid = i.inhparent"
            " join pg_class k on k.oid = i.inhrelid where p.relname in ('events', :a, :b, :c) group by 1"
        ), dict(zip("abc", rollups, strict=True))).all()
        assert c.execute(sa.text("select count(*) from raw.events")).scalar_one() == len(frame)
    assert sorted(parts) == sorted([("events", 1), *((t, 1) for t in rollups)])
    incremental = snapshot()
    assert incremental["rollup_pair_day"]["events"].sum() == len(frame)
    with engine.begin() as c:
        c.execute(sa.text("select raw.rollups_rebuild_days(null)"))
    rebuilt = snapshot()
    for t in rollups:
        pd.testing.assert_frame_equal(incremental[t], rebuilt[t], check_dtype=False, obj=t)
