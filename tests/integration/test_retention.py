"""Retention on a real, private database: old partitions and archived models' files go; the served score date,
recent days, the rollback target and the champion stay; a dry run changes nothing; the report counts bytes."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from ml.db import create_database, drop_database, make_engine
from ml.errors import ConfigError
from ml.retention import apply_retention, storage_footprint

pytestmark = pytest.mark.integration

TODAY = dt.date(2001, 6, 1)
D = dt.date


@pytest.fixture
def rdb(server_pg_url: str) -> Iterator[sa.Engine]:
    name = f"test_ret_{uuid.uuid4().hex[:8]}"
    eng = make_engine(create_database(server_pg_url, name))
    yield eng
    eng.dispose()
    drop_database(server_pg_url, name)


def _score_partition(conn: sa.Connection, day: dt.date, rows: int = 50) -> None:
    conn.execute(sa.text(
        f"create table scoring.scores_p{day:%Y%m%d} partition of scoring.scores "
        f"for values from ('{day}') to ('{day + dt.timedelta(days=1)}')"
    ))
    conn.execute(sa.text(
        "insert into scoring.scores (score_date, user_id, product_id, probability, model_version, run_id, tier, "
        "top_contributions, base_value, contributions) "
        "select :d, u, 1, 0.5, 'm', 'r', 'hot', '[]'::jsonb, 0, array_fill(0.1::real, array[40]) "
        "from generate_series(1, :n) u"
    ), {"d": day, "n": rows})


def _model(conn: sa.Connection, version: str, status: str, created: str, root: Path, study: str | None) -> Path:
    folder = root / version
    folder.mkdir(parents=True)
    (folder / "model.bin").write_bytes(b"x" * 4096)
    report = root / f"{version}.html"
    report.write_text("<html>report</html>")
    conn.execute(sa.text(
        "insert into ml.model_versions (version, status, members, params, weights, calibration, features, "
        "training_window, data_fingerprint, library_versions, metrics, tuning, artifact_uri, report_uri, created_at) "
        "values (:v, :s, '{lightgbm}', '{}', '{}', '{}', '{f}', cast(:w as jsonb), 'fp', '{}', '{}', "
        "cast(:t as jsonb), :a, :r, cast(:c as timestamptz))"
    ), {"v": version, "s": status, "w": json.dumps({"train_start": "2001-03-01", "holdout": "2001-04-01"}),
        "t": json.dumps({"lightgbm": {"study_name": study}} if study else {}), "a": str(folder), "r": str(report),
        "c": created})
    return folder


def _parts(engine: sa.Engine, parent: str) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text(
            "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid "
            "where i.inhparent = cast(:p as regclass)"), {"p": parent}).scalars())


def test_retention_drops_old_data_and_keeps_what_is_protected(rdb: sa.Engine, settings, tmp_path: Path) -> None:  # noqa: ANN001
    import optuna

    from ml.tune import open_storage

    s = settings.model_copy(update={"postgres_url": rdb.url.render_as_string(hide_password=False),
                                    "retention_scores_days": 30, "retention_events_days": 60,
                                    "retention_keep_archived_models": 1, "lookback_days": 20,
                                    "label_horizon_days": 7})
    storage = open_storage(s.postgres_url)
    optuna.create_study(study_name="member-lightgbm-old", storage=storage)
    with rdb.begin() as conn:
        for day in (D(2001, 1, 5), D(2001, 1, 6), D(2001, 5, 30)):
            _score_partition(conn, day)
        for day in (D(2001, 1, 5), D(2001, 2, 10), D(2001, 5, 28)):
            conn.execute(sa.text("select raw.ensure_event_partition(:d)"), {"d": day})
        # Redis serves 2001-01-06 (a rollback made it current): that partition must stay
        conn.execute(sa.text(
            "insert into scoring.publications (redis_prefix, version, score_date, status, top_n, min_probability) "
            "values ('p', 1, '2001-01-06', 'published', 20, 0), ('p', 2, '2001-05-30', 'published', 20, 0)"))
        conn.execute(sa.text(
            "insert into scoring.pointer_flips (redis_prefix, from_version, to_version, reason) "
            "values ('p', null, 2, 'publish'), ('p', 2, 1, 'rollback')"))
        root = tmp_path / "artifacts"
        champion = _model(conn, "champ", "champion", "2001-04-02", root, None)
        retired_new = _model(conn, "ret-new", "retired", "2001-03-01", root, None)  # rollback target
        rejected_new = _model(conn, "rej-new", "rejected", "2001-03-05", root, None)  # within keep=1
        rejected_old = _model(conn, "rej-old", "rejected", "2001-02-01", root, "member-lightgbm-old")
        retired_old = _model(conn, "ret-old", "retired", "2001-01-01", root, None)

    dry = apply_retention(rdb, s, today=TODAY, dry_run=True)
    assert [d.table for d in dry.scores] == ["scoring.scores_p20010105"]
    assert [d.table for d in dry.events] == ["raw.events_p20010105"]  # 02-10 is inside the champion's window
    assert {m.version for m in dry.models} == {"rej-old", "ret-old"}
    assert dry.bytes_freed > 0 and rejected_old.exists()
    assert "scores_p20010105" in _parts(rdb, "scoring.scores")  # the dry run changed nothing

    report = apply_retention(rdb, s, today=TODAY)
    assert report.bytes_freed == dry.bytes_freed and report.scores[0].rows == 50
    scores, events = _parts(rdb, "scoring.scores"), _parts(rdb, "raw.events")
    assert "scores_p20010105" not in scores and {"scores_p20010106", "scores_p20010530"} <= scores
    assert "events_p20010105" not in events and {"events_p20010210", "events_p20010528"} <= events
    for rollup in ("rollup_pair_day", "rollup_user_session_day", "rollup_product_day"):  # they go with the events
        kept = _parts(rdb, f"raw.{rollup}")
        assert f"{rollup}_p20010105" not in kept and {f"{rollup}_p20010210", f"{rollup}_p20010528"} <= kept
    assert not rejected_old.exists() and not retired_old.exists() and not (root / "rej-old.html").exists()
    assert champion.exists() and retired_new.exists() and rejected_new.exists()
    assert "member-lightgbm-old" not in {x.study_name for x in storage.get_all_studies()}
    with rdb.connect() as conn:  # registry rows stay
        assert conn.execute(sa.text("select count(*) from ml.model_versions")).scalar_one() == 5
    assert any("served" in line for line in report.lines())

    again = apply_retention(rdb, s, today=TODAY)  # idempotent: nothing left to free
    assert again.bytes_freed == 0 and not again.models

    fp = storage_footprint(rdb)
    assert fp["rows_scored_pair"] == 100 and fp["bytes_per_scored_pair"] > 0


def test_retention_rejects_negative_ages(rdb: sa.Engine, settings) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match="scores_days"):
        apply_retention(rdb, settings, today=TODAY, scores_days=-1, dry_run=True)
