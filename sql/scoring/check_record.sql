-- Record the output checks of a run's stage in quality.validation_runs (suite score_output; the file columns name
-- the stage table): success, planned rows, statistics and per-rule results (jsonb), the failed rules.
insert into quality.validation_runs (
    suite_name, file_name, file_uri, success, row_count, statistics, results, failed_rules, dag_run_id
)
values (
    :suite_name, :file_name, :file_uri, :success, :row_count, cast(:statistics as jsonb), cast(:results as jsonb),
    :failed_rules, :dag_run_id
)
