-- active_pairs.sql from raw.rollup_pair_day (migration 0180): the pairs with a view or a cart on a UTC day in
-- [:active_since_day, :as_of_day), for the users of hash bucket :bucket of :n_buckets (both null: every user).
-- The same pairs as active_pairs.sql when :as_of is a UTC midnight (the only case ml.features uses it for).
select r.user_id, r.product_id
from raw.rollup_pair_day as r
where r.day >= cast(:active_since_day as date)
  and r.day < cast(:as_of_day as date)
  and (r.views > 0 or r.carts > 0)
  and (cast(:n_buckets as integer) is null  -- bucket k of K as a hash range (ml.bucket_hash_lo)
       or (ml.user_hash32(r.user_id) >= ml.bucket_hash_lo(cast(:bucket as integer), cast(:n_buckets as integer))
           and ml.user_hash32(r.user_id)
               < ml.bucket_hash_lo(cast(:bucket as integer) + 1, cast(:n_buckets as integer))))
group by r.user_id, r.product_id
