-- A running run whose stage table is being dropped (superseded by a new run of its date, or stale) becomes failed;
-- an error it already recorded is kept. Only while it is running: the status was read before the drop waited for
-- the run's locks, and a run that swapped its partition in meanwhile stays succeeded.
update scoring.runs
set status = 'failed',
    finished_at = now(),
    error = coalesce(error, 'abandoned: superseded by a newer run or stale')
where run_id = :run_id
  and status = 'running'
