-- A check on the stage equal to the partition bound of score_date: ATTACH PARTITION then skips its validation
-- scan. psycopg2 binds client-side, so this DDL takes a bind parameter like any statement.
alter table {stage} add constraint {constraint}
    check (score_date >= cast(:score_date as date) and score_date < cast(:score_date as date) + 1)
