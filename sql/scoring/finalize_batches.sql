-- The buckets of a run in order, each with its status, rows written and seconds per stage.
select
    bucket,
    status,
    scored_pairs,
    timings
from scoring.run_batches
where run_id = :run_id
order by bucket
