-- item_products (item_stats.sql) from raw.events: one row per product with events in [:since, :as_of).
select
    e.product_id,
    count(distinct e.user_id) filter (where e.event_type = 'view') as viewers,  -- per-product sorts: cheap
    count(*) filter (where e.event_type = 'view') as views,
    count(*) filter (where e.event_type = 'cart') as carts,
    count(*) filter (where e.event_type = 'purchase') as purchases,
    count(*) as events,
    -- latest (time, price) packed in one bigint (see pair_features.sql): a by-value max, no array per row
    (max(floor(date_part('epoch', e.event_time - cast(:since as timestamptz)))::bigint * 68719476736
         + least(round(e.price * 100), 68719476735)::bigint) % 68719476736)::float8 / 100 as price,
    max(e.category_id) as category_id,
    max(coalesce(e.brand, '') collate "C") as brand
from raw.events as e
where e.event_time >= :since
  and e.event_time < :as_of
group by e.product_id
