-- Per (model_version, segment): volume, base rate, log loss (probabilities clipped to [1e-15, 1 - 1e-15] as
-- scikit-learn), Brier, and precision / hit rate in each user's top :k.
with

per_user as (
    select
        model_version,
        segment,
        user_id,
        least(count(*), :k)                               as shown,      -- pairs in the user's top k
        count(*) filter (where rnk <= :k and label = 1)   as top_hits,
        bool_or(label = 1)                                as has_positive
    from mon_segments
    group by model_version, segment, user_id
),

users as (
    select
        model_version,
        segment,
        count(*)                                                        as users,
        sum(top_hits)::double precision / nullif(sum(shown), 0)         as precision_at_k,
        avg((top_hits > 0)::integer) filter (where has_positive)        as hit_rate_at_k
    from per_user
    group by model_version, segment
),

pairs as (
    select
        model_version,
        segment,
        count(*)                                   as pairs,
        sum(label)                                 as positives,
        avg(label)                                 as base_rate,
        avg(probability)                           as mean_probability,
        -avg(case when label = 1 then ln(greatest(probability, 1e-15))
                  else ln(greatest(1 - probability, 1e-15)) end)        as log_loss,
        avg((probability - label) ^ 2)             as brier
    from mon_segments
    group by model_version, segment
)

select p.*, u.users, u.precision_at_k, u.hit_rate_at_k
from pairs as p
join users as u using (model_version, segment)
