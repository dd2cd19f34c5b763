-- Rows per reason code in a run's stage, most frequent first (the stage is filled in by ml.score.tables.sql_text).
select
    code,
    count(*) as n
from {stage}, unnest(reason_codes) as code
group by code
order by n desc, code
