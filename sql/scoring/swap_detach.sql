-- Detach the day's old partition from scoring.scores (filled in by ml.score.tables.sql_text).
alter table scoring.scores detach partition {partition}
