-- Rename one index of the scoring schema; identifiers filled in by ml.score.tables.sql_text.
alter index {index} rename to {new_name}
