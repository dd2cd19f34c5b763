-- The run of the same score date that started after :run_id and beat it (ml.score.race): it superseded the run
-- (its plan dropped the run's stage and marked it failed) or it succeeded (swapped its partition in). The succeeded
-- one first, then the newest. No row: :run_id did not lose to another run.
select
    r.score_date,
    r.started_at as lost_started_at,
    w.run_id,
    w.started_at,
    w.status
from scoring.runs as r
join scoring.runs as w
    on w.score_date = r.score_date
    and w.run_id <> r.run_id
    and w.started_at > r.started_at
where r.run_id = :run_id
  and r.status <> 'succeeded'
  and (w.status = 'succeeded' or (r.status = 'failed' and r.error like 'abandoned: superseded%'))
order by (w.status = 'succeeded') desc, w.started_at desc
limit 1
