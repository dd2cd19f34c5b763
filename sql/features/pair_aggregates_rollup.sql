-- pair_aggregates.sql from the rollups (migration 0180) for a UTC-midnight :as_of: the same CTEs, columns and
-- values, read from per-(user, product, day) and per-(user, session, day) rows instead of raw events. Windows in
-- days: [:since_day, :as_of_day) for the lookback, >= :day_7d / :day_24h for the 7-day and 24-hour view counts,
-- >= :active_since_day for the active window.
--
-- Shape (docs/features.md, "Rollups"): the bucket's lookback pair-days are read once and aggregated ONCE per
-- (user, product): that one aggregate gives the pair features, the per-user sums and distinct counts, and whether
-- the pair is active (a view or a cart on a day of the active window: active_pairs_rollup.sql's definition, on
-- the same rows). A pair's distinct sessions over several days: the distinct elements of its days' session sets,
-- concatenated in the same aggregate (ml.array_concat_agg, migration 0210).
-- The users need no "has an active pair" filter here: the final join to the active pairs keeps exactly those.
stg_pair_days as (
    select r.*
    from raw.rollup_pair_day as r
    where r.day >= cast(:since_day as date)
      and r.day < cast(:as_of_day as date)
      and (cast(:n_buckets as integer) is null  -- bucket k of K as a hash range (ml.bucket_hash_lo)
           or (ml.user_hash32(r.user_id) >= ml.bucket_hash_lo(cast(:bucket as integer), cast(:n_buckets as integer))
               and ml.user_hash32(r.user_id)
                   < ml.bucket_hash_lo(cast(:bucket as integer) + 1, cast(:n_buckets as integer))))
),

-- one row per (user, product) of the bucket's users over the lookback ---------------------------------------------
stg_pairs as materialized (
    select
        user_id,
        product_id,
        (bool_or(views > 0 or carts > 0) filter (where day >= cast(:active_since_day as date))) is true as active,
        count(*) as days,
        sum(events) as events,
        sum(views) as views,
        sum(carts) as carts,
        sum(removes) as removes,
        sum(purchases) as purchases,
        coalesce(sum(events) filter (where extract(isodow from day) >= 6), 0) as weekend_events,
        sum(evening_events) as evening_events,
        case when count(*) = 1 then max(cardinality(sessions))
             else (select count(distinct u) from unnest(ml.array_concat_agg(sessions)) as u) end as sessions,
        coalesce(sum(views) filter (where day >= cast(:day_24h as date)), 0) as views_24h,
        coalesce(sum(views) filter (where day >= cast(:day_7d as date)), 0) as views_7d,
        min(first_view_at) as first_view_at,
        max(last_view_at) as last_view_at,
        max(last_cart_at) as last_cart_at,
        max(last_purchase_at) as last_purchase_at,
        max(last_at) as last_at,
        min((day - cast(:since_day as date))::bigint * 86400 * 68719476736 + first_view_key) % 68719476736
            / 100.0 as first_view_price,
        max((day - cast(:since_day as date))::bigint * 86400 * 68719476736 + last_view_key) % 68719476736
            / 100.0 as last_view_price,
        max(category_id) as category_id,
        max(brand) as brand
    from stg_pair_days
    group by user_id, product_id
),

-- user level ----------------------------------------------------------------------------------------------------
feat_users as (
    select
        user_id,
        sum(events) as events,
        count(*) as products,
        count(distinct category_id) as categories,
        count(distinct brand) as brands,  -- a missing brand is not a brand
        sum(carts) as carts,
        sum(purchases) as purchases,
        count(*) filter (where carts > 0) as carted_products,
        count(*) filter (where carts > 0 and purchases > 0) as carted_purchased_products,
        sum(weekend_events) as weekend_events,
        sum(evening_events) as evening_events,
        max(last_at) as last_at
    from stg_pairs
    group by user_id
),

stg_user_session_days as (
    select s.user_id, s.user_session, s.day, s.events, s.first_at, s.last_at
    from raw.rollup_user_session_day as s
    where s.day >= cast(:since_day as date)
      and s.day < cast(:as_of_day as date)
      and (cast(:n_buckets as integer) is null
           or (ml.user_hash32(s.user_id) >= ml.bucket_hash_lo(cast(:bucket as integer), cast(:n_buckets as integer))
               and ml.user_hash32(s.user_id)
                   < ml.bucket_hash_lo(cast(:bucket as integer) + 1, cast(:n_buckets as integer))))
),

feat_user_days as (
    select user_id, count(distinct day) as days_active
    from stg_user_session_days
    group by user_id
),

feat_user_sessions as (
    select
        user_id,
        count(*) as sessions,
        avg(date_part('epoch', last_at - first_at) / 60) as mean_session_minutes,
        avg(events) as events_per_session
    from (
        select user_id, user_session, min(first_at) as first_at, max(last_at) as last_at, sum(events) as events
        from stg_user_session_days
        where user_session is not null
        group by user_id, user_session
    ) as sessions
    group by user_id
),

-- pair level: the active pairs ----------------------------------------------------------------------------------
feat_pair_events as (
    select
        p.user_id,
        p.product_id,
        p.views,
        p.carts,
        p.removes,
        p.purchases,
        p.sessions,
        p.views_24h,
        p.views_7d,
        p.first_view_at,
        p.last_view_at,
        p.last_cart_at,
        p.last_purchase_at,
        p.last_at,
        p.first_view_price,
        p.last_view_price
    from stg_pairs as p
    where p.active
)
