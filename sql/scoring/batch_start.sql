-- Mark one bucket running and count the attempt; returns the attempts made before this one (more than 0: an earlier
-- attempt may have committed rows) and the bucket's planned pairs. No row: the bucket was not planned.
update scoring.run_batches as b
set status = 'running',
    attempts = b.attempts + 1,
    started_at = now(),
    error = null
from (
    select attempts
    from scoring.run_batches
    where run_id = :run_id
      and bucket = :bucket
    for update
) as old
where b.run_id = :run_id
  and b.bucket = :bucket
returning old.attempts, b.planned_pairs
