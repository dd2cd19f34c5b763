-- A repeatable Bernoulli sample (percent of the stage's rows) of each scored pair's additivity residual in
-- log-odds, |base_value + sum(contributions) - logit(probability)|; infinite where the probability is 0 or 1 (no
-- finite logit). The sample and stage identifiers are filled in by ml.score.tables.sql_text.
create table {sample} as
select
    s.user_id,
    s.product_id,
    case
        when s.probability > 0 and s.probability < 1
            then abs(
                s.base_value
                + (select sum(c::float8) from unnest(s.contributions) as c)
                - ln(s.probability / (1 - s.probability))
            )
        else 'Infinity'::float8
    end as residual
from {stage} as s tablesample bernoulli (:percent) repeatable (0)
