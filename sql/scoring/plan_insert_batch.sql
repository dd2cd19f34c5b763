-- One planned bucket of a run (executed once per bucket): status pending until its batch task starts.
insert into scoring.run_batches (run_id, bucket, planned_pairs)
values (:run_id, :bucket, :planned_pairs)
