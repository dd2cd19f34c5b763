-- The drift reference sample of a run whose stage table was dropped.
delete from scoring.feature_samples
where run_id = :run_id
