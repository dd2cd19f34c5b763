-- quality.validation_runs: every validation of every file (pass or fail), with GX's per-expectation results.
create table if not exists quality.validation_runs (
    validation_id   bigserial primary key,
    suite_name      text        not null,
    file_name       text        not null,
    file_uri        text        not null,
    checksum_sha256 text,
    success         boolean     not null,
    row_count       bigint,
    statistics      jsonb       not null default '{}'::jsonb,
    results         jsonb       not null default '[]'::jsonb,  -- one object per expectation
    failed_rules    text[]      not null default '{}',
    quarantine_uri  text,
    report_uri      text,
    data_docs_uri   text,
    dag_run_id      text,
    validated_at    timestamptz not null default now()
);
create index if not exists validation_runs_file_idx on quality.validation_runs (file_name, validated_at desc);
