-- mon_pairs (temporary): every scored pair of :score_date with the trainer's label (sql/features/label_purchases.sql,
-- purchases in [:as_of, :label_until)), its rank within the user and whether it was published to Redis
-- (the latest published version of the date: top :top_n per user at or above :min_probability; none: false).
create temporary table mon_pairs on commit drop as
with

label_purchases as (
    {{ label_purchases }}
),

scored as (
    select
        s.model_version,
        s.user_id,
        s.product_id,
        s.probability,
        s.tier,
        (l.user_id is not null)::integer as label
    from scoring.scores as s
    left join label_purchases as l on l.user_id = s.user_id and l.product_id = s.product_id
    where s.score_date = :score_date
),

ranked as (
    select
        *,
        row_number() over (partition by model_version, user_id order by probability desc, product_id) as rnk
    from scored
)

select
    *,
    (cast(:top_n as integer) is not null and rnk <= :top_n and probability >= :min_probability) as published
from ranked
