-- Record a planned run (status running): its date, model, planned pairs and bucket count, the plan's timing, its
-- stage table, the model's feature names and the settings it runs with (jsonb).
insert into scoring.runs (
    run_id, score_date, model_version, status, planned_pairs, buckets, timings, stage_table, feature_names, params,
    orchestrator_run_id
)
values (
    :run_id, :score_date, :model_version, 'running', :planned_pairs, :buckets, cast(:timings as jsonb), :stage_table,
    :feature_names, cast(:params as jsonb), :orchestrator_run_id
)
