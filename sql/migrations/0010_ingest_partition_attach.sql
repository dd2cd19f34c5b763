-- Ingest (issue 4): day partitions that never block readers or concurrent loads, and validation lineage.
--
-- raw.ensure_event_partition(day) keeps its contract (idempotent, returns the partition name) but now creates the
-- partition as a plain table and ATTACHes it. CREATE TABLE ... PARTITION OF takes an ACCESS EXCLUSIVE lock on
-- raw.events (blocking every reader and loader until the creating transaction ends); ATTACH PARTITION takes only
-- SHARE UPDATE EXCLUSIVE on the parent, which conflicts with neither reads nor COPY. The new table is empty, so the
-- partition-constraint check is instant; the parent's indexes are created on it by the attach.
-- An advisory lock per partition makes concurrent callers safe (the second one finds the table and returns).
create or replace function raw.ensure_event_partition(day date) returns text
language plpgsql as $$
declare
    part text := format('events_p%s', to_char(day, 'YYYYMMDD'));
begin
    if to_regclass(format('raw.%I', part)) is not null then
        return part;
    end if;
    perform pg_advisory_xact_lock(hashtext('raw.ensure_event_partition'), hashtext(part));
    if to_regclass(format('raw.%I', part)) is null then
        execute format('create table raw.%I (like raw.events including defaults including constraints)', part);
        execute format(
            'alter table raw.events attach partition raw.%I for values from (%L) to (%L)',
            part, (day::timestamp at time zone 'UTC'), ((day + 1)::timestamp at time zone 'UTC'));
    end if;
    return part;
end;
$$;

-- every loaded file points at the validation that passed it
do $$
begin
    alter table raw.ingested_files
        add constraint ingested_files_validation_fk
        foreign key (validation_id) references quality.validation_runs (validation_id);
exception when duplicate_object then null;
end $$;

create index if not exists validation_runs_checksum_idx on quality.validation_runs (checksum_sha256);
