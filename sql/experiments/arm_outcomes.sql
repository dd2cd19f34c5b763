-- Per-arm outcomes of one experiment (ml.experiments.experiment_results): assigned users, converters and purchases.
-- A user is assigned to an arm when the experiment scored the user (scoring.scores.arm) on a score date in
-- [start_date, end_date] whose horizon has matured (score_date <= mature_until = today - horizon_days). A pair is
-- published when it was among the user's top_n pairs at or above min_probability of the latest successful
-- publication of that score date (scoring.publications); a score date never published (a replay or a backfill)
-- uses what the publisher would have published (default_top_n, default_min_probability). A user converts when
-- buying a product published to them within [score_date, score_date + horizon_days) (UTC).
-- Parameters: experiment_id, start_date, end_date, mature_until, horizon_days, default_top_n, default_min_probability.
with

stg_scored as (
    select
        s.score_date,
        s.user_id,
        s.product_id,
        s.arm,
        row_number() over (partition by s.score_date, s.user_id order by s.probability desc, s.product_id) as rnk,
        s.probability
    from scoring.scores as s
    where s.experiment_id = :experiment_id
      and s.score_date between :start_date and :end_date
      and s.score_date <= :mature_until
      and s.arm is not null
),

-- the latest published publication of each score date (its top_n and floor define "published")
stg_publications as (
    select distinct on (score_date)
        score_date,
        top_n,
        min_probability
    from scoring.publications
    where status = 'published'
      and score_date between :start_date and :end_date
    order by score_date, published_at desc
),

published as (
    select
        s.score_date,
        s.user_id,
        s.product_id,
        s.arm
    from stg_scored as s
    left join stg_publications as p on p.score_date = s.score_date
    where s.rnk <= coalesce(p.top_n, :default_top_n)
      and s.probability >= coalesce(p.min_probability, :default_min_probability)
),

assigned as (
    select arm, count(distinct user_id) as assigned_users
    from stg_scored
    group by arm
),

-- purchase events of a published product within the horizon of the score date that published it
conversions as (
    select distinct
        p.arm,
        p.user_id,
        e.product_id,
        e.event_time
    from published as p
    join raw.events as e
      on e.user_id = p.user_id
     and e.product_id = p.product_id
     and e.event_type = 'purchase'
     and e.event_time >= p.score_date::timestamp at time zone 'UTC'
     and e.event_time < (p.score_date + :horizon_days)::timestamp at time zone 'UTC'
)

select
    a.arm,
    a.assigned_users,
    coalesce(count(distinct c.user_id), 0)                   as converters,
    coalesce(count(c.user_id), 0)                            as purchases
from assigned as a
left join conversions as c on c.arm = a.arm
group by a.arm, a.assigned_users
order by a.arm
