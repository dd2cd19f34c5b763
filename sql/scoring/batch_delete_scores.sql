-- The rows an earlier attempt of bucket (of bucket_count) committed to the stage: a retry replaces them, never
-- duplicates them. The stage identifier is filled in by ml.score.tables.sql_text.
delete from {stage}
where ml.user_bucket(user_id, :bucket_count) = :bucket
