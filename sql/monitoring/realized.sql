-- Realized performance of :score_date in one pass over its scored pairs (ml.monitor.evaluate_date).
--
-- Every scored pair gets the trainer's label (sql/features/label_purchases.sql: purchases in [:as_of,
-- :label_until)), its rank within the user (probability desc, product_id), whether the latest publication of the
-- date held it (published: top :top_n per user at or above :min_probability, a prefix of the user's ranking; no
-- publication: none) and, for ROC-AUC / PR-AUC, the labels ranked above it. The pairs are then summed once into
-- (model_version, arm, calibration bin, tier) cells, and the cells rolled up into the rows returned, per segment as
-- column pairs (*_all: every pair, *_pub: only the published pairs):
--   level 'summary' (model_version[, arm]): volumes, log-loss / Brier / top-k sums, ROC-AUC and PR-AUC sums;
--   level 'bin'     (model_version[, arm], bin): the reliability curve on :n_bins equal-width probability bins;
--   level 'tier'    (model_version[, arm], tier): conversion per tier.
-- arm is '(all)' on the rows over every pair of the model version. The experiment arms: ml.monitor fills in
-- the arm and arm_ranking placeholders with one of two static fragments (ARM_FRAGMENTS): on a date an experiment scored,
-- arm is scoring.scores.arm ('(unenrolled)' for a pair outside the experiment) and ROC-AUC / PR-AUC get a second
-- pair of windows per (model_version, arm), one more sort; on any other date arm is null (its rows are dropped)
-- and the arm ranking columns are null, so the date pays for no second sort.
--
-- Exact and equal to scikit-learn, ties included: with, per pair, tp / fp = positives / negatives at or above its
-- probability (ties included) and P / N = positives / negatives,
--   ROC-AUC = 1/2 + (sum over negatives of tp - sum over positives of fp) / (2 P N)
--     (Mann-Whitney with a tie counting one half: a positive's negatives strictly above it number fp minus the
--     tied ones, and summed over positives they are P N minus the sum over negatives of tp, tied pairs included;
--     so one range-frame window serves both metrics)
--   PR-AUC  = sum over positives of tp / (tp + fp) / P              (average precision: the positives at one
--                                                                     threshold share its precision)
-- Two sorts: per (model version, user) and, incrementally on the model version, by probability, shared by the two
-- score windows (same partition and order); a date an experiment scored adds one sort per (model version, arm).
-- Nothing is materialized; memory is bounded by work_mem (a sort beyond it spills to disk).
with

label_purchases as (
    {{ label_purchases }}
),

-- Sort keys are integers: a text key compared on every one of ~20M comparisons (all equal: one model version)
-- made the probability sort ~5x slower than on a leading integer. model_key / arm_key are 64-bit hashes of the
-- texts; ml.monitor checks that no two model versions (or arms) of the date share one, so the ranking stays exact.
-- "C" collation: the texts are still grouped on, and a locale-aware comparison costs more than the rest.
scored as (
    select
        s.model_version collate "C"         as model_version,
        hashtextextended(s.model_version, 0) as model_key,
        s.user_id,
        s.product_id,
        s.probability,
        s.tier collate "C"                  as tier,
        {{ arm }}                           as arm,
        (l.user_id is not null)::integer    as label
    from scoring.scores as s
    left join label_purchases as l on l.user_id = s.user_id and l.product_id = s.product_id
    where s.score_date = :score_date
),

-- user level: rank within the user and the positives up to this rank. A user's first positive (label = 1 and
-- positives_so_far = 1) stands for the user in hit-rate@k: the user has a positive, and a hit in the top k when
-- that first positive ranks within k. (A user's pairs all carry one model version, as an experiment splits by user;
-- the key keeps them apart anyway.)
ranked as (
    select
        *,
        row_number() over by_user                          as rnk,
        count(*) filter (where label = 1) over by_user     as positives_so_far
    from scored
    window by_user as (partition by model_key, user_id order by probability desc, product_id
                       rows between unbounded preceding and current row)
),

flagged as (
    select
        *,
        coalesce(rnk <= cast(:top_n as integer) and probability >= :min_probability, false) as published,
        label = 1 and positives_so_far = 1                                                   as first_positive,
        least(floor(probability * :n_bins)::integer, :n_bins - 1)                            as bin,
        hashtextextended(arm, 0)                                                             as arm_key
    from ranked
),

-- ranking level: labels at or above each pair's probability (range frame: ties included), per segment
cumulative as (
    select
        *,
        count(*) filter (where label = 1) over by_score                                     as tp,
        count(*) filter (where label = 0) over by_score                                     as fp,
        count(*) filter (where label = 1 and published) over by_score                       as tp_pub,
        count(*) filter (where label = 0 and published) over by_score                       as fp_pub,
        {{ arm_ranking }}
    from flagged
    window by_score as (partition by model_key order by -probability
                        range between unbounded preceding and current row),
           by_arm_score as (partition by model_key, arm_key order by -probability
                            range between unbounded preceding and current row)
),

