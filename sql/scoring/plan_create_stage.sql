-- A run's stage table: the shape of scoring.scores with its defaults, checks and primary key, so that it can later
-- be attached as the day's partition. The stage identifier is filled in by ml.score.tables.sql_text.
create table {stage} (like scoring.scores including defaults including constraints including indexes)
