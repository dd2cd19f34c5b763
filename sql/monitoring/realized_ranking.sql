-- ROC-AUC (Mann-Whitney, ties count one half) and PR-AUC as scikit-learn's average precision (sum over distinct
-- thresholds, descending, of recall gain x precision at that threshold) of one (:model_version, :segment).
-- Aggregates per distinct probability first, so ties are handled exactly as scikit-learn does. One query per
-- (model version, segment) keeps the sort on the float alone (a text key first makes every comparison slower).
with

levels as (
    select
        probability,
        count(*) filter (where label = 1)::double precision as pos,
        count(*) filter (where label = 0)::double precision as neg
    from mon_segments
    where model_version = :model_version and segment = :segment
    group by probability
),

cumulative as (
    select
        pos,
        neg,
        sum(pos) over desc_w  as tp,          -- positives at or above this probability
        sum(neg) over desc_w  as fp           -- negatives at or above this probability
    from levels
    window desc_w as (order by probability desc rows unbounded preceding)
),

totals as (
    select sum(pos) as total_pos, sum(neg) as total_neg from levels
)

select
    case when t.total_pos > 0 and t.total_neg > 0
         then sum(c.pos * (t.total_neg - c.fp + 0.5 * c.neg)) / (t.total_pos * t.total_neg) end as roc_auc,
    case when t.total_pos > 0 and t.total_neg > 0
         then sum(c.pos * c.tp / (c.tp + c.fp)) / t.total_pos end                              as pr_auc
from cumulative as c
cross join totals as t
group by t.total_pos, t.total_neg
