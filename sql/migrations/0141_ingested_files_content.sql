-- issue 15: exactly-once by content. content_sha256 is the fingerprint of a file's events (ml.events_io.
-- content_fingerprint: independent of line endings, row order, CSV vs Parquet, gzip); unique, so the same logical
-- file can be loaded once whatever its bytes. Files loaded before this migration have none (null: not compared).
-- replaced_file_id records which loaded file an explicit replacement (--replace) swapped out.
alter table raw.ingested_files add column if not exists content_sha256 text;
alter table raw.ingested_files add column if not exists replaced_file_id bigint;
create unique index if not exists ingested_files_content_idx on raw.ingested_files (content_sha256);
create index if not exists ingested_files_name_idx on raw.ingested_files (file_name, ingested_at desc);
