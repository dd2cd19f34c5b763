"""ingest_files validates the next files while earlier ones load (docs/ingest.md, "Performance"), in a forked child
process by default: the row-count band of a file is first computed as if the files before it loaded; when one turns
out not to load (here: a duplicate delivery, found only at load time), the next files are judged against the band of
the files really loaded, exactly as one file at a time would. The child and the in-thread path give the same
outcome file for file; a child that dies costs only the file it held."""

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


@pytest.mark.parametrize("child", [True, False], ids=["child-process", "thread"])
def test_next_file_is_judged_by_the_files_really_loaded(own_engine, rees46_sample: Path, tmp_path: Path,
                                                        child: bool) -> None:
    url, engine = own_engine
    s = Settings(postgres_url=url, state_dir=tmp_path / "state", data_docs_enabled=False, row_count_min_history=2,
                 row_count_history_files=2, row_count_tolerance=2.0, row_count_check_severity="critical",
                 ingest_validation_process=child)
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
    # d: 180 new events, validated while b and c are still in the loader's hands: outside the band that counts b as
    # loaded, inside the band of what is really loaded by then (c and a2: [175, 700]).
    b, c, d = write("b.csv", rows[100:600][::-1]), write("c.csv", rows[600:800]), write("d.csv", rows[800:980])
    results = ingest_files([b, c, d], s, engine)
    assert [r.status for r in results] == ["quarantined", "loaded", "loaded"], [r.message for r in results]
    assert results[0].failed_rules == ["duplicate_delivery"]
    assert [r.rows_loaded for r in results[1:]] == [200, 180]
    with engine.connect() as conn:
        bands = conn.execute(sa.text(
            "select file_name, results from quality.validation_runs where file_name in ('c.csv', 'd.csv')"
            " and success order by validation_id")).all()
    assert [b.file_name for b in bands] == ["c.csv", "d.csv"]  # one passing record each, with the true band
    observed = {b.file_name: next(r for r in b.results if r["rule"] == "row_count_vs_trailing_average")
                for b in bands}
    assert "[150, 600]" in observed["c.csv"]["description"] and "[175, 700]" in observed["d.csv"]["description"]


