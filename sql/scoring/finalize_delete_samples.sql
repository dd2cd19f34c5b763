-- With the swap: the drift reference samples of the score date's other runs (the swapped-in run's sample stays).
delete from scoring.feature_samples
where score_date = :score_date
  and run_id <> :run_id
