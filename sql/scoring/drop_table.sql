-- Drop one table of the scoring schema if it exists (a stage, a check sample, a replaced day partition).
-- The table identifier is filled in by ml.score.tables.sql_text.
drop table if exists {table}
