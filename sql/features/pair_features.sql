-- feat_pairs: point-in-time features of the pairs active at :as_of (active_pairs.sql) for the users of hash bucket
-- :bucket of :n_buckets (both null: every user), one row per pair, and, when :with_labels, the pair's label.
--
-- Windows (half-open, UTC; see docs/features.md). Every feature reads only events in [:since, :as_of); the label
-- reads only purchases in [:as_of, :label_until). An event at exactly :as_of is future, never a feature.
-- Bind parameters, all bound by ml/features.py (no value is ever formatted into this text):
--   as_of, since, active_since, since_7d, since_24h, label_until  timestamptz
--   n_buckets, bucket                                             integer, or both null
--   with_labels boolean;  negative_rate float8 in (0, 1];  sample_salt bigint (seeds the negative subsample)
-- Double-brace placeholders below are replaced by the static text of the SQL file of that name
-- (ml.features.render_sql), so "active", "label" and the item statistics each have one definition.
--
-- Shape (see docs/features.md, "Performance"): the bucket filter (a hash range) and the active-user semi-join sit in
-- the scan of raw.events, before any aggregation; the bucket's events are read once (materialised) and feed three
-- aggregates; aggregate states are by-value (counts, timestamps, one packed bigint), so hash tables stay small.
-- Price at a view is carried as a packed key: (whole seconds since :since) * 2^36 + price in cents, so min/max of
-- one bigint gives the first/last view's price (ties within a second: lowest/highest price).
with
{{ pair_aggregates }},

-- product, category and brand level (every user's events) -------------------------------------------------------
feat_items as (
    {{ item_stats }}
),

-- labels: a purchase of the pair in [:as_of, :label_until); skipped entirely unless :with_labels ---------------------
labels as (
    select l.user_id, l.product_id
    from (
        {{ label_purchases }}
    ) as l
    where cast(:with_labels as boolean)
),

feat_pairs as (
    select
        p.user_id,
        p.product_id,
        -- pair --------------------------------------------------------------------------------------------------
        p.views::float8 as pair_views,
        p.carts::float8 as pair_carts,
        p.removes::float8 as pair_removes,
        p.purchases::float8 as pair_purchases,
        p.sessions::float8 as pair_sessions,
        date_part('epoch', t.as_of - p.first_view_at) / 3600 as pair_hours_since_first_view,
        date_part('epoch', t.as_of - p.last_view_at) / 3600 as pair_hours_since_last_view,
        date_part('epoch', t.as_of - p.last_cart_at) / 3600 as pair_hours_since_last_cart,
        p.views_24h::float8 as pair_views_24h,
        p.views_7d::float8 as pair_views_7d,
        ((p.last_view_price - p.first_view_price) / nullif(p.first_view_price, 0))::float8 as pair_price_change,
        (p.last_cart_at is not null
         and (p.last_purchase_at is null or p.last_purchase_at < p.last_cart_at))::int::float8
            as pair_cart_without_purchase,
        -- user --------------------------------------------------------------------------------------------------
        u.events::float8 as user_events,
        coalesce(s.sessions, 0)::float8 as user_sessions,
        u.products::float8 as user_products,
        u.categories::float8 as user_categories,
        u.brands::float8 as user_brands,
        s.mean_session_minutes::float8 as user_mean_session_minutes,
        s.events_per_session::float8 as user_events_per_session,
        u.carts::float8 as user_carts,
        u.purchases::float8 as user_purchases,
        u.carted_purchased_products::float8 / nullif(u.carted_products, 0) as user_cart_to_purchase,
        d.days_active::float8 as user_days_active,
        u.weekend_events::float8 / u.events as user_weekend_share,
        u.evening_events::float8 / u.events as user_evening_share,
        date_part('epoch', t.as_of - u.last_at) / 3600 as user_hours_since_last_event,
        -- product, brand, category ------------------------------------------------------------------------------
        i.product_viewers,
        i.product_views,
        i.product_carts,
        i.product_purchases,
        i.product_view_to_purchase,
        i.product_price,
        i.product_price_vs_category_median,
        i.brand_popularity,
        i.brand_purchase_rate,
        i.category_frequency,
        i.category_purchase_rate,
        -- context of the pair's last interaction (UTC) ----------------------------------------------------------
        date_part('hour', p.last_at at time zone 'UTC') as last_hour,
        date_part('isodow', p.last_at at time zone 'UTC') - 1 as last_day_of_week,  -- Monday = 0
        (date_part('isodow', p.last_at at time zone 'UTC') >= 6)::int::float8 as last_is_weekend,
        -- label (training only) ---------------------------------------------------------------------------------
        case when cast(:with_labels as boolean) then (l.user_id is not null)::int end as label
    from feat_pair_events as p
    join feat_users as u on u.user_id = p.user_id
    join feat_user_days as d on d.user_id = p.user_id
    left join feat_user_sessions as s on s.user_id = p.user_id
    join feat_items as i on i.product_id = p.product_id
    left join labels as l on l.user_id = p.user_id and l.product_id = p.product_id
    cross join (select cast(:as_of as timestamptz) as as_of) as t
)

select
    f.*,
    -- negatives kept with probability :negative_rate (a stable hash of the pair and the salt) weigh 1 / rate
    case when f.label = 0 and cast(:negative_rate as float8) < 1 then 1 / cast(:negative_rate as float8) else 1.0 end
        as weight
from feat_pairs as f
where f.label is distinct from 0
   or cast(:negative_rate as float8) >= 1
   or ml.user_hash32(f.user_id # ml.user_hash32(f.product_id # cast(:sample_salt as bigint)))
      < cast(:negative_rate as float8) * 4294967296
