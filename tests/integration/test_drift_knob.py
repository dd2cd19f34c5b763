"""Drift against the training reference on generated data: the generator's drift knob (price level, category mix,
conversion from ``drift_from``) pushes feature PSI over the alert threshold, with an alert row and a notifier call;
the undrifted data against its own reference stays near 0. Real Postgres, features from the project's SQL."""

from __future__ import annotations

import datetime as dt
import uuid

import numpy as np
import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.integration

AS_OF = dt.datetime(2019, 11, 5, tzinfo=dt.UTC)


def _world(server_pg_url: str, drift_from: dt.date | None):  # noqa: ANN202
    from ml import features as F
    from ml.db import create_database, make_engine
    from ml.dev.generate import GeneratorConfig, generate_events
    from ml.ingest import load_events_frame
    from ml.settings import Settings

    name = f"knob_{uuid.uuid4().hex[:8]}"
    url = create_database(server_pg_url, name)
    engine = make_engine(url)
    load_events_frame(engine, generate_events(GeneratorConfig(days=35, n_users=300, n_products=150, seed=3,
                                                              drift_from=drift_from)), file_id=1)
    frame = F.read_pair_features_arrow(engine, AS_OF, Settings(postgres_url=url)).to_pandas()
    return name, engine, frame


def _store_night(engine: sa.Engine, frame, names: list[str], version: str) -> None:  # noqa: ANN001
    day = AS_OF.date()
    with engine.begin() as c:
        c.execute(sa.text(
            "insert into scoring.runs (run_id, score_date, model_version, status, finished_at, feature_names)"
            " values ('knob', :d, :v, 'succeeded', now(), :f)"), {"d": day, "v": version, "f": names})
        c.execute(sa.text(
            "insert into scoring.feature_samples (score_date, run_id, bucket, user_id, product_id, features)"
            " values (:d, 'knob', 0, :u, :p, :x)"),
            [{"d": day, "u": int(r.user_id), "p": int(r.product_id),
              "x": [None if v != v else float(v) for v in (getattr(r, n) for n in names)]}
             for r in frame.itertuples()])


def test_generator_drift_knob_crosses_the_psi_alert(server_pg_url: str, settings) -> None:
    from ml import alerts
    from ml import features as F
    from ml.db import drop_database
    from ml.drift import record_reference, record_reference_drift

    names = list(F.FEATURE_COLUMNS)
    calls: list[str] = []
    alerts.NOTIFIERS["test"] = lambda alert, s: calls.append(alert.key) or True
    s = settings.model_copy(update={"alert_notifiers": ["test"]})
    worlds = []
    try:
        base_name, base, ref = _world(server_pg_url, None)
        worlds.append((base_name, base))
        drift_name, drifted, cur = _world(server_pg_url, dt.date(2019, 10, 15))
        worlds.append((drift_name, drifted))
        probs = np.random.default_rng(0).beta(1, 8, len(ref))
        for engine, frame in ((base, ref), (drifted, cur)):
            record_reference(engine, s, "knob-v1", ref, names, probs)  # the training reference: undrifted data
            _store_night(engine, frame, names, "knob-v1")

        same = {m.name: m.value for m in record_reference_drift(base, s, AS_OF.date()) if m.kind == "ref_feature_psi"}
        assert max(same.values()) < 1e-9 and calls == []  # the training distribution against itself

        got = {m.name: m.value for m in record_reference_drift(drifted, s, AS_OF.date())
               if m.kind == "ref_feature_psi"}
        over = {n for n, v in got.items() if v is not None and v >= s.psi_alert}
        assert over, sorted(got.items(), key=lambda kv: -(kv[1] or 0))[:5]
        assert {f"drift:ref_feature_psi:{n}" for n in over} <= set(calls)
        with drifted.connect() as c:
            rows = c.execute(sa.text("select count(*) from monitoring.alerts where kind = 'drift'"
                                     " and severity = 'critical' and status = 'open'")).scalar_one()
        assert rows >= len(over)
    finally:
        alerts.NOTIFIERS.pop("test", None)
        for name, engine in worlds:
            engine.dispose()
            drop_database(server_pg_url, name)
