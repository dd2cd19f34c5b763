-- The drift reference sample of a run whose stage table was dropped (kept if the run swapped its partition in
-- while the drop waited for its locks).
delete from scoring.feature_samples
where run_id = :run_id
  and not exists (select 1 from scoring.runs where run_id = :run_id and status = 'succeeded')
