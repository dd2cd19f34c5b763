-- Realized performance per experiment arm (issue 13; ../shared/DESIGN.md "per score date, model version and
-- experiment arm"). A score date scored by an A/B experiment (ml.score.arms: scoring.scores.arm) gets, besides the
-- overall rows of each model version, one row set per arm:
--   arm = '(all)'        every pair the model version scored on the date (the only rows of a date outside an
--                        experiment, and every row written before this migration);
--   arm = <arm name>     the pairs of the experiment's arm (experiments.arms.arm; names match
--                        ^[a-z0-9][a-z0-9_-]{0,31}$, so they never collide with the two bracketed values);
--   arm = '(unenrolled)' the pairs of users the experiment did not enroll (traffic_percent < 100), scored by the
--                        control arm's model with scoring.scores.arm null.
-- experiment_id: the experiment that scored the date (null outside one). The arm joins every primary key, so a
-- re-evaluation still replaces a date's rows and never duplicates one.

alter table monitoring.realized_metrics add column if not exists arm text not null default '(all)';
alter table monitoring.realized_metrics add column if not exists experiment_id text;
alter table monitoring.realized_metrics drop constraint if exists realized_metrics_pkey;
alter table monitoring.realized_metrics add primary key (score_date, model_version, segment, arm);

alter table monitoring.tier_outcomes add column if not exists arm text not null default '(all)';
alter table monitoring.tier_outcomes drop constraint if exists tier_outcomes_pkey;
alter table monitoring.tier_outcomes add primary key (score_date, model_version, segment, arm, tier);

alter table monitoring.calibration_bins add column if not exists arm text not null default '(all)';
alter table monitoring.calibration_bins drop constraint if exists calibration_bins_pkey;
alter table monitoring.calibration_bins add primary key (score_date, model_version, segment, arm, bin);

-- The BI views gain the arm (and the experiment) as their last columns: `create or replace` keeps their grants.
-- Filter arm = '(all)' for one row per score date, model version and segment, as before.
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
    r.evaluated_at,
    r.arm,
    r.experiment_id
from monitoring.realized_metrics as r
left join ml.model_versions as v on v.version = r.model_version;

create or replace view bi.calibration as
select score_date, model_version, segment, bin, lower_bound, upper_bound, pairs, mean_probability, observed_rate, arm
from monitoring.calibration_bins;

create or replace view bi.tier_conversion as
select
    score_date, model_version, segment, tier, pairs, positives,
    mean_probability as expected_conversion,
    conversion       as realized_conversion,
    lift,
    arm
from monitoring.tier_outcomes;
