-- Scoring runs in detail: what the nightly score_active_pairs DAG records beyond 0004 (see docs/scoring.md).

-- scoring.runs: the stage table a run fills, the feature order of its contribution vectors, its parameters, the
-- orchestrator's run id (Airflow run_id or "cli") and the closing summary.
alter table scoring.runs add column if not exists stage_table         text;
alter table scoring.runs add column if not exists feature_names       text[];
alter table scoring.runs add column if not exists params              jsonb not null default '{}'::jsonb;
alter table scoring.runs add column if not exists orchestrator_run_id text;
alter table scoring.runs add column if not exists summary             jsonb not null default '{}'::jsonb;

-- scoring.run_batches: one row per (run, user_id hash bucket): the planned pairs, then what the mapped batch task
-- wrote. The row turns 'succeeded' in the same transaction as the batch's COPY into the stage table, so
-- 'succeeded' <=> the bucket's rows are in the stage (a retry deletes them first, never duplicates).
create table if not exists scoring.run_batches (
    run_id        text             not null references scoring.runs (run_id) on delete cascade,
    bucket        integer          not null check (bucket >= 0),
    planned_pairs bigint           not null,
    scored_pairs  bigint,
    status        text             not null default 'planned'
                  check (status in ('planned', 'running', 'succeeded', 'failed')),
    attempts      integer          not null default 0,
    timings       jsonb            not null default '{}'::jsonb,  -- seconds per stage of this batch
    max_residual  double precision,                               -- max |sum(contrib) + base - logit(p)| of the batch
    error         text,
    started_at    timestamptz,
    finished_at   timestamptz,
    primary key (run_id, bucket)
);

-- scoring.feature_samples: a deterministic ~2% sample of each run's feature rows (by a hash of the pair), the
-- reference for feature drift (PSI against the previous score date). Replaced per score_date with the partition.
create table if not exists scoring.feature_samples (
    score_date date    not null,
    run_id     text    not null,
    bucket     integer not null,
    user_id    bigint  not null,
    product_id bigint  not null,
    features   real[]  not null  -- ordered as scoring.runs.feature_names of run_id
);
create index if not exists feature_samples_run_idx on scoring.feature_samples (run_id, bucket);
create index if not exists feature_samples_date_idx on scoring.feature_samples (score_date);

-- scoring.reason_codes: the reason-code dimension for BI (human-readable text of scoring.scores.reason_codes).
-- Seeded from ml/insights.py (REASON_CODES) by 0041; a test keeps module and table equal.
create table if not exists scoring.reason_codes (
    code         text    primary key,
    reason_group text    not null,  -- a row carries at most one code per group
    description  text    not null,  -- what the code means, with its thresholds
    template     text    not null,  -- the sentence; {placeholders} are filled from the row's feature values
    feature      text    not null,  -- primary driver feature
    drivers      text[]  not null,  -- features whose top positive SHAP contribution may trigger the code
    sort_order   integer not null
);

-- scoring.score_contributions: the full contribution vector of every scored pair, one row per feature (the
-- documented way to read scores.contributions by name). Filter on score_date and user_id: it unnests per row.
create or replace view scoring.score_contributions as
select
    s.score_date,
    s.user_id,
    s.product_id,
    f.feature,
    f.ord::integer              as feature_index,  -- 1-based, as in scores.contributions[feature_index]
    s.contributions[f.ord]      as contribution,   -- log-odds; sum over features + base_value = logit(probability)
    s.base_value,
    s.model_version,
    s.run_id
from scoring.scores as s
join scoring.runs as r on r.run_id = s.run_id
cross join lateral unnest(r.feature_names) with ordinality as f(feature, ord);
