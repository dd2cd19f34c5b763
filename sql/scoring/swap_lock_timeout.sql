-- The swap waits at most lock_timeout (e.g. 30s) for its locks, for the rest of its transaction only.
select set_config('lock_timeout', :lock_timeout, true)
