-- pair_aggregates.sql from the rollups (migration 0180) for a UTC-midnight :as_of: the same CTEs, columns and
-- values, read from per-(user, product, day) and per-(user, session, day) rows instead of raw events. Windows in
-- days: [:since_day, :as_of_day) for the lookback, >= :day_7d / :day_24h for the 7-day and 24-hour view counts.
active_pairs as (
    {{ active_pairs }}
),

active_users as (
    select distinct user_id from active_pairs
),

-- every lookback (user, product, day) row of the bucket's active users, read once
stg_pair_days as materialized (
    select r.*
    from raw.rollup_pair_day as r
    where r.day >= cast(:since_day as date)
      and r.day < cast(:as_of_day as date)
      and (cast(:n_buckets as integer) is null  -- bucket k of K as a hash range (ml.bucket_hash_lo)
           or (ml.user_hash32(r.user_id) >= ml.bucket_hash_lo(cast(:bucket as integer), cast(:n_buckets as integer))
               and ml.user_hash32(r.user_id)
                   < ml.bucket_hash_lo(cast(:bucket as integer) + 1, cast(:n_buckets as integer))))
      and r.user_id in (select user_id from active_users)
),

-- user level ----------------------------------------------------------------------------------------------------
stg_user_products as (
    select
        user_id,
        product_id,
        sum(events) as events,
        sum(carts) as carts,
        sum(purchases) as purchases,
        coalesce(sum(events) filter (where extract(isodow from day) >= 6), 0) as weekend_events,
        sum(evening_events) as evening_events,
        max(last_at) as last_at,
        max(category_id) as category_id,
        max(brand) as brand
    from stg_pair_days
    group by user_id, product_id
),

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
    from stg_user_products
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
      and s.user_id in (select user_id from active_users)
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

-- pair level: the active pairs' own rows only ---------------------------------------------------------------------
stg_active_pair_days as materialized (
    select s.*
    from stg_pair_days as s
    where (s.user_id, s.product_id) in (select user_id, product_id from active_pairs)
),

-- distinct sessions of a pair: one day's set size, or the size of the union of its days' sets
feat_pair_sessions as (
    select user_id, product_id, count(distinct u) as sessions
    from (
        select s.user_id, s.product_id, unnest(s.sessions) as u
        from stg_active_pair_days as s
        where exists (
            select 1 from stg_active_pair_days as o
            where o.user_id = s.user_id and o.product_id = s.product_id and o.day <> s.day
        )
    ) as multi
    group by user_id, product_id
),

feat_pair_events as (
    select
        p.user_id,
        p.product_id,
        sum(p.views) as views,
        sum(p.carts) as carts,
        sum(p.removes) as removes,
        sum(p.purchases) as purchases,
        coalesce(min(m.sessions), max(cardinality(p.sessions))) as sessions,
        coalesce(sum(p.views) filter (where p.day >= cast(:day_24h as date)), 0) as views_24h,
        coalesce(sum(p.views) filter (where p.day >= cast(:day_7d as date)), 0) as views_7d,
        min(p.first_view_at) as first_view_at,
        max(p.last_view_at) as last_view_at,
        max(p.last_cart_at) as last_cart_at,
        max(p.last_purchase_at) as last_purchase_at,
        max(p.last_at) as last_at,
        min((p.day - cast(:since_day as date))::bigint * 86400 * 68719476736 + p.first_view_key) % 68719476736
            / 100.0 as first_view_price,
        max((p.day - cast(:since_day as date))::bigint * 86400 * 68719476736 + p.last_view_key) % 68719476736
            / 100.0 as last_view_price
    from stg_active_pair_days as p
    left join feat_pair_sessions as m on m.user_id = p.user_id and m.product_id = p.product_id
    group by p.user_id, p.product_id
)
