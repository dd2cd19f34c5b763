-- Stable hash buckets of user_id, shared by SQL and Python (ml.features.bucket_of reproduces them bit for bit).
--
-- ml.user_hash32(u): fold the 64-bit id to 32 bits, then a Fibonacci-style multiplicative hash modulo 2^32.
-- Every intermediate value stays below 2^63 (32-bit value times a multiplier below 2^31), so bigint arithmetic
-- never overflows. ml.user_bucket(u, K) takes the HIGH bits of the hash ((h * K) >> 32), which spreads sequential
-- ids evenly over any K in 1 .. 2^31 - 1, and maps bucket k to the contiguous hash range
-- [k * 2^32 / K, (k + 1) * 2^32 / K), so an index on ml.user_hash32(user_id) could serve a bucket as a range scan.
-- Both are single-expression SQL functions: the planner inlines them (no function-call cost per row).
create or replace function ml.user_hash32(user_id bigint) returns bigint
language sql immutable parallel safe as $$
    select ((((user_id # (user_id >> 32)) & 4294967295) * 1540483477) & 4294967295)
$$;

create or replace function ml.user_bucket(user_id bigint, n_buckets integer) returns integer
language sql immutable parallel safe as $$
    select ((ml.user_hash32(user_id) * n_buckets) >> 32)::integer
$$;

-- ml.feature_snapshots: one row per persisted training snapshot (features + labels at one as_of), with the
-- content fingerprint the model registry records and the id of its Great Expectations run.
create table if not exists ml.feature_snapshots (
    snapshot_id     bigserial   primary key,
    as_of           timestamptz not null,
    feature_version text        not null,  -- hash of the feature SQL: a change of definition is a new version
    params          jsonb       not null,  -- windows, negative sample rate, seed
    params_key      text        not null,  -- short hash of params (part of the file path)
    row_count       bigint      not null,
    positives       bigint      not null,
    uri             text        not null,  -- Parquet file
    fingerprint     text        not null,  -- sha256 of the rows (order-independent of storage details)
    validation_id   bigint,                -- quality.validation_runs row (suite_name = 'feature_snapshot')
    success         boolean     not null,
    created_at      timestamptz not null default now()
);
create index if not exists feature_snapshots_key_idx
    on ml.feature_snapshots (feature_version, params_key, as_of, created_at desc);
