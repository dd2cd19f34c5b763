-- scoring.publications: one row per attempt to publish a score_date's hot scores to Redis as a new version.
-- The row is written before any Redis key ('publishing'), then marked 'published' after the pointer flip or
-- 'failed' (with the error) when the attempt broke off; a failed attempt never changes what Redis serves.
create table if not exists scoring.publications (
    redis_prefix     text             not null,  -- Redis key namespace (settings.redis_prefix)
    version          bigint           not null,  -- Redis version id (INCR of PREFIX:seq), unique per prefix
    score_date       date             not null,
    model_version    text,
    run_id           text,                       -- scoring.runs.run_id of the partition that was published
    status           text             not null check (status in ('publishing', 'published', 'failed')),
    top_n            integer          not null,
    min_probability  double precision not null,
    scored_pairs     bigint,                     -- rows of the score_date partition
    users            bigint,                     -- users with at least one hot pair
    pairs            bigint,                     -- hot pairs written (<= top_n per user)
    reasons          integer,                    -- distinct (reason code, text) entries of the version
    previous_version bigint,                     -- version served before this one was flipped in
    seconds          double precision,           -- wall time of the attempt
    error            text,
    started_at       timestamptz      not null default now(),
    published_at     timestamptz,
    primary key (redis_prefix, version)
);
create index if not exists publications_date_idx on scoring.publications (score_date, started_at desc);

-- scoring.pointer_flips: one row per change of PREFIX:current, by a publish or a rollback. The newest row of a
-- prefix names the version Redis serves (as far as this pipeline changed it).
create table if not exists scoring.pointer_flips (
    flip_id       bigint generated always as identity primary key,
    redis_prefix  text        not null,
    from_version  bigint,                         -- null on the very first publish
    to_version    bigint      not null,
    reason        text        not null check (reason in ('publish', 'rollback')),
    flipped_at    timestamptz not null default now()
);
create index if not exists pointer_flips_prefix_idx on scoring.pointer_flips (redis_prefix, flipped_at desc);
