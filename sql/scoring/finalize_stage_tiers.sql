-- Rows per recommendation tier in a run's stage, most frequent first (the stage is filled in by
-- ml.score.tables.sql_text).
select
    tier,
    count(*) as n
from {stage}
group by tier
order by n desc, tier
