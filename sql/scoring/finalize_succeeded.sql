-- Close a run as succeeded (in the swap's transaction): rows scored, seconds per stage and its summary (jsonb).
update scoring.runs
set status = 'succeeded',
    scored_pairs = :scored_pairs,
    finished_at = now(),
    timings = cast(:timings as jsonb),
    summary = cast(:summary as jsonb)
where run_id = :run_id
