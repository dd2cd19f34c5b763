-- Rows and users per experiment arm in a run's stage (arm null: scored outside any experiment, by the run's model).
-- The stage is filled in by ml.score.tables.sql_text.
select
    experiment_id,
    arm,
    model_version,
    count(*)                as pairs,
    count(distinct user_id) as users
from {stage}
group by experiment_id, arm, model_version
order by arm nulls last
