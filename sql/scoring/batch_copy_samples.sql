-- Stream a batch's deterministic feature sample (the drift reference) in binary COPY format (ml.score.encode).
copy scoring.feature_samples (score_date, run_id, bucket, user_id, product_id, features) from stdin (format binary)
