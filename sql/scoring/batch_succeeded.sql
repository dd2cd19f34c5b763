-- Close one bucket of a run as succeeded (in the transaction of its COPY): rows written, seconds per stage (jsonb),
-- the largest additivity residual.
update scoring.run_batches
set status = 'succeeded',
    scored_pairs = :scored_pairs,
    timings = cast(:timings as jsonb),
    max_residual = :max_residual,
    finished_at = clock_timestamp()  -- now() would be the start of the COPY transaction
where run_id = :run_id
  and bucket = :bucket
