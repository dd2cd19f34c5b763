-- The per-pair, per-user aggregates of pair_features.sql computed from raw.events (the definition; the rollup
-- variant pair_aggregates_rollup.sql must give the same columns and values). A list of CTEs, included after
-- "with": active_pairs, feat_users, feat_user_days, feat_user_sessions, feat_pair_events.
active_pairs as (
    {{ active_pairs }}
),

active_users as (
    select distinct user_id from active_pairs
),

-- stg: every lookback event of the bucket's active users, read once (a bucket is a small share of the events;
-- three aggregates read this instead of three scans of raw.events)
stg_events as materialized (
    select
        e.user_id,
        e.product_id,
        e.event_type,
        e.event_time,
        e.price,
        e.user_session,
        e.category_id,
        e.brand
    from raw.events as e
    where e.event_time >= :since
      and e.event_time < :as_of
      and (cast(:n_buckets as integer) is null  -- bucket k of K as a hash range (ml.bucket_hash_lo)
           or (ml.user_hash32(e.user_id) >= ml.bucket_hash_lo(cast(:bucket as integer), cast(:n_buckets as integer))
               and ml.user_hash32(e.user_id)
                   < ml.bucket_hash_lo(cast(:bucket as integer) + 1, cast(:n_buckets as integer))))
      and e.user_id in (select user_id from active_users)
),

-- user level ----------------------------------------------------------------------------------------------------
-- one row per (user, product) the user touched: few, by-value aggregates (hash tables stay small)
stg_user_products as (
    select
        user_id,
        product_id,
        count(*) as events,
        count(*) filter (where event_type = 'cart') as carts,
        count(*) filter (where event_type = 'purchase') as purchases,
        count(*) filter (where date_part('isodow', event_time at time zone 'UTC') >= 6) as weekend_events,
        count(*) filter (where date_part('hour', event_time at time zone 'UTC') >= 18) as evening_events,
        max(event_time) as last_at,
        max(category_id) as category_id,
        max(brand collate "C") as brand
    from stg_events
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

-- one row per (user, session id, UTC day): sessions and active days; events without a session id are no session
stg_user_session_days as (
    select
        user_id,
        user_session,
        (event_time at time zone 'UTC')::date as day,
        count(*) as events,
        min(event_time) as first_at,
        max(event_time) as last_at
    from stg_events
    group by user_id, user_session, day
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

-- pair level: the active pairs' own events only ---------------------------------------------------------------
feat_pair_events as (
    select
        user_id,
        product_id,
        count(*) filter (where event_type = 'view') as views,
        count(*) filter (where event_type = 'cart') as carts,
        count(*) filter (where event_type = 'remove_from_cart') as removes,
        count(*) filter (where event_type = 'purchase') as purchases,
        count(distinct user_session) as sessions,
        count(*) filter (where event_type = 'view' and event_time >= :since_24h) as views_24h,
        count(*) filter (where event_type = 'view' and event_time >= :since_7d) as views_7d,
        min(event_time) filter (where event_type = 'view') as first_view_at,
        max(event_time) filter (where event_type = 'view') as last_view_at,
        max(event_time) filter (where event_type = 'cart') as last_cart_at,
        max(event_time) filter (where event_type = 'purchase') as last_purchase_at,
        max(event_time) as last_at,
        min(price_key) filter (where event_type = 'view') % 68719476736 / 100.0 as first_view_price,
        max(price_key) filter (where event_type = 'view') % 68719476736 / 100.0 as last_view_price
    from (
        select
            s.*,
            floor(date_part('epoch', s.event_time - cast(:since as timestamptz)))::bigint * 68719476736
                + least(round(s.price * 100), 68719476735)::bigint as price_key
        from stg_events as s
        where (s.user_id, s.product_id) in (select user_id, product_id from active_pairs)
    ) as pair_events
    group by user_id, product_id
)
