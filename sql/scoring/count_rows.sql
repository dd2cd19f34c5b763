-- The number of rows of one table (filled in by ml.score.tables.sql_text).
select count(*)
from {table}
