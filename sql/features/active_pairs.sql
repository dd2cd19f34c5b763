-- stg_active_pairs: the (user_id, product_id) pairs active at :as_of, i.e. with a view or a cart event in
-- [:active_since, :as_of), restricted to the users of hash bucket :bucket of :n_buckets (both null: every user).
-- The single definition of "active": pair_features.sql and labels.sql include this file, counts wrap it.
-- Half-open on purpose: an event at exactly :as_of belongs to the future (the label window), never to the past.
select e.user_id, e.product_id
from raw.events as e
where e.event_time >= :active_since
  and e.event_time < :as_of
  and e.event_type in ('view', 'cart')
  and (cast(:n_buckets as integer) is null  -- bucket k of K as a hash range (ml.bucket_hash_lo)
       or (ml.user_hash32(e.user_id) >= ml.bucket_hash_lo(cast(:bucket as integer), cast(:n_buckets as integer))
           and ml.user_hash32(e.user_id)
               < ml.bucket_hash_lo(cast(:bucket as integer) + 1, cast(:n_buckets as integer))))
group by e.user_id, e.product_id