def _outcome(results) -> list[tuple]:
    import re

    def unclocked(line: str) -> str:  # the not-in-the-future rule names the validation time: seconds apart
        return re.sub(r"<= \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "<= (now + skew)", line)

    return [(r.file_name, r.status, r.failed_rules, [unclocked(f) for f in r.failures], r.rows_loaded, r.row_count)
            for r in results]


def test_child_process_and_thread_give_the_same_outcome(server_pg_url: str, rees46_sample: Path,
                                                        tmp_path: Path) -> None:
    """Every kind of bad file the generator makes, a good file and a byte-identical re-delivery, ingested once with
    the validating child process and once in this process (each into its own database): the same statuses, failed
    rules, failure lines (with their sample rows), row counts and loaded events."""
    import shutil

    from ml.db import create_database, drop_database
    from ml.dev.generate import CORRUPTION_KINDS, corrupt_file

    base = tmp_path / "base.csv"
    base.write_bytes(b"\n".join(rees46_sample.read_bytes().split(b"\n")[:701]) + b"\n")
    files = {"good.csv": base.read_bytes()}
    for kind in CORRUPTION_KINDS:
        files[f"{kind}.csv"] = corrupt_file(base, tmp_path / "bad" / f"{kind}.csv", kind, seed=3).read_bytes()
    files["zz_again.csv"] = base.read_bytes()
    outcomes, events = [], []
    for child in (True, False):
        name = f"pipeline_{uuid.uuid4().hex[:10]}"
        url = create_database(server_pg_url, name)
        engine = make_engine(url)
        try:
            s = Settings(postgres_url=url, state_dir=tmp_path / f"state_{child}", data_docs_enabled=False,
                         row_count_min_history=10**6, ingest_validation_process=child)
            landing = Path(s.location("landing"))
            shutil.rmtree(landing, ignore_errors=True)
            landing.mkdir(parents=True)
            for fname, data in files.items():
                (landing / fname).write_bytes(data)
            paths = sorted(str(p) for p in landing.iterdir())
            outcomes.append(_outcome(ingest_files(paths, s, engine)))
            with engine.connect() as conn:
                events.append(conn.execute(sa.text(
                    "select count(*), md5(string_agg(concat_ws('|', event_time, event_type, product_id, category_id,"
                    " category_code, brand, price, user_id, user_session, line_no), ',' order by file_id, line_no))"
                    " from raw.events")).one())
        finally:
            engine.dispose()
            drop_database(server_pg_url, name)
    statuses = {o[0]: o[1] for o in outcomes[0]}
    assert statuses["good.csv"] == "loaded" and statuses["zz_again.csv"] == "duplicate"
    assert sum(st == "quarantined" for st in statuses.values()) >= len(CORRUPTION_KINDS) - 1
    assert outcomes[0] == outcomes[1]
    assert events[0] == events[1] and events[0][0] > 700


def test_a_dead_child_costs_only_the_file_it_held(own_engine, rees46_sample: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The validating child dies (as if killed for memory) on one file: that file fails with an error naming it and
    stays in landing for a retry; the files before and after it load (the next one in a new child)."""
    import os

    import ml.ingest

    url, engine = own_engine
    s = Settings(postgres_url=url, state_dir=tmp_path / "state", data_docs_enabled=False,
                 row_count_min_history=10**6)
    landing = Path(s.location("landing"))
    landing.mkdir(parents=True)
    header, *rows = rees46_sample.read_bytes().rstrip(b"\n").split(b"\n")
    for i, name in enumerate(["a.csv", "b_dies.csv", "c.csv"]):
        (landing / name).write_bytes(b"\n".join([header, *rows[i * 100:(i + 1) * 100]]) + b"\n")
    parent = os.getpid()
    check = ml.ingest._check

    def dying_check(raw, settings, runner, **kw):
        if kw["name"] == "b_dies.csv" and os.getpid() != parent:
            os._exit(9)
        return check(raw, settings, runner, **kw)

    monkeypatch.setattr(ml.ingest, "_check", dying_check)  # the forked child sees the patched module
    results = ingest_files(sorted(str(p) for p in landing.iterdir()), s, engine)
    assert [r.status for r in results] == ["loaded", "error", "loaded"], [r.message for r in results]
    assert "b_dies.csv" in results[1].message and "died" in results[1].message
    assert [p.name for p in landing.iterdir()] == ["b_dies.csv"]
    monkeypatch.setattr(ml.ingest, "_check", check)
    (retry,) = ingest_files(ml.ingest.discover_files(s), s, engine)
    assert retry.status == "loaded" and retry.rows_loaded == 100


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


def test_a_killed_ingest_leaves_no_child_behind(own_engine, rees46_sample: Path, tmp_path: Path) -> None:
    """kill -9 of the ingest process while its forked child validates: the child notices it is orphaned and exits
    (it would otherwise wait forever on its task pipe, holding its memory)."""
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    url, _ = own_engine
    header, *rows = rees46_sample.read_bytes().rstrip(b"\n").split(b"\n")
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"k{i}.csv")
        paths[-1].write_bytes(b"\n".join([header, *rows[i * 50:(i + 1) * 50]]) + b"\n")
    pid_file = tmp_path / "child.pid"
    script = textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        import ml.ingest
        from ml.db import make_engine
        from ml.settings import Settings

        def slow_check(raw, settings, runner, **kw):  # in the child: say who we are, then take our time
            Path({str(pid_file)!r}).write_text(str(os.getpid()))
            time.sleep(120)

        ml.ingest._check = slow_check
        s = Settings(postgres_url={url!r}, state_dir=Path({str(tmp_path / "state")!r}), data_docs_enabled=False)
        ml.ingest.ingest_files({[str(p) for p in paths]!r}, s, make_engine({url!r}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, "the child never started validating"
            time.sleep(0.1)
        child = int(pid_file.read_text())
        assert child != proc.pid and Path(f"/proc/{child}").exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 15
    while Path(f"/proc/{child}").exists() and Path(f"/proc/{child}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline, f"child {child} still alive 15 s after its parent was killed"
        time.sleep(0.2)
