-- The typed events of one loaded file (the columns ml.events_io.content_fingerprint hashes), read back from
-- raw.events; [:lo, :hi] is the file's event-time range (partition pruning). user_session as text: lower-case, as
-- ingest normalises it.
select
    event_time,
    event_type,
    product_id,
    category_id,
    category_code,
    brand,
    price,
    user_id,
    cast(user_session as text) as user_session
from raw.events
where file_id = :file_id
  and event_time >= :lo
  and event_time <= :hi