-- one hashed pass over the pairs into (model_version, arm, bin, tier) cells; every column is additive
cells as (
    select
        model_version,
        arm,
        bin,
        tier,
        min(model_key)                                                                          as model_key,
        min(arm_key)                                                                            as arm_key,
        -- every pair
        count(*)                                                                                as pairs_all,
        sum(label)                                                                              as positives_all,
        sum(probability)                                                                        as sum_probability_all,
        sum(case when label = 1 then -ln(greatest(probability, 1e-15))
                 else -ln(greatest(1 - probability, 1e-15)) end)                               as sum_log_loss_all,
        sum((probability - label) ^ 2)                                                          as sum_brier_all,
        count(*) filter (where rnk = 1)                                                         as users_all,
        count(*) filter (where rnk <= :k)                                                       as shown_all,
        count(*) filter (where rnk <= :k and label = 1)                                         as top_hits_all,
        count(*) filter (where first_positive)                                                  as positive_users_all,
        count(*) filter (where first_positive and rnk <= :k)                                    as hit_users_all,
        sum(fp) filter (where label = 1)                                                        as fp_sum_all,
        sum(tp) filter (where label = 0)                                                        as tp_sum_all,
        sum(tp::double precision / (tp + fp)) filter (where label = 1)                          as ap_sum_all,
        sum(fp_arm) filter (where label = 1)                                                    as arm_fp_sum_all,
        sum(tp_arm) filter (where label = 0)                                                    as arm_tp_sum_all,
        sum(tp_arm::double precision / (tp_arm + fp_arm)) filter (where label = 1)              as arm_ap_sum_all,
        -- the published pairs
        count(*) filter (where published)                                                       as pairs_pub,
        sum(label) filter (where published)                                                     as positives_pub,
        sum(probability) filter (where published)                                               as sum_probability_pub,
        sum(case when label = 1 then -ln(greatest(probability, 1e-15))
                 else -ln(greatest(1 - probability, 1e-15)) end) filter (where published)      as sum_log_loss_pub,
        sum((probability - label) ^ 2) filter (where published)                                 as sum_brier_pub,
        count(*) filter (where rnk = 1 and published)                                           as users_pub,
        count(*) filter (where rnk <= :k and published)                                         as shown_pub,
        count(*) filter (where rnk <= :k and label = 1 and published)                           as top_hits_pub,
        count(*) filter (where first_positive and published)                                    as positive_users_pub,
        count(*) filter (where first_positive and published and rnk <= :k)                      as hit_users_pub,
        sum(fp_pub) filter (where label = 1 and published)                                      as fp_sum_pub,
        sum(tp_pub) filter (where label = 0 and published)                                      as tp_sum_pub,
        sum(tp_pub::double precision / (tp_pub + fp_pub)) filter (where label = 1 and published) as ap_sum_pub,
        sum(fp_arm_pub) filter (where label = 1 and published)                                  as arm_fp_sum_pub,
        sum(tp_arm_pub) filter (where label = 0 and published)                                  as arm_tp_sum_pub,
        sum(tp_arm_pub::double precision / (tp_arm_pub + fp_arm_pub)) filter (where label = 1 and published)
                                                                                                as arm_ap_sum_pub
    from cumulative
    group by model_version, arm, bin, tier
)

-- the three levels, over every pair of the model version and per arm, from the cells; an arm row's ROC-AUC / PR-AUC
-- sums are the ones ranked within the arm
select
    case grouping(bin, tier) when 3 then 'summary' when 1 then 'bin' else 'tier' end      as level,
    model_version,
    case when grouping(arm) = 1 then '(all)' else arm end                                  as arm,
    bin,
    tier,
    min(model_key)                                                                          as model_key,
    min(arm_key)                                                                            as arm_key,
    sum(pairs_all) as pairs_all,
    sum(positives_all) as positives_all,
    sum(sum_probability_all) as sum_probability_all,
    sum(sum_log_loss_all) as sum_log_loss_all,
    sum(sum_brier_all) as sum_brier_all,
    sum(users_all) as users_all,
    sum(shown_all) as shown_all,
    sum(top_hits_all) as top_hits_all,
    sum(positive_users_all) as positive_users_all,
    sum(hit_users_all) as hit_users_all,
    case when grouping(arm) = 1 then sum(fp_sum_all) else sum(arm_fp_sum_all) end as fp_sum_all,
    case when grouping(arm) = 1 then sum(tp_sum_all) else sum(arm_tp_sum_all) end as tp_sum_all,
    case when grouping(arm) = 1 then sum(ap_sum_all) else sum(arm_ap_sum_all) end as ap_sum_all,
    sum(pairs_pub) as pairs_pub,
    sum(positives_pub) as positives_pub,
    sum(sum_probability_pub) as sum_probability_pub,
    sum(sum_log_loss_pub) as sum_log_loss_pub,
    sum(sum_brier_pub) as sum_brier_pub,
    sum(users_pub) as users_pub,
    sum(shown_pub) as shown_pub,
    sum(top_hits_pub) as top_hits_pub,
    sum(positive_users_pub) as positive_users_pub,
    sum(hit_users_pub) as hit_users_pub,
    case when grouping(arm) = 1 then sum(fp_sum_pub) else sum(arm_fp_sum_pub) end as fp_sum_pub,
    case when grouping(arm) = 1 then sum(tp_sum_pub) else sum(arm_tp_sum_pub) end as tp_sum_pub,
    case when grouping(arm) = 1 then sum(ap_sum_pub) else sum(arm_ap_sum_pub) end as ap_sum_pub
from cells
group by grouping sets ((model_version), (model_version, bin), (model_version, tier),
                       (model_version, arm), (model_version, arm, bin), (model_version, arm, tier))
