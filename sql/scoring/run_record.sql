-- One scoring run's record (no row: no such run).
select
    run_id,
    score_date,
    model_version,
    status,
    planned_pairs,
    buckets,
    stage_table,
    feature_names,
    timings,
    started_at,
    summary,
    orchestrator_run_id,
    params
from scoring.runs
where run_id = :run_id
