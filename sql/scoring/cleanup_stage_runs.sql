-- The runs owning the given stage tables (stage_tables: text[]), each with whether it has been running for longer
-- than stale_hours (then it crashed: nothing finalizes it any more).
select
    run_id,
    score_date,
    status,
    started_at < now() - make_interval(hours => :stale_hours) as stale
from scoring.runs
where stage_table = any(:stage_tables)
