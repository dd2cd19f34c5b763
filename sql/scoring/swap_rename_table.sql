-- Rename a table of the scoring schema (the stage becomes the day's partition); identifiers filled in by
-- ml.score.tables.sql_text.
alter table {table} rename to {new_name}
