-- Closing the loop (issue 13): realized performance, reference distributions, drift vs reference, alerts.
-- Every table is keyed so that a re-evaluation overwrites (never duplicates) its rows.

-- monitoring.realized_metrics: one row per (score_date, model_version, segment) once the label horizon matured.
-- segment 'all': every scored pair; 'published': only the pairs published to Redis (what the storefront saw).
create table if not exists monitoring.realized_metrics (
    score_date         date             not null,
    model_version      text             not null,
    segment            text             not null check (segment in ('all', 'published')),
    label_horizon_days integer          not null,             -- labels: purchases in [score_date, + horizon)
    pairs              bigint           not null,
    users              bigint           not null,
    positives          bigint           not null,
    base_rate          double precision,                      -- positives / pairs
    mean_probability   double precision,
    roc_auc            double precision,                      -- null with a single class
    pr_auc             double precision,                      -- average precision (scikit-learn's definition)
    log_loss           double precision,
    brier              double precision,
    ece                double precision,                      -- 15 equal-width bins, as the trainer
    k                  integer          not null,
    precision_at_k     double precision,                      -- purchased share of each user's top-k, pooled
    hit_rate_at_k      double precision,                      -- users with a purchase whose top-k holds one
    labels_signature   text             not null,             -- ingested files that fed the labels
    evaluated_at       timestamptz      not null default now(),
    primary key (score_date, model_version, segment)
);

-- monitoring.tier_outcomes: conversion and lift per recommendation tier.
create table if not exists monitoring.tier_outcomes (
    score_date       date             not null,
    model_version    text             not null,
    segment          text             not null,
    tier             text             not null,
    pairs            bigint           not null,
    positives        bigint           not null,
    mean_probability double precision,
    conversion       double precision,                        -- positives / pairs
    lift             double precision,                        -- conversion / the segment's base rate
    primary key (score_date, model_version, segment, tier)
);

-- monitoring.calibration_bins: reliability curve, 15 equal-width probability bins (bin 0 = [0, 1/15)).
create table if not exists monitoring.calibration_bins (
    score_date       date             not null,
    model_version    text             not null,
    segment          text             not null,
    bin              integer          not null,
    lower_bound      double precision not null,
    upper_bound      double precision not null,
    pairs            bigint           not null,
    mean_probability double precision,
    observed_rate    double precision,
    primary key (score_date, model_version, segment, bin)
);

-- monitoring.reference_distributions: the holdout distribution of every feature and of the score, stored with the
-- model version at registration. counts has len(edges) + 2 entries: len(edges) + 1 finite bins (a value equal to
-- an edge goes to the bin above) and a last bin for missing values.
create table if not exists monitoring.reference_distributions (
    model_version text             not null,
    kind          text             not null check (kind in ('feature', 'score')),
    name          text             not null,
    edges         double precision[] not null,
    counts        bigint[]         not null,
    rows          bigint           not null,
    null_rate     double precision not null,
    created_at    timestamptz      not null default now(),
    primary key (model_version, kind, name)
);

-- monitoring.alerts: every alert is a row before it is a message. One open row per alert_key: a condition seen
-- again bumps occurrences/last_seen_at instead of adding a row.
create table if not exists monitoring.alerts (
    alert_id      bigint generated always as identity primary key,
    alert_key     text             not null,  -- kind + subject, e.g. drift:feature_psi:views_7d
    kind          text             not null,  -- drift, performance, challenger_refused, stale_scores, freshness, task_failure
    severity      text             not null check (severity in ('warning', 'critical')),
    subject       text             not null,
    message       text             not null,
    value         double precision,
    threshold     double precision,
    metric_date   date,
    model_version text,
    details       jsonb            not null default '{}'::jsonb,
    status        text             not null default 'open' check (status in ('open', 'resolved')),
    occurrences   integer          not null default 1,
    notified      text[]           not null default '{}',  -- notifiers that delivered it
    raised_at     timestamptz      not null default now(),
    last_seen_at  timestamptz      not null default now(),
    resolved_at   timestamptz
);
create unique index if not exists alerts_open_key on monitoring.alerts (alert_key) where status = 'open';
create index if not exists alerts_raised_idx on monitoring.alerts (raised_at desc);

-- bi.model_performance: realized metrics next to the model's holdout metrics ("expected").
create or replace view bi.model_performance as
select
    r.score_date,
    r.model_version,
    r.segment,
    r.pairs,
    r.users,
    r.positives,
    r.base_rate,
    r.mean_probability,
    r.roc_auc                                                    as realized_roc_auc,
    (v.metrics -> 'ensemble' ->> 'roc_auc')::double precision    as expected_roc_auc,
    r.pr_auc                                                     as realized_pr_auc,
    (v.metrics -> 'ensemble' ->> 'pr_auc')::double precision     as expected_pr_auc,
    r.log_loss                                                   as realized_log_loss,
    (v.metrics -> 'ensemble' ->> 'log_loss')::double precision   as expected_log_loss,
    r.brier                                                      as realized_brier,
    (v.metrics -> 'ensemble' ->> 'brier')::double precision      as expected_brier,
    r.ece                                                        as realized_ece,
    (v.metrics -> 'ensemble' ->> 'ece')::double precision        as expected_ece,
    r.k,
    r.precision_at_k,
    r.hit_rate_at_k                                              as realized_hit_rate_at_k,
    (v.metrics -> 'ensemble' ->> 'hit_rate_at_10')::double precision as expected_hit_rate_at_10,
    r.evaluated_at
from monitoring.realized_metrics as r
left join ml.model_versions as v on v.version = r.model_version;

-- bi.calibration: the realized reliability curve per score date, model version and segment.
create or replace view bi.calibration as
select score_date, model_version, segment, bin, lower_bound, upper_bound, pairs, mean_probability, observed_rate
from monitoring.calibration_bins;

-- bi.tier_conversion: expected (mean probability) vs realized conversion and lift per tier.
create or replace view bi.tier_conversion as
select
    score_date, model_version, segment, tier, pairs, positives,
    mean_probability as expected_conversion,
    conversion       as realized_conversion,
    lift
from monitoring.tier_outcomes;

-- bi.drift_vs_reference: nightly PSI of every feature and of the score against the model's training reference,
-- null rates and the share of pairs unseen at training (monitoring.metrics kinds ref_*).
create or replace view bi.drift_vs_reference as
select metric_date, kind, name, value, model_version, recorded_at
from monitoring.metrics
where kind like 'ref\_%';

-- bi.alerts: every alert, newest first.
create or replace view bi.alerts as
select alert_id, kind, severity, subject, message, value, threshold, metric_date, model_version, status,
       occurrences, raised_at, last_seen_at, resolved_at
from monitoring.alerts;

-- bi.pipeline_freshness: one row: how fresh each stage's output is (Grafana "pipeline health").
create or replace view bi.pipeline_freshness as
select
    (select max(max_event_time) from raw.ingested_files)                                  as newest_event_time,
    extract(epoch from now() - (select max(max_event_time) from raw.ingested_files)) / 3600 as hours_since_newest_event,
    (select max(score_date) from scoring.runs where status = 'succeeded')                 as newest_score_date,
    (select score_date from scoring.publications where status = 'published'
     order by published_at desc limit 1)                                                  as served_score_date,
    (select count(*) from monitoring.alerts where status = 'open')                        as open_alerts;
