-- feat_item_stats: one row per product with events in [:since, :as_of), computed from EVERY user's events (never
-- only one bucket's, so a product's features do not depend on how users are bucketed): popularity, conversion,
-- price against the category median, and numeric encodings of the product's category and brand.
-- Rates are smoothed toward the global view->purchase rate with a prior worth 20 views. A missing brand is its own
-- level ('' = unbranded). A product's price is the one of its latest event before :as_of (cent precision); its
-- category and brand are fixed per product in REES46 (should they differ, the greatest is taken, deterministically).
with
item_products as (
    {{ item_products }}
),

item_totals as (
    select
        sum(events)::float8 as events,
        sum(purchases)::float8 / greatest(sum(views), 1) as purchase_rate
    from item_products
),

item_categories as (
    select
        category_id,
        sum(events) as events,
        sum(views) as views,
        sum(purchases) as purchases,
        percentile_cont(0.5) within group (order by price) as median_price
    from item_products
    group by category_id
),

item_brands as (
    select brand, sum(events) as events, sum(views) as views, sum(purchases) as purchases
    from item_products
    group by brand
)

select
    p.product_id,
    -- product
    p.viewers::float8 as product_viewers,
    p.views::float8 as product_views,
    p.carts::float8 as product_carts,
    p.purchases::float8 as product_purchases,
    (p.purchases + 20 * t.purchase_rate) / (p.views + 20) as product_view_to_purchase,
    p.price::float8 as product_price,
    p.price / nullif(c.median_price, 0) as product_price_vs_category_median,
    -- brand and category encodings (frequency and smoothed purchase rate)
    b.events / t.events as brand_popularity,
    (b.purchases + 20 * t.purchase_rate) / (b.views + 20) as brand_purchase_rate,
    c.events / t.events as category_frequency,
    (c.purchases + 20 * t.purchase_rate) / (c.views + 20) as category_purchase_rate
from item_products as p
cross join item_totals as t
join item_categories as c on c.category_id = p.category_id
join item_brands as b on b.brand = p.brand
