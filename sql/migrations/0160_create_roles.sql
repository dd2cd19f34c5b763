-- Least privilege (issue 16): three group roles, created and granted idempotently. They are NOLOGIN groups:
-- people and services log in as their own users, made members of one group (docker/postgres-init.sql creates
-- the compose ones; docs/operations.md shows the two lines for any other server).
--
--   propensity_owner     owns and alters the schemas: migrations run as a member.
--   propensity_pipeline  reads and writes the pipeline's schemas (ingest, training, scoring, monitoring). It is a
--                        member of propensity_owner because PostgreSQL ties ATTACH/DETACH PARTITION (the atomic
--                        score-date swap, daily raw.events partitions, retention drops) to table ownership.
--   propensity_bi        reads the bi.* views and nothing else: no raw.events, no scoring.*, no writes anywhere.
--                        bi views run with their owner's rights, so they read the tables BI itself cannot.
--
-- Airflow's own role ("airflow", its metadata database) is created beside the pipeline's in
-- docker/postgres-init.sql: it has no rights in the pipeline database.
--
-- Roles are cluster-wide and this file may run in several databases of one server at the same time (tests), so a
-- role that appears concurrently is not an error. Creating a role needs CREATEROLE: when the roles already exist
-- (docker/postgres-init.sql made them as the superuser), a migrating user without it passes this file.

do $$
declare
    r text;
begin
    foreach r in array array['propensity_owner', 'propensity_pipeline', 'propensity_bi'] loop
        if not exists (select 1 from pg_roles where rolname = r) then
            begin
                execute format('create role %I nologin', r);
            exception when duplicate_object or unique_violation then
                null;  -- created by a concurrent migration in another database
            end;
        end if;
    end loop;
end
$$;

do $$
begin
    if not exists (
        select 1 from pg_auth_members m
        join pg_roles g on g.oid = m.roleid and g.rolname = 'propensity_owner'
        join pg_roles u on u.oid = m.member and u.rolname = 'propensity_pipeline'
    ) then
        begin
            grant propensity_owner to propensity_pipeline;
        exception when insufficient_privilege or unique_violation then
            null;  -- needs ADMIN on propensity_owner; docker/postgres-init.sql grants it as the superuser
        end;
    end if;
end
$$;

-- owner and pipeline: everything in the pipeline's schemas (current objects, and those created later by the
-- migrating user). bi is read-only for the pipeline too: only migrations define views.
do $$
declare
    s text;
begin
    foreach s in array array['raw', 'quality', 'ml', 'scoring', 'monitoring', 'experiments'] loop
        execute format('grant usage, create on schema %I to propensity_owner, propensity_pipeline', s);
        execute format('grant select, insert, update, delete, truncate, references, trigger on all tables in schema %I '
                       'to propensity_owner, propensity_pipeline', s);
        execute format('grant usage, select, update on all sequences in schema %I to propensity_owner, '
                       'propensity_pipeline', s);
        execute format('grant execute on all functions in schema %I to propensity_owner, propensity_pipeline', s);
        execute format('alter default privileges in schema %I grant select, insert, update, delete, truncate, '
                       'references, trigger on tables to propensity_owner, propensity_pipeline', s);
        execute format('alter default privileges in schema %I grant usage, select, update on sequences to '
                       'propensity_owner, propensity_pipeline', s);
        execute format('alter default privileges in schema %I grant execute on functions to propensity_owner, '
                       'propensity_pipeline', s);
    end loop;
end
$$;

grant usage, create on schema bi to propensity_owner;
grant usage on schema bi to propensity_pipeline, propensity_bi;
grant select on all tables in schema bi to propensity_owner, propensity_pipeline, propensity_bi;
alter default privileges in schema bi grant select on tables to propensity_owner, propensity_pipeline, propensity_bi;

-- BI must not reach anything else, whatever was granted before: no schema outside bi, no function that writes.
do $$
declare
    s text;
begin
    foreach s in array array['raw', 'quality', 'ml', 'scoring', 'monitoring', 'experiments'] loop
        execute format('revoke all on schema %I from propensity_bi', s);
        execute format('revoke all on all tables in schema %I from propensity_bi', s);
    end loop;
end
$$;
revoke create on schema public from propensity_bi;
revoke insert, update, delete, truncate, references, trigger on all tables in schema bi from propensity_bi;

-- What BI tools show next to each view and column (Metabase, Superset and Grafana read pg_description).
comment on schema bi is 'Read-only views for analysts and BI tools over the propensity pipeline (scores, runs, events, validation). UTC dates.';

