-- Attach a table as the partition of scoring.scores for [from_date, to_date): one score date. Its day check makes
-- the attach skip the validation scan.
alter table scoring.scores attach partition {partition}
    for values from (cast(:from_date as date)) to (cast(:to_date as date))
