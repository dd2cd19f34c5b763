-- Hot pairs of one score_date: each user's top-N products by probability, at or above a probability floor.
-- One row per user (ascending user_id) holding that user's hot pairs as parallel arrays, so the publisher parses a
-- few thousand array rows instead of millions of pair rows. The arrays are aggregated in one pass over the ranked
-- rows, so they line up with each other; no per-aggregate ORDER BY (six sorts per user, ~1 s of a 1M-pair publish):
-- Redis ranks by score, the arrays' order does not matter. A pair's reason codes and texts are
-- each joined with the unit separator (U+001F, never part of a rendered reason text); the publisher checks that
-- codes and texts split into the same number of parts.
-- Parameters (psycopg style, merged client-side by COPY): score_date, min_probability, top_n; part and parts: the
-- users of user-hash range part of parts (ml.bucket_hash_lo, as the scoring buckets), both null: every user.
with

-- the finalized partition of the day, above the floor
scored as (
    select
        user_id,
        product_id,
        probability,
        tier,
        reason_codes,
        reason_texts,
        arm
    from scoring.scores
    where score_date = %(score_date)s
      and probability >= %(min_probability)s
      and (%(parts)s::integer is null
           or (ml.user_hash32(user_id) >= ml.bucket_hash_lo(%(part)s::integer, %(parts)s::integer)
               and ml.user_hash32(user_id) < ml.bucket_hash_lo(%(part)s::integer + 1, %(parts)s::integer)))
),

-- rank products within each user; product_id breaks ties so a re-publish writes the same set
ranked as (
    select
        *,
        row_number() over (partition by user_id order by probability desc, product_id) as rnk
    from scored
)

select
    user_id,
    array_agg(product_id)                                        as product_ids,
    array_agg(probability)                                       as probabilities,
    array_agg(tier)                                              as tiers,
    array_agg(array_to_string(reason_codes, chr(31)))            as reason_codes,
    array_agg(array_to_string(reason_texts, chr(31)))            as reason_texts,
    max(arm)                                                     as arm  -- experiment arm (one per user)
from ranked
where rnk <= %(top_n)s
group by user_id
order by user_id
