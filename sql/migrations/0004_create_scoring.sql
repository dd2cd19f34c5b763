-- scoring.runs: one row per scoring run (a score_date may have several; the latest successful one is live).
create table if not exists scoring.runs (
    run_id         text        primary key,
    score_date     date        not null,
    model_version  text        not null,
    status         text        not null check (status in ('running', 'succeeded', 'failed')),
    planned_pairs  bigint,
    scored_pairs   bigint,
    buckets        integer,
    timings        jsonb       not null default '{}'::jsonb,  -- seconds per stage
    error          text,
    started_at     timestamptz not null default now(),
    finished_at    timestamptz
);
create index if not exists runs_date_idx on scoring.runs (score_date, started_at desc);

-- scoring.scores: one row per (score_date, user_id, product_id), range-partitioned by score_date, one partition
-- per day. A run fills a staging table and swaps the day's partition in one transaction, so readers never see a
-- partial date.
create table if not exists scoring.scores (
    score_date        date             not null,
    user_id           bigint           not null,
    product_id        bigint           not null,
    probability       double precision not null check (probability between 0 and 1),
    model_version     text             not null,
    run_id            text             not null,
    tier              text             not null,
    reason_codes      text[]           not null default '{}',  -- codes of scoring.reason_codes, strongest first
    reason_texts      text[]           not null default '{}',  -- the same reasons rendered with this row's values
    top_contributions jsonb            not null,  -- [{"feature": ..., "value": feature value, "shap": logit contribution}]
    base_value        double precision not null,  -- sum(contributions) + base_value = logit(probability)
    contributions     real[]           not null,  -- full vector, ordered as ml.model_versions.features
    primary key (score_date, user_id, product_id)
) partition by range (score_date);

-- monitoring.metrics: drift and operational metrics, one row per (date, kind, name).
create table if not exists monitoring.metrics (
    metric_date   date             not null,
    kind          text             not null,  -- e.g. feature_psi, score_psi, row_count
    name          text             not null,
    value         double precision,
    model_version text,
    details       jsonb            not null default '{}'::jsonb,
    recorded_at   timestamptz      not null default now(),
    primary key (metric_date, kind, name)
);
