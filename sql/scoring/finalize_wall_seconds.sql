-- Seconds from a run's plan to now (the clock, not the transaction start).
select extract(epoch from clock_timestamp() - started_at)
from scoring.runs
where run_id = :run_id
