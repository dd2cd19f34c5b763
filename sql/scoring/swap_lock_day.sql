-- One swap of a given score date at a time: a transaction advisory lock keyed on (namespace, day number).
select pg_advisory_xact_lock(:namespace, :day)
