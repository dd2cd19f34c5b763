-- stg_label_purchases: the (user_id, product_id) pairs purchased in [:as_of, :label_until) by the users of hash
-- bucket :bucket of :n_buckets (both null: every user). The single definition of a positive label.
select e.user_id, e.product_id
from raw.events as e
where e.event_type = 'purchase'
  and e.event_time >= :as_of
  and e.event_time < :label_until
  and (cast(:n_buckets as integer) is null  -- bucket k of K as a hash range (ml.bucket_hash_lo)
       or (ml.user_hash32(e.user_id) >= ml.bucket_hash_lo(cast(:bucket as integer), cast(:n_buckets as integer))
           and ml.user_hash32(e.user_id)
               < ml.bucket_hash_lo(cast(:bucket as integer) + 1, cast(:n_buckets as integer))))
group by e.user_id, e.product_id
