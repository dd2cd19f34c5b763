-- mon_segments (temporary): every scored pair of :score_date with the trainer's label
-- (sql/features/label_purchases.sql: purchases in [:as_of, :label_until)) and its rank within the user, once per
-- segment it belongs to: 'all', and 'published' when the latest published version of the date held it (top :top_n
-- per user at or above :min_probability; no publication: none). The published pairs are a prefix of each user's
-- ranking, so the rank is the same in both segments.
create temporary table mon_segments on commit drop as
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
        row_number() over (partition by model_version collate "C", user_id
                           order by probability desc, product_id) as rnk
    from scored
)

-- "C" collation: the metric queries sort and group on these text keys, and a locale-aware comparison per row
-- costs more than the rest of the sort
select r.model_version collate "C" as model_version, seg.segment collate "C" as segment, r.user_id, r.product_id, r.probability, r.tier, r.label, r.rnk
from ranked as r
cross join lateral (values ('all'), ('published')) as seg (segment)
where seg.segment = 'all'
   or (cast(:top_n as integer) is not null and r.rnk <= :top_n and r.probability >= :min_probability)
