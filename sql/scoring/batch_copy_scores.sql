-- Stream scored rows into a run's stage table in PostgreSQL's binary COPY format (ml.score.encode). The stage and
-- its column list (ml.score.encode.SCORE_COLUMNS) are filled in by ml.score.tables.sql_text.
copy {stage} ({columns}) from stdin (format binary)
