-- Materialise item_stats.sql for :item_stats_key (ml.features.prepare_item_stats; one transaction, under a lock).
insert into ml.feature_item_stats (
    cache_key, product_id, product_viewers, product_views, product_carts, product_purchases,
    product_view_to_purchase, product_price, product_price_vs_category_median, brand_popularity,
    brand_purchase_rate, category_frequency, category_purchase_rate
)
select
    cast(:item_stats_key as text),
    s.product_id,
    s.product_viewers,
    s.product_views,
    s.product_carts,
    s.product_purchases,
    s.product_view_to_purchase,
    s.product_price,
    s.product_price_vs_category_median,
    s.brand_popularity,
    s.brand_purchase_rate,
    s.category_frequency,
    s.category_purchase_rate
from (
    {{ item_stats }}
) as s
