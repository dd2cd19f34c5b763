-- Every run stage table that exists (scoring.scores_stage_<run_id>), live or left behind: plan_run's cleanup
-- decides which of them to drop.
select c.relname
from pg_class as c
join pg_namespace as n on n.oid = c.relnamespace
where n.nspname = 'scoring'
  and c.relkind = 'r'
  and c.relname like 'scores\_stage\_%'
order by c.relname  -- one order: two concurrent plans drop the same stages without a deadlock
