-- Mark a run failed with its error, unless it already finished (a failed run keeps its first error).
update scoring.runs
set status = 'failed',
    error = :error,
    finished_at = now()
where run_id = :run_id
  and status = 'running'
