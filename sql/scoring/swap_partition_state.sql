-- Whether a table named like the day's partition exists in the scoring schema (no row: it does not), and whether
-- it is attached to scoring.scores.
select
    c.oid,
    exists (
        select 1
        from pg_inherits as i
        where i.inhrelid = c.oid
          and i.inhparent = 'scoring.scores'::regclass
    ) as attached
from pg_class as c
join pg_namespace as n on n.oid = c.relnamespace
where n.nspname = 'scoring'
  and c.relname = :partition
