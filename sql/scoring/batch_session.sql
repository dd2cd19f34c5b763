-- A batch's write transaction need not wait for its WAL flush: the partition swap's commit is the durable one.
set local synchronous_commit = off
