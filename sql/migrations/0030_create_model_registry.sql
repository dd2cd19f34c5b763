-- ml.model_versions: the model registry, one row per trained ensemble version.
-- Status life cycle: candidate -> champion | rejected (the gate); champion -> retired (a newer champion was
-- promoted) | rolled_back (a rollback restored the previous champion). At most one champion at a time.
create table if not exists ml.model_versions (
    version          text        primary key,               -- e.g. 20191110-020512-3fa2c1 (UTC creation time + random)
    status           text        not null default 'candidate'
                     check (status in ('candidate', 'champion', 'rejected', 'retired', 'rolled_back')),
    members          text[]      not null,                  -- member names, canonical order
    params           jsonb       not null,                  -- member -> best hyper-parameters
    weights          jsonb       not null,                  -- member -> blend weight (>= 0, sum 1)
    calibration      jsonb       not null,                  -- {"a": .., "b": ..}: logit(p) = a * blended_margin + b
    threshold        double precision,                      -- decision threshold chosen on validation (max F1)
    features         text[]      not null,                  -- input column order (also the order of contributions)
    training_window  jsonb       not null,                  -- train/validation/holdout snapshot dates and row counts
    holdout_as_of    timestamptz,                           -- the holdout snapshot (latest labelled as_of)
    data_fingerprint text        not null,                  -- TrainingSet.fingerprint
    library_versions jsonb       not null,
    metrics          jsonb       not null,                  -- holdout: {"ensemble": {..}, "members": {..}, "equal_weights": {..}}
    tuning           jsonb       not null default '{}'::jsonb,  -- per member: study name, trials, best value
    artifact_uri     text        not null,                  -- folder with native model files + manifest.json
    report_uri       text,                                  -- self-contained HTML model report
    dag_run_id       text,
    created_at       timestamptz not null default now(),
    promoted_at      timestamptz,
    retired_at       timestamptz
);

-- at most one champion, enforced by the database
create unique index if not exists model_versions_one_champion on ml.model_versions ((true)) where status = 'champion';
create index if not exists model_versions_created_idx on ml.model_versions (created_at desc);

-- ml.gate_decisions: every champion/challenger decision, automatic or manual, with both metric sets.
create table if not exists ml.gate_decisions (
    decision_id        bigserial   primary key,
    version            text        not null references ml.model_versions (version),
    champion_version   text        references ml.model_versions (version),  -- champion at decision time
    action             text        not null check (action in ('promote', 'reject', 'rollback')),
    reason             text        not null,                -- human-readable; 'manual: ...' for manual actions
    manual             boolean     not null default false,
    challenger_metrics jsonb       not null,                -- holdout metrics of `version`
    champion_metrics   jsonb,                               -- the champion's metrics on the same holdout
    tolerances         jsonb       not null default '{}'::jsonb,
    decided_by         text,                                -- dag run id, CLI user, ...
    decided_at         timestamptz not null default now()
);
create index if not exists gate_decisions_version_idx on ml.gate_decisions (version, decided_at desc);
