-- feat_item_stats read back from ml.feature_item_stats, where ml.features.prepare_item_stats stored the output of
-- item_stats.sql for :item_stats_key (same columns, same values).
select
    c.product_id,
    c.product_viewers,
    c.product_views,
    c.product_carts,
    c.product_purchases,
    c.product_view_to_purchase,
    c.product_price,
    c.product_price_vs_category_median,
    c.brand_popularity,
    c.brand_purchase_rate,
    c.category_frequency,
    c.category_purchase_rate
from ml.feature_item_stats as c
where c.cache_key = :item_stats_key
