-- stg_active_pairs: the (user_id, product_id) pairs active at :as_of, i.e. with a view or a cart event in
-- [:active_since, :as_of), restricted to the users of hash bucket :bucket of :n_buckets (both null: every user).
-- The single definition of "active": pair_features.sql and labels.sql include this file, counts wrap it.
-- Half-open on purpose: an event at exactly :as_of belongs to the future (the label window), never to the past.
select e.user_id, e.product_id
from raw.events as e
where e.event_time >= :active_since
  and e.event_time < :as_of
  and e.event_type in ('view', 'cart')
  and (cast(:n_buckets as integer) is null
       or ml.user_bucket(e.user_id, cast(:n_buckets as integer)) = cast(:bucket as integer))
group by e.user_id, e.product_id
