-- ml.feature_item_stats: product, category and brand statistics (sql/features/item_stats.sql) materialised once per
-- key by ml.features.prepare_item_stats, so that the K bucket tasks of one scoring run read them instead of each
-- re-aggregating every user's events. A cache that can always be rebuilt from raw.events: unlogged.
create unlogged table if not exists ml.feature_item_stats (
    cache_key                        text             not null,
    product_id                       bigint           not null,
    product_viewers                  double precision not null,
    product_views                    double precision not null,
    product_carts                    double precision not null,
    product_purchases                double precision not null,
    product_view_to_purchase         double precision not null,
    product_price                    double precision not null,
    product_price_vs_category_median double precision,
    brand_popularity                 double precision not null,
    brand_purchase_rate              double precision not null,
    category_frequency               double precision not null,
    category_purchase_rate           double precision not null,
    primary key (cache_key, product_id)
);

-- one row per materialised key: what it was computed for, and when (old keys are pruned)
create table if not exists ml.feature_item_stats_keys (
    cache_key       text        primary key,
    as_of           timestamptz not null,
    since           timestamptz not null,
    feature_version text        not null,
    products        bigint      not null,
    seconds         double precision,
    created_at      timestamptz not null default now()
);
