-- item_products.sql from the rollups (migration 0180), for a UTC-midnight :as_of: counts, latest price, category
-- and brand from raw.rollup_product_day; distinct viewers from raw.rollup_pair_day (a user viewing on two days is
-- one viewer). Same columns and values as item_products.sql.
select
    d.product_id,
    coalesce(v.viewers, 0) as viewers,
    d.views,
    d.carts,
    d.purchases,
    d.events,
    d.price,
    d.category_id,
    d.brand
from (
    select
        p.product_id,
        sum(p.views) as views,
        sum(p.carts) as carts,
        sum(p.purchases) as purchases,
        sum(p.events) as events,
        -- the packed key of the latest event, shifted by its day's offset from :since_day (see migration 0180)
        (max((p.day - cast(:since_day as date))::bigint * 86400 * 68719476736 + p.last_key) % 68719476736)::float8
            / 100 as price,
        max(p.category_id) as category_id,
        max(p.brand) as brand
    from raw.rollup_product_day as p
    where p.day >= cast(:since_day as date)
      and p.day < cast(:as_of_day as date)
    group by p.product_id
) as d
left join (
    select r.product_id, count(distinct r.user_id) as viewers
    from raw.rollup_pair_day as r
    where r.day >= cast(:since_day as date)
      and r.day < cast(:as_of_day as date)
      and r.views > 0
    group by r.product_id
) as v on v.product_id = d.product_id
