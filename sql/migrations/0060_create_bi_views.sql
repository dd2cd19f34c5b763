-- bi.*: stable, documented views for analysts and BI tools (Metabase, Superset, Grafana).
-- Views only read the pipeline's tables; grant select on schema bi to your BI role.

-- The newest scored date, one row per active (user, product) pair.
create or replace view bi.latest_scores as
select
    s.score_date,
    s.user_id,
    s.product_id,
    s.probability,
    s.tier,
    s.reason_codes,
    s.reason_texts,
    s.top_contributions,
    s.model_version,
    s.run_id
from scoring.scores as s
where s.score_date = (select max(score_date) from scoring.scores);

-- One row per score date: volume, users and the probability distribution.
create or replace view bi.daily_score_summary as
select
    score_date,
    min(model_version)                                            as model_version,
    count(*)                                                      as pairs,
    count(distinct user_id)                                       as users,
    avg(probability)                                              as mean_probability,
    percentile_cont(0.5) within group (order by probability)      as median_probability,
    percentile_cont(0.9) within group (order by probability)      as p90_probability,
    count(*) filter (where tier = 'hot')                          as hot_pairs,
    count(*) filter (where tier = 'warm')                         as warm_pairs
from scoring.scores
group by score_date;

-- Pairs per recommendation tier per score date, with the share of the date.
create or replace view bi.tier_distribution as
select
    score_date,
    tier,
    count(*)                                                            as pairs,
    count(*)::double precision / sum(count(*)) over (partition by score_date) as share
from scoring.scores
group by score_date, tier;

-- How often each reason code is given, per score date.
create or replace view bi.reason_code_frequency as
select
    s.score_date,
    r.code,
    count(*) as pairs
from scoring.scores as s
cross join lateral unnest(s.reason_codes) as r(code)
group by s.score_date, r.code;

-- Scoring runs with rows/s over the summed stage time.
create or replace view bi.scoring_runs as
select
    run_id,
    score_date,
    model_version,
    status,
    planned_pairs,
    scored_pairs,
    buckets,
    timings,
    extract(epoch from (finished_at - started_at))                           as wall_seconds,
    scored_pairs / nullif(extract(epoch from (finished_at - started_at)), 0) as pairs_per_second,
    error,
    started_at,
    finished_at
from scoring.runs;

-- Events per UTC day and type (what landed in raw.events).
create or replace view bi.daily_events as
select
    (event_time at time zone 'UTC')::date as event_date,
    event_type,
    count(*)                              as events,
    count(distinct user_id)               as users
from raw.events
group by 1, 2;

-- Every validation that failed, newest first, with where the file was quarantined.
create or replace view bi.validation_failures as
select
    validated_at,
    file_name,
    suite_name,
    failed_rules,
    row_count,
    quarantine_uri,
    report_uri
from quality.validation_runs
where not success;
