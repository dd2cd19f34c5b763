-- Mark one bucket of a run failed with its error (nothing of the attempt stays in the stage).
update scoring.run_batches
set status = 'failed',
    error = :error,
    finished_at = now()
where run_id = :run_id
  and bucket = :bucket
