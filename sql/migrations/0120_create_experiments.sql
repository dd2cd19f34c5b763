-- A/B experiments between model versions (issue 14; see docs/experiments.md). Tables live in schema experiments
-- beside Optuna's study tables (studies, trials, ...), whose names never clash with these.

-- experiments.experiments: one row per experiment. Arms are model versions (experiments.arms); the control arm is
-- the champion at start. Lifecycle: draft -> running -> stopped (never back). At most one running experiment: all
-- experiments draw from the same traffic (every user), so two running ones would overlap.
create table if not exists experiments.experiments (
    experiment_id    text             primary key check (experiment_id ~ '^[a-z0-9][a-z0-9_-]{0,47}$'),
    description      text             not null default '',
    control_arm      text             not null,
    traffic_percent  double precision not null default 100 check (traffic_percent > 0 and traffic_percent <= 100),
    start_date       date             not null,                  -- first score date scored per arm (UTC)
    end_date         date             not null,                  -- last score date scored per arm (UTC)
    primary_metric   text             not null default 'conversion'
                     check (primary_metric in ('conversion', 'purchases_per_exposed')),
    mde              double precision not null check (mde > 0 and mde < 1),  -- absolute conversion-rate difference
    alpha            double precision not null default 0.05 check (alpha > 0 and alpha < 0.5),
    power            double precision not null default 0.8 check (power > 0.5 and power < 1),
    horizon_days     integer          not null default 7 check (horizon_days between 1 and 90),
    status           text             not null default 'draft' check (status in ('draft', 'running', 'stopped')),
    created_by       text,
    created_at       timestamptz      not null default now(),
    started_by       text,
    started_at       timestamptz,
    stopped_by       text,
    stopped_at       timestamptz,
    stop_reason      text,
    check (end_date >= start_date)
);
create unique index if not exists experiments_one_running on experiments.experiments ((true)) where status = 'running';

-- experiments.arms: one row per (experiment, arm): the model version that scores the arm's users and the arm's
-- slice [bucket_from, bucket_to) of the 10,000 assignment buckets (see experiments.assignment_bucket).
create table if not exists experiments.arms (
    experiment_id  text    not null references experiments.experiments (experiment_id) on delete cascade,
    arm            text    not null check (arm ~ '^[a-z0-9][a-z0-9_-]{0,31}$'),
    position       integer not null,                          -- declaration order (0 = first slice of buckets)
    model_version  text    not null references ml.model_versions (version),
    share          double precision not null check (share > 0 and share < 1),  -- of enrolled users
    bucket_from    integer not null check (bucket_from between 0 and 10000),
    bucket_to      integer not null check (bucket_to between 0 and 10000),
    is_control     boolean not null default false,
    primary key (experiment_id, arm),
    check (bucket_to > bucket_from)
);

-- experiments.lifecycle: who did what when (create, start, stop).
create table if not exists experiments.lifecycle (
    event_id       bigint generated always as identity primary key,
    experiment_id  text        not null references experiments.experiments (experiment_id) on delete cascade,
    action         text        not null check (action in ('create', 'start', 'stop')),
    actor          text,
    details        jsonb       not null default '{}'::jsonb,
    at             timestamptz not null default now()
);
create index if not exists lifecycle_experiment_idx on experiments.lifecycle (experiment_id, at);

-- experiments.exposures: what the lookup API served, per (experiment, arm, UTC day), moved once a day from Redis
-- counters (requests: INCR; users: HyperLogLog, about 0.81% standard error). users_to_date counts distinct users
-- over every day of the experiment up to exposure_date (a PFCOUNT over the day keys), for the results.
create table if not exists experiments.exposures (
    experiment_id  text        not null references experiments.experiments (experiment_id) on delete cascade,
    arm            text        not null,
    exposure_date  date        not null,
    requests       bigint      not null,
    users          bigint      not null,
    users_to_date  bigint      not null,
    moved_at       timestamptz not null default now(),
    primary key (experiment_id, arm, exposure_date)
);

-- The assignment hash, identical to ml.experiments.assignment_bucket:
--   bucket = first 4 bytes of md5(utf8("<experiment_id>:<user_id>")) read as a big-endian unsigned integer, mod 10000
-- (user_id in decimal, no padding). A user belongs to the arm whose [bucket_from, bucket_to) holds the bucket; a
-- bucket outside every arm (traffic_percent < 100) is not enrolled. Keyed by the experiment id, so experiments are
-- independent. md5 is available on every PostgreSQL (no extension); it is not a security feature here.
create or replace function experiments.assignment_bucket(experiment_id text, user_id bigint) returns integer
language sql immutable strict parallel safe as $$
    select (('x' || lpad(substr(md5(experiment_id || ':' || user_id::text), 1, 8), 16, '0'))::bit(64)::bigint
            % 10000)::integer
$$;

-- The arm of a user in an experiment (null: not enrolled, or no such experiment).
create or replace function experiments.assign_arm(p_experiment_id text, p_user_id bigint) returns text
language sql stable strict parallel safe as $$
    select a.arm
    from experiments.arms as a
    where a.experiment_id = p_experiment_id
      and experiments.assignment_bucket(p_experiment_id, p_user_id) >= a.bucket_from
      and experiments.assignment_bucket(p_experiment_id, p_user_id) < a.bucket_to
$$;

-- scoring.scores: the experiment and arm that scored a row (null outside any experiment); the stage tables of new
-- runs copy these columns (create table ... like scoring.scores).
alter table scoring.scores add column if not exists experiment_id text;
alter table scoring.scores add column if not exists arm text;
