"""Ingest against a real PostgreSQL: the real sample, re-runs, every kind of bad file, crashes, Parquet, requeue."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from ml.ingest import discover_files, ingest_file, ingest_files, load_events_frame, requeue

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# every corruption the generator makes, and the rule that must name it (None: valid, loads verbatim)
EXPECTED_RULES: dict[str, set[str] | None] = {
    "missing_column": {"columns_match"},
    "extra_column": {"columns_match"},
    "wrong_type": {"product_id_type", "category_id_type", "price_type", "user_id_type"},
    "negative_price": {"price_range"},
    "unknown_event_type": {"event_type_allowed"},
    "unparseable_timestamp": {"event_time_type"},
    "future_timestamp": {"event_time_not_future"},
    "empty_file": {"file_not_empty"},
    "header_only": {"row_count_positive"},
    "truncated_last_line": {"field_count", "last_line_complete"},
    "wrong_delimiter": {"delimiter"},
    "non_utf8": {"encoding_utf8"},
    "huge_field": {"brand_length"},
    "sql_injection_brand": None,
    "duplicated_rows": {"duplicate_rows"},
}


@pytest.fixture
def cfg(settings):
    """Test settings; the trailing-average check is off (the session database holds other tests' files) and so are
    Data Docs except where a test turns them on (they cost about a second per file on this machine)."""
    return settings.model_copy(update={"row_count_min_history": 10**6, "data_docs_enabled": False})


def _landing(cfg) -> Path:
    path = Path(cfg.location("landing"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _variant(src: Path, dst: Path, rows: int, tag: str) -> Path:
    """The header and the first ``rows`` real lines, with one brand renamed to ``tag``: a real file with its own
    checksum (the session database is shared by tests)."""
    lines = src.read_bytes().split(b"\n")[: rows + 1]
    lines[1] = lines[1].replace(b",shiseido,", f",{tag},".encode())
    dst.write_bytes(b"\n".join(lines) + b"\n")
    return dst


def _file_rows(engine, file_id: int) -> int:
    with engine.connect() as c:
        return c.execute(sa.text("select count(*) from raw.events where file_id = :f"), {"f": file_id}).scalar_one()


def test_real_sample_loads_exactly_and_rerun_is_a_noop(cfg, engine, rees46_sample: Path) -> None:
    cfg = cfg.model_copy(update={"data_docs_enabled": True})
    landing = _landing(cfg)
    shutil.copy(rees46_sample, landing / rees46_sample.name)
    assert discover_files(cfg) == [str(landing / rees46_sample.name)]
    (result,) = ingest_files(discover_files(cfg), cfg, engine)
    assert result.status == "loaded", result.message
    assert result.rows_loaded == result.row_count == 17_434
    assert _file_rows(engine, result.file_id) == 17_434
    with engine.connect() as c:
        stats = c.execute(
            sa.text(
                "select count(distinct user_id) users, count(distinct user_session) sessions,"
                " count(distinct product_id) products, count(*) filter (where category_code is null) no_code,"
                " count(*) filter (where brand is null) no_brand, min(line_no) lo, max(line_no) hi,"
                " sum(price)::numeric(12, 2) price_sum from raw.events where file_id = :f"
            ),
            {"f": result.file_id},
        ).one()
        rec = c.execute(
            sa.text("select * from raw.ingested_files where file_id = :f"), {"f": result.file_id}
        ).one()
        run = c.execute(
            sa.text("select * from quality.validation_runs where validation_id = :v"), {"v": rec.validation_id}
        ).one()
    # PROVENANCE.md: 4,504 users, 5,066 sessions, 6,493 products; 5,746 empty category_code, 2,477 empty brand
    assert (stats.users, stats.sessions, stats.products) == (4_504, 5_066, 6_493)
    assert (stats.no_code, stats.no_brand, stats.lo, stats.hi) == (5_746, 2_477, 2, 17_435)
    expected_sum = pd.read_csv(rees46_sample, usecols=["price"])["price"].sum()
    assert float(stats.price_sum) == pytest.approx(expected_sum, abs=0.01)
    assert rec.checksum_sha256 == "6b4691437a204c13d461783838103862a2e6620c5db3be2e94ba4f9c7eb7f0c4"
    assert rec.row_count == 17_434 and rec.file_format == "csv"
    assert run.success and run.suite_name == "raw_events" and run.row_count == 17_434
    assert {r["rule"] for r in run.results} >= {"columns_match", "price_range", "user_session_uuid"}
    assert run.statistics["rows"] == 17_434
    assert run.data_docs_uri and Path(run.data_docs_uri.removeprefix("file://")).is_file()
    # landing is empty, the file is archived
    assert list(landing.iterdir()) == []
    archived = Path(cfg.location("archive")) / rees46_sample.name
    assert archived.read_bytes() == rees46_sample.read_bytes()

    # re-delivery (same bytes, landing again) and a direct re-run on the archived copy load nothing
    shutil.copy(rees46_sample, landing / "redelivered.csv")
    again = ingest_files([*discover_files(cfg), str(archived)], cfg, engine)
    assert [(r.status, r.rows_loaded, r.file_id) for r in again] == [("duplicate", 0, result.file_id)] * 2
    assert _file_rows(engine, result.file_id) == 17_434
    with engine.connect() as c:
        n = c.execute(
            sa.text("select count(*) from raw.ingested_files where checksum_sha256 = :c"), {"c": rec.checksum_sha256}
        ).scalar_one()
    assert n == 1
    assert list(landing.iterdir()) == [] and archived.exists()


def test_bad_files_quarantined_good_files_still_load(cfg, engine, rees46_sample: Path, tmp_path: Path) -> None:
    from ml.dev.generate import CORRUPTION_KINDS, SQL_INJECTION_TEXT, corrupt_file


    assert set(CORRUPTION_KINDS) == set(EXPECTED_RULES)
    landing = _landing(cfg)
    base = _variant(rees46_sample, tmp_path / "base.csv", 600, f"t{uuid.uuid4().hex[:8]}")
    shutil.copy(base, landing / "good.csv")
    originals = {}
    for kind in CORRUPTION_KINDS:
        originals[kind] = corrupt_file(base, tmp_path / "bad" / f"{kind}.csv", kind, seed=11).read_bytes()
        (landing / f"{kind}.csv").write_bytes(originals[kind])
    results = {r.file_name: r for r in ingest_files(discover_files(cfg), cfg, engine)}
    assert len(results) == len(CORRUPTION_KINDS) + 1

    good = results["good.csv"]
    assert good.status == "loaded" and _file_rows(engine, good.file_id) == 600
    inj = results["sql_injection_brand.csv"]
    assert inj.status == "loaded", inj.message
    with engine.connect() as c:
        brands = c.execute(
            sa.text("select count(*) from raw.events where file_id = :f and brand = :b"),
            {"f": inj.file_id, "b": SQL_INJECTION_TEXT},
        ).scalar_one()
        assert brands == 6  # 1% of 600 rows, stored verbatim
        assert c.execute(sa.text("select to_regclass('raw.events') is not null")).scalar_one()

    quarantine = Path(cfg.location("quarantine"))
    for kind, expected in EXPECTED_RULES.items():
        if expected is None:
            continue
        r = results[f"{kind}.csv"]
        assert r.status == "quarantined", (kind, r.message)
        failed = set(r.failed_rules)
        assert (len(failed) == 1 and failed <= expected) if kind == "wrong_type" else expected <= failed, (kind, failed)
        assert f"{kind}.csv" in r.message and all(rule in r.message for rule in r.failed_rules)
        assert r.rows_loaded == 0 and r.file_id is None
        assert (quarantine / f"{kind}.csv").read_bytes() == originals[kind]  # kept unchanged
        report = json.loads((quarantine / f"{kind}.csv.report.json").read_text())
        assert report["success"] is False and report["failed_rules"] == r.failed_rules
        summary = (quarantine / f"{kind}.csv.summary.txt").read_text()
        assert all(f"[{rule}]" in summary for rule in r.failed_rules)
    # a row-level failure names its lines in the summary
    summary = (quarantine / "negative_price.csv.summary.txt").read_text()
    assert "[price_range] field price" in summary and "failing: 6 of 600 rows" in summary and "  line " in summary

    with engine.connect() as c:
        loaded = set(
            c.execute(
                sa.text("select file_name from raw.ingested_files where file_id = any(:ids)"),
                {"ids": [r.file_id for r in results.values() if r.file_id]},
            ).scalars()
        )
        runs = c.execute(
            sa.text(
                "select file_name, success, failed_rules, quarantine_uri from quality.validation_runs"
                " where validation_id = any(:ids)"
            ),
            {"ids": [r.validation_id for r in results.values()]},
        ).all()
    assert loaded == {"good.csv", "sql_injection_brand.csv"}
    assert len(runs) == len(results)
    for run in runs:
        r = results[run.file_name]
        assert run.success == (r.status == "loaded") and list(run.failed_rules) == r.failed_rules
        assert (run.quarantine_uri is not None) == (r.status == "quarantined")
    assert list(landing.iterdir()) == []  # everything was processed: archived or quarantined


def test_quarantine_keeps_original_bytes_and_requeue_revalidates(cfg, engine, rees46_sample: Path, tmp_path) -> None:
    from ml.dev.generate import corrupt_file

    landing = _landing(cfg)
    base = _variant(rees46_sample, tmp_path / "base.csv", 300, f"r{uuid.uuid4().hex[:8]}")
    bad = corrupt_file(base, tmp_path / "pricey.csv", "negative_price", seed=2)
    shutil.copy(bad, landing / "pricey.csv")
    r = ingest_file(landing / "pricey.csv", cfg, engine)
    assert r.status == "quarantined" and r.failed_rules == ["price_range"]
    q = Path(r.quarantine_uri)
    assert q.read_bytes() == bad.read_bytes() and not (landing / "pricey.csv").exists()
    with pytest.raises(Exception, match=r"pricey\.csv: validation failed \(price_range\)"):
        r.raise_for_status()

    # the same bytes again are quarantined again (not loaded); the quarantine keeps one copy per content
    shutil.copy(bad, landing / "pricey.csv")
    assert ingest_file(landing / "pricey.csv", cfg, engine).quarantine_uri == str(q)

    # requeue moves it back to landing and drops the report files; the checksum makes nothing special of it
    dst = requeue("pricey.csv", cfg)
    assert Path(dst) == landing / "pricey.csv" and not q.exists() and not Path(str(q) + ".report.json").exists()
    with pytest.raises(Exception, match="no such quarantined file"):
        requeue("pricey.csv", cfg)
    lenient = cfg.model_copy(update={"price_cap": 1e9})
    still_bad = ingest_file(landing / "pricey.csv", lenient, engine)  # negative prices stay invalid
    assert still_bad.status == "quarantined"


def _counts(engine) -> tuple[int, int]:
    with engine.connect() as c:
        return (
            c.execute(sa.text("select count(*) from raw.events")).scalar_one(),
            c.execute(sa.text("select count(*) from raw.ingested_files")).scalar_one(),
        )


def test_crash_between_validation_and_commit_leaves_nothing(
    cfg, engine, rees46_sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The load fails after validation, half-way through the COPY: no rows, no file record, the file stays in landing
    (validation is recorded), and the next run loads it exactly once."""
    import ml.events_load as ingest  # the module that owns the COPY

    landing = _landing(cfg)
    path = _variant(rees46_sample, landing / "crash.csv", 2000, f"c{uuid.uuid4().hex[:8]}")
    before = _counts(engine)
    real = ingest.encode_events_binary

    def failing(table, file_id, chunk_rows=ingest.COPY_CHUNK_ROWS):
        for i, chunk in enumerate(real(table, file_id, chunk_rows=500)):
            if i == 3:  # header + two chunks of rows already sent
                raise RuntimeError("injected crash")
            yield chunk

    monkeypatch.setattr(ingest, "encode_events_binary", failing)
    with pytest.raises(RuntimeError, match="injected crash"):
        ingest_file(path, cfg, engine)
    assert _counts(engine) == before
    with engine.connect() as c:
        validated = c.execute(
            sa.text("select count(*) from quality.validation_runs where file_name = 'crash.csv' and success")
        ).scalar_one()
    assert validated == 1 and path.exists()

    monkeypatch.setattr(ingest, "encode_events_binary", real)
    result = ingest_file(path, cfg, engine)
    assert result.status == "loaded" and result.rows_loaded == 2000
    assert _file_rows(engine, result.file_id) == 2000
    assert _counts(engine) == (before[0] + 2000, before[1] + 1)
    assert not path.exists()


def test_killed_process_mid_copy_leaves_nothing(cfg, engine, rees46_sample: Path, tmp_path: Path) -> None:
    """A real crash: the loading process exits after every row went over the wire, before COMMIT."""
    from ml.ingest import ensure_partitions, event_days
    from ml.validate import read_events

    path = _variant(rees46_sample, tmp_path / "killed.csv", 1500, f"k{uuid.uuid4().hex[:8]}")
    ensure_partitions(engine, event_days(read_events(path.read_bytes(), "csv", cfg).table))
    before = _counts(engine)
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        import ml.events_load as ingest
        from ml.db import make_engine
        from ml.settings import Settings
        from ml.validate import read_events

        real = ingest.encode_events_binary

        def crashing(table, file_id, chunk_rows=ingest.COPY_CHUNK_ROWS):
            yield from real(table, file_id, chunk_rows=500)  # every row is on the wire ...
            os._exit(3)                                      # ... and the process dies before COMMIT

        ingest.encode_events_binary = crashing
        s = Settings()
        parsed = read_events(Path({str(path)!r}).read_bytes(), "csv", s)
        table = parsed.table.select([*ingest.COPY_COLUMNS[:5], "event_type", "category_code", "brand",
                                     "user_session", "line_no"])
        record = dict(file_name="killed.csv", file_uri="killed.csv", checksum_sha256={uuid.uuid4().hex!r},
                      file_format="csv", row_count=table.num_rows, min_event_time=None, max_event_time=None,
                      validation_id=None)
        ingest.load_events_table(make_engine({cfg.postgres_url!r}), table, file_record=record)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert _counts(engine) == before


def test_parquet_and_gzip_files_load(cfg, engine, tmp_path: Path) -> None:
    from ml.dev.generate import GeneratorConfig, generate_events, write_daily_files

    df = generate_events(GeneratorConfig(days=2, n_users=60, n_products=120, seed=int(uuid.uuid4().int % 10**6)))
    landing = _landing(cfg)
    paths = write_daily_files(df, landing, formats=("csv", "parquet"))
    gz = Path(str(paths[0]) + ".gz")
    import gzip

    gz.write_bytes(gzip.compress(paths[0].read_bytes()))
    paths[0].unlink()
    # day 1 as csv.gz, day 2 as Parquet; the Parquet copy of day 1 is a re-delivery of loaded events (issue 15)
    redelivery = tmp_path / paths[1].name
    shutil.move(paths[1], redelivery)
    paths[2].unlink()
    results = ingest_files(discover_files(cfg), cfg, engine)
    assert sorted(r.file_name for r in results) == sorted([gz.name, paths[3].name])
    assert all(r.status == "loaded" for r in results), [r.message for r in results]
    day1 = df[df.event_time.dt.floor("D") == df.event_time.min().floor("D")]
    day2 = df[df.event_time.dt.floor("D") > df.event_time.min().floor("D")]
    by_name = {r.file_name: r for r in results}
    assert by_name[gz.name].rows_loaded == len(day1) and by_name[paths[3].name].rows_loaded == len(day2)
    pq_rows = pd.read_sql(
        sa.text("select * from raw.events where file_id = :f order by line_no"),
        engine,
        params={"f": by_name[paths[3].name].file_id},
    )
    src = day2.reset_index(drop=True)
    assert pq_rows.line_no.tolist() == list(range(1, len(src) + 1))
    assert pq_rows.user_id.tolist() == src.user_id.tolist()
    assert pq_rows.price.tolist() == pytest.approx(src.price.tolist())
    assert (pq_rows.event_time == src.event_time).all()
    assert pq_rows.user_session.astype(str).tolist() == src.user_session.astype(str).tolist()
    again = ingest_file(redelivery, cfg, engine)
    assert again.status == "quarantined" and again.failed_rules == ["duplicate_delivery"], again.message


def test_row_count_against_trailing_average_uses_loaded_history(cfg, engine, rees46_sample: Path, tmp_path) -> None:
    strict = cfg.model_copy(update={"row_count_min_history": 1, "row_count_history_files": 1, "row_count_tolerance": 4})
    landing = _landing(strict)
    big = _variant(rees46_sample, landing / "big.csv", 400, f"h{uuid.uuid4().hex[:8]}")
    assert ingest_file(big, cfg, engine).status == "loaded"  # the latest loaded file: 400 rows -> band [100, 1600]
    small = _variant(rees46_sample, landing / "small.csv", 20, f"h{uuid.uuid4().hex[:8]}")
    r = ingest_file(small, strict, engine)
    assert r.status == "quarantined" and r.failed_rules == ["row_count_vs_trailing_average"]
    warn = strict.model_copy(update={"row_count_check_severity": "warning"})
    shutil.copy(r.quarantine_uri, landing / "small.csv")
    r = ingest_file(landing / "small.csv", warn, engine)
    assert r.status == "loaded" and r.rows_loaded == 20


def test_load_events_frame_creates_partitions(engine) -> None:
    df = pd.DataFrame(
        {
            "event_time": pd.to_datetime(["2031-03-01 23:59:59", "2031-03-02 00:00:00"], utc=True),
            "event_type": ["cart", "purchase"],
            "product_id": [11, 12],
            "category_id": [2053013555631882655, 2053013555631882655],
            "category_code": [None, "kids.toys"],
            "brand": ["Ünï'\"; --", None],
            "price": [0.0, 1.5],
            "user_id": [99, 99],
            "user_session": [None, "6A5B0E26-4C4D-4B79-9F3E-0D8B4C7A9E21"],
        }
    )
    assert load_events_frame(engine, df, file_id=-7) == 2
    with engine.connect() as c:
        rows = c.execute(
            sa.text("select tableoid::regclass::text part, brand, user_session::text s, line_no from raw.events"
                    " where file_id = -7 order by event_time")
        ).all()
    assert [r.part for r in rows] == ["raw.events_p20310301", "raw.events_p20310302"]
    assert rows[0].brand == "Ünï'\"; --" and rows[1].s == "6a5b0e26-4c4d-4b79-9f3e-0d8b4c7a9e21"
    assert [r.line_no for r in rows] == [1, 2]


def test_object_storage_locations(cfg, engine, rees46_sample: Path, tmp_path: Path) -> None:
    """Landing, archive and quarantine on an fsspec filesystem (memory:// stands in for s3://)."""
    import fsspec

    from ml.dev.generate import corrupt_file

    fs = fsspec.filesystem("memory")
    root = f"/t{uuid.uuid4().hex[:8]}"
    s = cfg.model_copy(update={"landing_url": f"memory://{root}/landing", "archive_url": f"memory://{root}/archive",
                               "quarantine_url": f"memory://{root}/quarantine"})
    good = _variant(rees46_sample, tmp_path / "obj.csv", 250, f"o{uuid.uuid4().hex[:8]}")
    bad = corrupt_file(good, tmp_path / "obj_bad.csv", "unparseable_timestamp", seed=1)
    fs.pipe(f"{root}/landing/2019/obj.csv", good.read_bytes())
    fs.pipe(f"{root}/landing/2019/obj_bad.csv", bad.read_bytes())
    results = {r.file_name: r for r in ingest_files(discover_files(s), s, engine)}
    assert results["obj.csv"].status == "loaded" and results["obj.csv"].rows_loaded == 250
    assert results["obj_bad.csv"].failed_rules == ["event_time_type"]
    assert fs.find(f"{root}/landing") == []
    assert fs.cat_file(f"{root}/archive/obj.csv") == good.read_bytes()
    assert fs.cat_file(f"{root}/quarantine/obj_bad.csv") == bad.read_bytes()
    report = json.loads(fs.cat_file(f"{root}/quarantine/obj_bad.csv.report.json"))
    assert report["failed_rules"] == ["event_time_type"] and report["quarantine_uri"].startswith("memory://")
    fs.rm(root, recursive=True)


def test_data_docs_for_failing_files_only(cfg, engine, rees46_sample: Path, tmp_path: Path) -> None:
    """data_docs_passed_files=false (the demo's setting): a file that passes gets no Data Docs page, a file that
    fails a rule still gets its page (the quarantine's evidence), and the report names it."""
    from ml.dev.generate import corrupt_file

    cfg = cfg.model_copy(update={"data_docs_enabled": True, "data_docs_passed_files": False})
    landing = _landing(cfg)
    good = _variant(rees46_sample, landing / "events_docs_good.csv", 300, "docsgood")
    base = _variant(rees46_sample, tmp_path / "events_docs_base.csv", 300, "docsbad")
    bad = corrupt_file(base, landing / "events_docs_bad.csv", "negative_price", seed=5)
    results = {Path(r.file_name).name: r for r in ingest_files([str(good), str(bad)], cfg, engine)}
    ok, failed = results["events_docs_good.csv"], results["events_docs_bad.csv"]
    assert ok.status == "loaded" and failed.status == "quarantined" and failed.failed_rules == ["price_range"]
    assert ok.data_docs_uri is None
    assert failed.data_docs_uri and Path(failed.data_docs_uri.removeprefix("file://")).is_file()
