-- The index names of one table of the scoring schema (the renamed stage: its indexes still carry the stage's name).
select indexname
from pg_indexes
where schemaname = 'scoring'
  and tablename = :partition
