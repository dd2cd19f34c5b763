-- The drift reference sample an earlier attempt of one bucket of a run committed: a retry writes it again.
delete from scoring.feature_samples
where run_id = :run_id
  and bucket = :bucket
