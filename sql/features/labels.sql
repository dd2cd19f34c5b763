-- labels: one row per pair active at :as_of (active_pairs.sql): label 1 when the user purchased the product in
-- [:as_of, :label_until) (label_purchases.sql), else 0. Reads no event before :active_since.
with
active_pairs as (
    {{ active_pairs }}
),

label_purchases as (
    {{ label_purchases }}
)

select a.user_id, a.product_id, (l.user_id is not null)::integer as label
from active_pairs as a
left join label_purchases as l on l.user_id = a.user_id and l.product_id = a.product_id
