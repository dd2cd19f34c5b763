-- Rename a table's constraint (the stage's day check follows the table's new name); identifiers filled in by
-- ml.score.tables.sql_text.
alter table {table} rename constraint {constraint} to {new_name}
