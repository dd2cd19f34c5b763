"""The weekly training job on generated events in a real PostgreSQL: it learns, registers, gates, explains, reports.

One private database per module holds generated REES46 events (the product/category statistics read every user's
events, so sharing the session database with other tests would change the features). The job runs once
(``run_training``, the CLI's path: Optuna studies in Postgres, artifacts, registry, gate, report) with a tiny budget;
each test checks one promise on that run.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from ml.settings import Settings

pytestmark = pytest.mark.integration

EVENT_COLUMNS = ["event_time", "event_type", "product_id", "category_id", "category_code", "brand", "price",
                 "user_id", "user_session"]
GENERATED = {"start": dt.date(2019, 10, 1), "days": 42, "n_users": 500, "n_products": 350, "seed": 3}


# --- helpers shared with tests/dags/test_train_dag.py ---------------------------------------------------------------
def create_database(server_pg_url: str, prefix: str) -> str:
    """A fresh, migrated database on the test server; returns its URL."""
    from ml import db

    return db.create_database(server_pg_url, f"{prefix}_{uuid.uuid4().hex[:10]}")


def drop_database(server_pg_url: str, url: str) -> None:
    from ml import db

    db.drop_database(server_pg_url, sa.engine.make_url(url).database)


def load_generated_events(url: str, **config: object) -> pd.DataFrame:
    """Generate events (ml.dev.generate) and COPY them into raw.events (daily partitions first); return them."""
    import psycopg

    from ml.db import libpq_url
    from ml.dev.generate import GeneratorConfig, generate_events

    events = generate_events(GeneratorConfig(**{**GENERATED, **config}))
    days = sorted({t.date() for t in pd.to_datetime(events["event_time"], utc=True).dt.floor("D")})
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        for d in days:
            conn.execute("select raw.ensure_event_partition(%s)", (d,))
        with conn.cursor() as cur, cur.copy(
            f"copy raw.events ({', '.join(EVENT_COLUMNS)}, file_id, line_no) from stdin"
        ) as copy:
            for i, row in enumerate(events[EVENT_COLUMNS].itertuples(index=False)):
                values = [None if v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v for v in row]
                copy.write_row([*values, 1, i + 1])
    return events


def chance_auc_bound(n_pos: int, n_neg: int, z: float = 4.0) -> float:
    """0.5 + z standard deviations of the ROC-AUC of an uninformative score (Mann-Whitney U under H0:
    var(AUC) = (n_pos + n_neg + 1) / (12 n_pos n_neg)); z = 4 is a one-sided p of about 3e-5."""
    return 0.5 + z * math.sqrt((n_pos + n_neg + 1) / (12.0 * n_pos * n_neg))


_GENERATED_DB = pytest.StashKey[str]()


def generated_database(request: pytest.FixtureRequest, server_pg_url: str) -> str:
    """One database of generated events per test session, shared by this module and the DAG test (creating and
    loading it is a fixed cost); dropped when the session ends. Users must not assume an empty registry."""
    url = request.config.stash.get(_GENERATED_DB, None)
    if url is None:
        url = create_database(server_pg_url, "train")
        load_generated_events(url)
        request.config.stash[_GENERATED_DB] = url
        request.config.add_cleanup(lambda: drop_database(server_pg_url, url))
    return url


# --- fixtures ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gen_url(request: pytest.FixtureRequest, server_pg_url: str) -> str:
    return generated_database(request, server_pg_url)


@pytest.fixture(scope="module")
def gen_engine(gen_url: str) -> Iterator[sa.Engine]:
    from ml.db import make_engine

    eng = make_engine(gen_url)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def gen_settings(gen_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(postgres_url=gen_url, state_dir=tmp_path_factory.mktemp("train-state"), train_threads=1,
                    report_shap_rows=200)


@pytest.fixture(scope="module")
def trained(gen_engine: sa.Engine, gen_settings: Settings) -> dict:
    """The weekly job once, with a tiny budget (1 trial per member), plus its data split for later checks.

    The snapshots are the features' SQL frames (``build_snapshot_frame``) without the Great Expectations checks and
    Parquet copies of ``build_training_snapshots``, which the DAG test (tests/dags/test_train_dag.py) runs in full."""
    import datetime as _dt

    from ml import features as F
    from ml import snapshots as S
    from ml.train import run_training
    from ml.training_data import TrainingData, split_training_data

    dates = S.snapshot_dates(gen_engine, gen_settings)
    frame = pd.concat([S.build_snapshot_frame(gen_engine, d, gen_settings) for d in dates], ignore_index=True)
    data = TrainingData(frame, list(F.FEATURE_COLUMNS), S.frame_fingerprint(frame),
                        label_horizon=_dt.timedelta(days=gen_settings.label_horizon_days))
    from ml.registry import champion

    before = champion(gen_engine)
    run = run_training(gen_engine, gen_settings, n_trials=1, timeout=60, data=data, dag_run_id="test-train")
    return {"run": run, "data": data, "prepared": split_training_data(data, gen_settings),
            "champion_before": before.version if before else None}


# --- tests ------------------------------------------------------------------------------------------------------------
def test_learns_something_beyond_chance(trained: dict) -> None:
    """Holdout ROC-AUC above 0.5 + 4 sd of a random score's AUC for this holdout's class counts."""
    m = trained["run"].metrics["ensemble"]
    n_pos, n = m["positives"], m["n"]
    assert n_pos >= 20, "the holdout needs positives for the bound to mean something"
    bound = chance_auc_bound(n_pos, n - n_pos)
    assert m["roc_auc"] > bound, f"ROC-AUC {m['roc_auc']:.3f} not above chance bound {bound:.3f}"
    assert m["pr_auc"] > n_pos / n, "PR-AUC above the base rate (chance level for PR-AUC)"
    for name in ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "f1", "precision", "recall", "hit_rate_at_10"):
        assert m[name] is not None and np.isfinite(m[name]), name


def test_first_version_is_registered_with_everything(trained: dict, gen_engine: sa.Engine) -> None:
    from ml import registry

    run = trained["run"]
    row = registry.get_version(gen_engine, run.version)
    assert row.status == run.status and row.dag_run_id == "test-train"
    if trained["champion_before"] is None:
        assert row.status == "champion" and registry.champion(gen_engine).version == run.version
    assert set(row.members) == {"catboost", "xgboost", "lightgbm", "random_forest"}
    assert sum(row.weights.values()) == pytest.approx(1.0) and min(row.weights.values()) >= 0
    assert set(row.calibration) == {"a", "b"} and row.threshold is not None
    from ml.features import FEATURE_COLUMNS

    assert row.features == FEATURE_COLUMNS
    assert row.data_fingerprint == trained["data"].fingerprint
    assert row.training_window["holdout"].startswith(str(trained["prepared"].split.holdout_times[0])[:10])
    assert {"catboost", "xgboost", "lightgbm", "optuna"} <= set(row.library_versions)
    assert set(row.metrics) >= {"ensemble", "equal_weights", "members", "validation"}
    assert set(row.metrics["members"]) == set(row.members)
    assert all(row.params[m] for m in row.members)
    decisions = registry.gate_decisions(gen_engine, run.version)
    assert decisions[0]["champion_version"] == trained["champion_before"]
    assert decisions[0]["action"] == ("promote" if run.status == "champion" else "reject")


def test_artifacts_round_trip_bit_identical(trained: dict, gen_engine: sa.Engine, gen_settings: Settings) -> None:
    from ml import registry

    run, prepared = trained["run"], trained["prepared"]
    manifest = json.loads((Path(run.artifact_uri) / "manifest.json").read_text())
    assert {f["file"] for f in manifest["members"].values()} == {"catboost.cbm", "xgboost.ubj", "lightgbm.txt",
                                                                  "random_forest.txt"}
    X = prepared.data.frame.iloc[prepared.split.holdout]
    _, first = registry.load_version(gen_engine, gen_settings, run.version)
    _, second = registry.load_version(gen_engine, gen_settings, run.version)  # a second, independent load
    p = first.predict_proba(X)
    np.testing.assert_array_equal(second.predict_proba(X), p)
    # the registry's metrics are reproduced from the loaded artifacts
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(prepared.y["holdout"], p, sample_weight=prepared.w["holdout"]) == pytest.approx(
        run.metrics["ensemble"]["roc_auc"], abs=1e-12)


def test_contributions_add_up_to_the_logit_on_the_trained_ensemble(trained: dict, gen_engine: sa.Engine,
                                                                    gen_settings: Settings) -> None:
    from ml import registry

    prepared = trained["prepared"]
    _, ens = registry.load_version(gen_engine, gen_settings, trained["run"].version)
    X = prepared.data.frame.iloc[prepared.split.holdout]
    logit = ens.predict_logit(X)
    for method in ("native", "auto"):
        contrib, base = ens.explain(X, method=method)
        err = np.abs(contrib.sum(axis=1) + base - logit)
        assert err.max() <= 1e-4, f"{method}: max additivity error {err.max():.2e}"


def test_more_recent_carts_never_lower_a_score_on_generated_data(trained: dict, gen_engine: sa.Engine,
                                                                   gen_settings: Settings) -> None:
    """The behaviour property (tests/model) on the model fitted to generated events, for every holdout pair."""
    from ml import registry
    from tests.model.test_ensemble_behaviour import with_one_more_recent_cart

    prepared = trained["prepared"]
    _, ens = registry.load_version(gen_engine, gen_settings, trained["run"].version)
    X = prepared.data.frame.iloc[prepared.split.holdout]
    before, after = ens.predict_proba(X), ens.predict_proba(with_one_more_recent_cart(X))
    assert np.min(after - before) >= 0.0


def test_report_is_self_contained_html(trained: dict, gen_engine: sa.Engine) -> None:
    from ml import registry

    run = trained["run"]
    assert run.report_uri and registry.get_version(gen_engine, run.version).report_uri == run.report_uri
    page = Path(run.report_uri).read_text()
    assert page.startswith("<!doctype html>")
    assert page.count("data:image/png;base64,") >= 5  # ROC+PR, calibration, beeswarm, bar, Optuna history
    assert "src=\"http" not in page and "<script src" not in page and "<link" not in page
    for text in ("Holdout metrics", "SHAP", "Optuna history", "equal weights", "catboost alone", run.version):
        assert text in page


def test_optuna_studies_live_in_postgres_and_dashboard_reads_them(trained: dict, gen_settings: Settings) -> None:
    import io
    from wsgiref.util import setup_testing_defaults

    import optuna
    import optuna_dashboard

    from ml.tune import optuna_storage_url

    url = optuna_storage_url(gen_settings.postgres_url)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage=url)}
    assert {t["study_name"] for t in trained["run"].tuning.values()} <= names
    assert all(n.startswith("member-") for n in names)
    eng = sa.create_engine(url)
    with eng.connect() as c:
        tables = set(c.execute(sa.text("select table_name from information_schema.tables "
                                       "where table_schema = 'experiments'")).scalars())
    eng.dispose()
    assert {"studies", "trials", "trial_values"} <= tables
    app = optuna_dashboard.wsgi(url)
    environ: dict = {"PATH_INFO": "/api/studies", "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, *a: status.append(s)))
    assert status[0].startswith("200")
    assert {s["study_name"] for s in json.loads(body)["study_summaries"]} == names


def test_resumed_study_runs_no_extra_trials(trained: dict, gen_settings: Settings) -> None:
    """Same window, same data: the study already holds its budget, so a re-run adds no trial and refits the best."""
    from ml.train import fit_member

    res = fit_member(trained["prepared"], "lightgbm", gen_settings, n_trials=1, postgres_url=gen_settings.postgres_url)
    assert res.n_new_trials == 0 and res.n_complete + res.n_pruned == 1
    assert res.study_name.startswith("member-lightgbm-")


def test_gate_refuses_a_worse_model_then_manual_promote_and_rollback(trained: dict, gen_engine: sa.Engine,
                                                                    gen_settings: Settings) -> None:
    """A model trained on shuffled labels is worse on the same holdout: refused, with both metric sets recorded.
    Then a manual promotion overrides the gate and a rollback restores the previous champion."""
    import dataclasses

    from ml import registry
    from ml.train import register_result, train_prepared

    champion = trained["run"].version
    if registry.champion(gen_engine).version != champion:
        registry.promote_version(gen_engine, champion, reason="test setup")
    prepared = trained["prepared"]
    rng = np.random.default_rng(0)
    shuffled = dataclasses.replace(prepared, y={**prepared.y, "train": rng.permutation(prepared.y["train"]),
                                                "validation": rng.permutation(prepared.y["validation"])})
    worse = train_prepared(shuffled, gen_settings, n_trials=0, members=["lightgbm"])
    reg = register_result(gen_engine, gen_settings, worse, shuffled, dag_run_id="test-gate")
    assert reg.status == "rejected" and not reg.decision.promote
    assert "PR-AUC" in reg.decision.reason
    assert registry.champion(gen_engine).version == champion
    d = registry.gate_decisions(gen_engine, reg.version)[0]
    assert d["action"] == "reject" and d["champion_version"] == champion and not d["manual"]
    assert d["challenger_metrics"]["pr_auc"] < d["champion_metrics"]["pr_auc"]
    # the champion was re-measured on the same holdout: its figures equal its own registered holdout metrics
    assert d["champion_metrics"]["pr_auc"] == pytest.approx(trained["run"].metrics["ensemble"]["pr_auc"], abs=1e-12)

    promoted = registry.promote_version(gen_engine, reg.version, reason="test override", decided_by="pytest")
    assert promoted.status == "champion" and registry.get_version(gen_engine, champion).status == "retired"
    d = registry.gate_decisions(gen_engine, reg.version)[0]
    assert d["manual"] and d["reason"].startswith("manual") and d["action"] == "promote"

    restored = registry.rollback_champion(gen_engine, reason="test", decided_by="pytest")
    assert restored.version == champion and restored.status == "champion"
    assert registry.get_version(gen_engine, reg.version).status == "rolled_back"
    d = registry.gate_decisions(gen_engine, champion)[0]
    assert d["action"] == "rollback" and d["manual"] and d["champion_version"] == reg.version

    # force_promote (the DAG param / CLI flag) overrides a refusal, and says so in the recorded decision
    forced = register_result(gen_engine, gen_settings, worse, shuffled, force_promote=True, dag_run_id="test-force")
    assert forced.status == "champion" and forced.decision.manual
    d = registry.gate_decisions(gen_engine, forced.version)[0]
    assert d["manual"] and d["reason"].startswith("manual: force_promote") and "refused" in d["reason"]
    assert d["champion_metrics"]["pr_auc"] > d["challenger_metrics"]["pr_auc"]
    assert registry.rollback_champion(gen_engine, reason="test cleanup").version == champion


def test_a_better_challenger_is_promoted_automatically_over_an_existing_champion(
    trained: dict, gen_engine: sa.Engine, gen_settings: Settings
) -> None:
    """Issue 15: the gate's other outcome, asserted (not "either"): a champion trained on shuffled labels is
    replaced, without any manual step, by a challenger trained on the real labels, measured on the same holdout."""
    import dataclasses

    from ml import registry
    from ml.train import register_result, train_prepared

    prepared = trained["prepared"]
    rng = np.random.default_rng(1)
    shuffled = dataclasses.replace(prepared, y={**prepared.y, "train": rng.permutation(prepared.y["train"]),
                                                "validation": rng.permutation(prepared.y["validation"])})
    weak = register_result(gen_engine, gen_settings, train_prepared(shuffled, gen_settings, n_trials=0,
                                                                    members=["lightgbm"]),
                           shuffled, force_promote=True, dag_run_id="test-weak-champion")
    assert registry.champion(gen_engine).version == weak.version
    better = register_result(gen_engine, gen_settings, train_prepared(prepared, gen_settings, n_trials=0,
                                                                      members=["lightgbm"]),
                             prepared, dag_run_id="test-better-challenger")
    assert better.status == "champion" and better.decision.promote, better.decision.reason
    assert registry.champion(gen_engine).version == better.version
    assert registry.get_version(gen_engine, weak.version).status == "retired"
    d = registry.gate_decisions(gen_engine, better.version)[0]
    assert d["action"] == "promote" and not d["manual"] and d["champion_version"] == weak.version
    assert d["challenger_metrics"]["pr_auc"] > d["champion_metrics"]["pr_auc"]


def test_a_refused_challenger_raises_an_alert_row_and_calls_the_webhook(
    trained: dict, gen_engine: sa.Engine, gen_settings: Settings, webhook
) -> None:
    """Issue 13, end to end through the training entry point: ``run_training`` (the CLI's and DAG's path) trains a
    challenger, the gate refuses it (a strict tolerance: it must beat the champion's PR-AUC by 1, which no model
    can), and that refusal is a ``challenger_refused`` row in ``monitoring.alerts`` and one call of the real
    webhook notifier on a local HTTP server."""
    from ml import registry
    from ml.train import run_training

    champion = registry.champion(gen_engine)
    assert champion is not None  # the module's run made one; the gate compares against it
    url, received = webhook
    strict = gen_settings.model_copy(update={"gate_pr_auc_tolerance": -1.0, "alert_webhook_url": url,
                                             "alert_notifiers": ["log", "webhook"]})
    run = run_training(gen_engine, strict, n_trials=0, members=["lightgbm"], data=trained["data"],
                       dag_run_id="test-refused", write_report=False)
    try:
        assert run.status == "rejected" and not run.decision.promote and "PR-AUC" in run.decision.reason
        assert registry.champion(gen_engine).version == champion.version
        with gen_engine.connect() as c:
            rows = c.execute(sa.text(
                "select kind, severity, subject, model_version, status, notified, message from monitoring.alerts"
                " where model_version = :v"), {"v": run.version}).mappings().all()
        assert len(rows) == 1, rows
        row = rows[0]
        assert (row["kind"], row["severity"], row["subject"], row["status"]) == (
            "challenger_refused", "warning", run.version, "open")
        assert row["notified"] == ["log", "webhook"] and run.decision.reason in row["message"]
        assert received == [{"text": f"ALERT [warning] challenger_refused {run.version}: {row['message']}"}]
    finally:
        with gen_engine.begin() as c:
            c.execute(sa.text("delete from monitoring.alerts where model_version = :v"), {"v": run.version})
