-- Active pairs per user_id hash bucket (ml.user_bucket of bucket_count buckets) in one scan: plan_run sizes one
-- batch per bucket with it. The active pairs are sql/features/active_pairs.sql (the single definition of "active"),
-- included as a subquery by ml.score.plan.count_pairs_by_bucket; its own bucket filter is off (null).
select
    ml.user_bucket(a.user_id, cast(:bucket_count as integer)) as bucket,
    count(*) as pairs
from (
    {active_pairs}
) as a
group by 1
