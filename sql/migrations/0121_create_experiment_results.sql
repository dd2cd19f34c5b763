-- experiments.results: the per-arm results of an experiment each time they are computed (propensity experiment
-- results, the experiments DAG). One row per (experiment, arm, computation). Definitions: docs/experiments.md.
create table if not exists experiments.results (
    experiment_id        text             not null references experiments.experiments (experiment_id) on delete cascade,
    computed_at          timestamptz      not null default now(),
    arm                  text             not null,
    is_control           boolean          not null,
    model_version        text             not null,
    expected_share       double precision not null,  -- configured share of enrolled users
    assigned_users       bigint           not null,  -- distinct users scored in the arm during the experiment
    exposed_users        bigint,                     -- distinct users the API served the arm (HyperLogLog)
    converters           bigint           not null,  -- assigned users who bought a published product in the horizon
    purchases            bigint           not null,  -- such purchase events
    conversion           double precision,           -- converters / assigned_users
    purchases_per_exposed double precision,          -- purchases / exposed_users
    abs_lift             double precision,           -- conversion - control conversion (null for the control)
    abs_lift_ci_low      double precision,           -- 95% (1 - alpha) Wald interval of abs_lift
    abs_lift_ci_high     double precision,
    rel_lift             double precision,           -- conversion / control conversion - 1
    rel_lift_ci_low      double precision,           -- delta-method interval on log(conversion ratio)
    rel_lift_ci_high     double precision,
    p_value              double precision,           -- pooled two-proportion z-test, two-sided
    significant          boolean,                    -- p_value < alpha
    srm_chi2             double precision not null,  -- sample-ratio mismatch: chi-square of assigned vs split
    srm_p_value          double precision not null,
    srm_flag             boolean          not null,  -- srm_p_value < settings.experiment_srm_p_threshold
    required_per_arm     bigint,                     -- users per arm to detect mde at alpha and power
    horizon_matured      boolean          not null,  -- end_date + horizon_days has passed (fixed-horizon rule)
    decision             text             not null,  -- the fixed-horizon decision rule's verdict for the arm
    primary key (experiment_id, computed_at, arm)
);

-- bi.experiment_results: the latest computed results per experiment and arm, with the experiment's settings.
create or replace view bi.experiment_results as
with latest as (
    select experiment_id, max(computed_at) as computed_at
    from experiments.results
    group by experiment_id
)
select
    e.experiment_id,
    e.description,
    e.status,
    e.start_date,
    e.end_date,
    e.primary_metric,
    e.mde,
    e.alpha,
    e.horizon_days,
    r.computed_at,
    r.arm,
    r.is_control,
    r.model_version,
    r.expected_share,
    r.assigned_users,
    r.exposed_users,
    r.converters,
    r.purchases,
    r.conversion,
    r.purchases_per_exposed,
    r.abs_lift,
    r.abs_lift_ci_low,
    r.abs_lift_ci_high,
    r.rel_lift,
    r.rel_lift_ci_low,
    r.rel_lift_ci_high,
    r.p_value,
    r.significant,
    r.srm_chi2,
    r.srm_p_value,
    r.srm_flag,
    r.required_per_arm,
    r.horizon_matured,
    r.decision
from experiments.results as r
join latest as l on l.experiment_id = r.experiment_id and l.computed_at = r.computed_at
join experiments.experiments as e on e.experiment_id = r.experiment_id;