comment on view bi.latest_scores is 'The newest score date: one row per active (user, product) pair with its purchase probability, tier and reasons.';
comment on column bi.latest_scores.score_date is 'UTC date the pair was scored for (features use events before its midnight).';
comment on column bi.latest_scores.user_id is 'REES46 user_id.';
comment on column bi.latest_scores.product_id is 'REES46 product_id.';
comment on column bi.latest_scores.probability is 'Calibrated probability that the user buys the product within the label horizon (default 7 days) after score_date.';
comment on column bi.latest_scores.tier is 'Recommendation tier by probability band: hot, warm, cool or cold.';
comment on column bi.latest_scores.reason_codes is 'Reason codes (strongest first) derived from the exact SHAP contributions.';
comment on column bi.latest_scores.reason_texts is 'Human-readable texts of reason_codes, same order.';
comment on column bi.latest_scores.top_contributions is 'Largest SHAP contributions {feature: log-odds} of this pair; they add up with the base value to logit(probability).';
comment on column bi.latest_scores.model_version is 'Model registry version that produced the score.';
comment on column bi.latest_scores.run_id is 'Scoring run (scoring.runs) that wrote the row.';

comment on view bi.daily_score_summary is 'One row per score date: pairs, users and the probability distribution.';
comment on column bi.daily_score_summary.score_date is 'UTC score date.';
comment on column bi.daily_score_summary.model_version is 'Model version of the date (the lowest when several scored it).';
comment on column bi.daily_score_summary.pairs is 'Scored (user, product) pairs.';
comment on column bi.daily_score_summary.users is 'Distinct users scored.';
comment on column bi.daily_score_summary.mean_probability is 'Mean calibrated probability.';
comment on column bi.daily_score_summary.median_probability is 'Median calibrated probability.';
comment on column bi.daily_score_summary.p90_probability is '90th percentile of the calibrated probability.';
comment on column bi.daily_score_summary.hot_pairs is 'Pairs in the hot tier.';
comment on column bi.daily_score_summary.warm_pairs is 'Pairs in the warm tier.';

comment on view bi.tier_distribution is 'Pairs per recommendation tier per score date, with the share of the date.';
comment on column bi.tier_distribution.score_date is 'UTC score date.';
comment on column bi.tier_distribution.tier is 'Recommendation tier: hot, warm, cool or cold.';
comment on column bi.tier_distribution.pairs is 'Pairs in the tier on that date.';
comment on column bi.tier_distribution.share is 'Share of the date''s pairs in the tier (0..1).';

comment on view bi.reason_code_frequency is 'How often each reason code was given, per score date.';
comment on column bi.reason_code_frequency.score_date is 'UTC score date.';
comment on column bi.reason_code_frequency.code is 'Reason code (see ml.reason_codes for its text).';
comment on column bi.reason_code_frequency.pairs is 'Pairs that carry the code on that date.';

comment on view bi.scoring_runs is 'Nightly scoring runs: status, volumes, stage timings and throughput.';
comment on column bi.scoring_runs.run_id is 'Scoring run id.';
comment on column bi.scoring_runs.score_date is 'UTC score date of the run.';
comment on column bi.scoring_runs.model_version is 'Model version used.';
comment on column bi.scoring_runs.status is 'running, succeeded or failed.';
comment on column bi.scoring_runs.planned_pairs is 'Active pairs planned for scoring.';
comment on column bi.scoring_runs.scored_pairs is 'Pairs scored and swapped in.';
comment on column bi.scoring_runs.buckets is 'user_id hash buckets (mapped tasks) of the run.';
comment on column bi.scoring_runs.timings is 'Seconds per stage (features, predict, explain, copy, ...), JSON.';
comment on column bi.scoring_runs.wall_seconds is 'Wall-clock seconds from start to finish.';
comment on column bi.scoring_runs.pairs_per_second is 'scored_pairs / wall_seconds.';
comment on column bi.scoring_runs.error is 'Error text of a failed run, else null.';
comment on column bi.scoring_runs.started_at is 'Start time (UTC).';
comment on column bi.scoring_runs.finished_at is 'Finish time (UTC); null while running.';

comment on view bi.daily_events is 'Events that landed in raw.events per UTC day and event type.';
comment on column bi.daily_events.event_date is 'UTC day of event_time.';
comment on column bi.daily_events.event_type is 'view, cart, remove_from_cart or purchase.';
comment on column bi.daily_events.events is 'Events of the type on the day.';
comment on column bi.daily_events.users is 'Distinct users with such an event on the day.';

comment on view bi.validation_failures is 'Every event file that failed validation, newest first, with its quarantine and report locations.';
comment on column bi.validation_failures.validated_at is 'When the file was validated (UTC).';
comment on column bi.validation_failures.file_name is 'Name of the landing file.';
comment on column bi.validation_failures.suite_name is 'Great Expectations suite that ran.';
comment on column bi.validation_failures.failed_rules is 'Rules that failed, with details (JSON).';
comment on column bi.validation_failures.row_count is 'Rows in the file.';
comment on column bi.validation_failures.quarantine_uri is 'Where the rejected file was moved.';
comment on column bi.validation_failures.report_uri is 'Validation report (Data Docs) of the file.';
