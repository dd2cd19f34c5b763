-- The number of pairs active at :as_of (active_pairs.sql) in bucket :bucket of :n_buckets (both null: all users).
select count(*) as active_pairs
from (
    {{ active_pairs }}
) as a
