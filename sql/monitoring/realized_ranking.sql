-- Per (model_version, segment): ROC-AUC (Mann-Whitney, ties count one half) and PR-AUC as scikit-learn's
-- average precision (sum over distinct thresholds, descending, of recall gain x precision at that threshold).
-- Aggregates per distinct probability first, so ties are handled exactly as scikit-learn does.
with

levels as (
    select
        model_version,
        segment,
        probability,
        count(*) filter (where label = 1)::double precision as pos,
        count(*) filter (where label = 0)::double precision as neg
    from mon_segments
    group by model_version, segment, probability
),

cumulative as (
    select
        *,
        sum(neg) over asc_w - neg                         as neg_below,
        sum(pos) over desc_w                              as tp,
        sum(neg) over desc_w                              as fp,
        sum(pos) over (partition by model_version, segment) as total_pos,
        sum(neg) over (partition by model_version, segment) as total_neg
    from levels
    window
        asc_w as (partition by model_version, segment order by probability rows unbounded preceding),
        desc_w as (partition by model_version, segment order by probability desc rows unbounded preceding)
)

select
    model_version,
    segment,
    case when max(total_pos) > 0 and max(total_neg) > 0
         then sum(pos * (neg_below + 0.5 * neg)) / (max(total_pos) * max(total_neg)) end as roc_auc,
    case when max(total_pos) > 0 and max(total_neg) > 0
         then sum(pos * tp / (tp + fp)) / max(total_pos) end                            as pr_auc
from cumulative
group by model_version, segment
