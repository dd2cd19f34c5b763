"""The demo's A/B experiment (issue 14): after the Airflow chain has trained a champion and published today's scores,
train a second model version (LightGBM only, no tuning: a few seconds), run an experiment champion vs challenger
(50/50) over the score date a week ago and today, score every date per arm, publish today's scores with each
user's arm, serve a few hundred lookups through the API (counting exposures in Redis), move the counts to Postgres
and print the arm split and the results table.

The demo data carries a real effect: :func:`uplift_config` makes the generator's users in the challenger's half of
the experiment's assignment buckets convert better from the first experiment score date, so the results should
show a lift for ``challenger``. Dates: the data ends yesterday (UTC); score date D-7 has matured outcomes (horizon
7 days); today's scores serve the API.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import sqlalchemy as sa

from ml.settings import Settings

log = logging.getLogger(__name__)

EXPERIMENT_ID = "demo-ab"
UPLIFT_FACTOR = 2.0  # odds multiplier on carting and buying for the challenger's users (generator knob)
HORIZON_DAYS = 7


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def uplift_config(today: dt.date) -> dict[str, Any]:
    """GeneratorConfig fields that give the challenger arm (buckets 5000-9999 of ``demo-ab``) a real uplift from the
    first experiment score date."""
    return {"uplift_experiment": EXPERIMENT_ID, "uplift_buckets": (5000, 10000),
            "uplift_from": today - dt.timedelta(days=HORIZON_DAYS), "uplift_factor": UPLIFT_FACTOR}


def run_ab_demo(engine: sa.Engine, settings: Settings, redis_url: str, *, lookups: int = 300) -> list[str]:
    """The A/B part of the demo; returns printable lines (arm split, lookups, results table)."""
    import redis

    from ml import experiments as X
    from ml.publish import publish_version
    from ml.registry import champion
    from ml.score import run_scoring
    from ml.train import run_training

    today = dt.datetime.now(dt.UTC).date()
    out = ["A/B experiment (champion vs challenger, arms = model versions):"]
    existing = {e.experiment_id: e for e in X.list_experiments(engine)}
    if EXPERIMENT_ID in existing:
        out.append(f"  experiment {EXPERIMENT_ID} exists already ({existing[EXPERIMENT_ID].status}); showing results")
        exp = existing[EXPERIMENT_ID]
    else:
        champ = champion(engine)
        if champ is None:
            return [*out, "  (no champion: skipped)"]
        _say("training a challenger model (LightGBM only, no tuning) ...")
        t = time.perf_counter()
        data = _champion_training_data(champ.training_window)  # the champion's snapshots: no rebuild
        trained = run_training(engine, settings, n_trials=0, members=["lightgbm"], write_report=False, data=data)
        _say(f"challenger {trained.version} trained in {time.perf_counter() - t:.0f}s")
        now = champion(engine)
        control = now.version if now else champ.version
        challenger = trained.version if trained.version != control else champ.version
        dates = [today - dt.timedelta(days=HORIZON_DAYS), today]
        exp = X.create_experiment(
            engine, EXPERIMENT_ID, f"control={control},challenger={challenger}", split="50,50",
            start_date=dates[0], end_date=today, description="demo: full ensemble vs LightGBM only",
            horizon_days=HORIZON_DAYS, mde=0.05, allow_past=True, actor="demo")
        X.start_experiment(engine, EXPERIMENT_ID, actor="demo")
        for day in dates:
            t = time.perf_counter()
            summary = run_scoring(engine, settings, day)
            _say(f"scored {day} per arm in {time.perf_counter() - t:.0f}s")
            out.extend(f"  {day} {line.strip()}" for line in summary.lines() if line.strip().startswith("arm "))
        client = redis.Redis.from_url(redis_url)
        try:
            pub = publish_version(engine, client, settings, today)
            out.append(f"  published {today} as Redis version {pub.version}: each user's arm under "
                       f"{settings.redis_prefix}:v{pub.version}:a:{{user_id}}")
            out.extend(_lookups(engine, settings, redis_url, today, lookups))
            X.move_exposures(engine, client, settings, today)
        finally:
            client.close()
    with engine.connect() as conn:
        split = conn.execute(sa.text(
            "select arm, count(distinct user_id) as users, count(*) as pairs from scoring.scores"
            " where experiment_id = :e group by arm order by arm"), {"e": EXPERIMENT_ID}).all()
    total = sum(r.users for r in split) or 1
    out.append("  arm split (distinct users scored over the experiment's dates): " + ", ".join(
        f"{r.arm} {r.users:,} ({r.users / total:.1%}), {r.pairs:,} pairs" for r in split))
    res = X.experiment_results(engine, exp.experiment_id, srm_p_threshold=settings.experiment_srm_p_threshold,
                               top_n=settings.publish_top_n, min_probability=settings.publish_min_probability)
    out.append(f"  results (score dates whose {HORIZON_DAYS}-day horizon has matured; the generator gave "
               f"'challenger' an uplift x{UPLIFT_FACTOR:g} on the odds of buying):")
    out.extend(f"    {line}" for line in res.lines())
    out.append(f"  again: propensity experiment results {exp.experiment_id};  SQL: select * from bi.experiment_results")
    return out


def _champion_training_data(window: dict[str, Any] | None) -> Any:
    """The training data the champion was trained on (saved by run_training), or None (then it is rebuilt)."""
    from ml.errors import PipelineError
    from ml.training_data import load_training_data

    uri = (window or {}).get("data_uri")
    if not uri:
        return None
    try:
        return load_training_data(uri)
    except (OSError, PipelineError, ValueError) as e:
        log.warning("champion training data %s not readable (%s): rebuilding the snapshots", uri, e)
        return None


def _lookups(engine: sa.Engine, settings: Settings, redis_url: str, day: dt.date, n: int) -> list[str]:
    """Serve ``n`` users' recommendations through the API app (in-process, over httpx's ASGI transport), which counts
    exposures in Redis."""
    import asyncio

    import httpx

    from ml.api import create_app
    from ml.api_auth import new_api_key

    with engine.connect() as conn:
        users = conn.execute(sa.text("select distinct user_id from scoring.scores where score_date = :d"
                                     " order by user_id limit :n"), {"d": day, "n": n}).scalars().all()
    key, digest = new_api_key()
    s = settings.model_copy(update={"api_key_hashes": [digest], "redis_url": redis_url})

    async def serve() -> tuple[dict[str | None, int], dict[str, Any] | None]:
        app = create_app(s)
        served: dict[str | None, int] = {}
        example = None
        async with app.router.lifespan_context(app):  # the lifespan opens the app's Redis clients
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as api:
                for user in users:
                    r = await api.get(f"/v1/users/{user}/recommendations", params={"limit": 3},
                                      headers={"Authorization": f"Bearer {key}"})
                    if r.status_code == 200:
                        body = r.json()
                        served[body["variant"]] = served.get(body["variant"], 0) + 1
                        example = example or body
        return served, example

    served, example = asyncio.run(serve())
    lines = [f"  {sum(served.values())} API lookups served: " + ", ".join(f"{k}: {v}" for k, v in served.items())]
    if example:
        lines.append("  e.g. GET /v1/users/{}/recommendations -> experiment_id={}, variant={}, model_version={}".format(
            example["user_id"], example["experiment_id"], example["variant"], example["model_version"]))
    return lines
