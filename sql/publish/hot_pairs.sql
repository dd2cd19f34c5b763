-- Hot pairs of one score_date: each user's top-N products by probability, at or above a probability floor.
-- One row per (user_id, product_id), ordered by user_id, then strongest first: the publisher groups rows by user.
-- Parameters (psycopg style, merged client-side by COPY): score_date, min_probability, top_n.
with

-- the finalized partition of the day, above the floor
scored as (
    select
        user_id,
        product_id,
        probability,
        tier,
        reason_codes,
        reason_texts
    from scoring.scores
    where score_date = %(score_date)s
      and probability >= %(min_probability)s
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
    product_id,
    probability,
    tier,
    reason_codes,
    reason_texts
from ranked
where rnk <= %(top_n)s
order by user_id, rnk
