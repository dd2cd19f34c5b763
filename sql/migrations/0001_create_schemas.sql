-- Schemas, one per concern. Numbered migrations never change once shipped: add a new file instead.
create schema if not exists raw;          -- landed events, exactly as validated
create schema if not exists quality;      -- validation history (Great Expectations results)
create schema if not exists ml;           -- model registry, training snapshots, gate decisions
create schema if not exists scoring;      -- nightly scores (partitioned by score_date) and run records
create schema if not exists monitoring;   -- drift and operational metrics
create schema if not exists experiments;  -- Optuna studies (RDB storage)
create schema if not exists bi;           -- views for analysts and BI tools
