-- ml.bucket_hash_lo(k, K): the smallest ml.user_hash32 value in bucket k of K, i.e. ceil(k * 2^32 / K).
-- Bucket k of K is exactly the hash range [ml.bucket_hash_lo(k, K), ml.bucket_hash_lo(k + 1, K)), the same users as
-- ml.user_bucket(user_id, K) = k; written as a range, a bucket filter can use an index on ml.user_hash32(user_id)
-- and, with constant arguments, is folded to two constants at plan time. No overflow for K < 2^31.
create or replace function ml.bucket_hash_lo(bucket integer, n_buckets integer) returns bigint
language sql immutable parallel safe as $$
    select (bucket::bigint * 4294967296 + n_buckets - 1) / n_buckets
$$;
