-- Loaded files without a content fingerprint (loaded before migration 0141), oldest first: optionally only those
-- whose event-time range overlaps [:lo, :hi] (a new file's), at most :limit of them. Empty files have nothing to
-- compare.
select
    file_id,
    file_name,
    row_count,
    min_event_time,
    max_event_time
from raw.ingested_files
where content_sha256 is null
  and row_count > 0
  and (cast(:lo as timestamptz) is null or max_event_time >= :lo)
  and (cast(:hi as timestamptz) is null or min_event_time <= :hi)
order by file_id
limit :limit
