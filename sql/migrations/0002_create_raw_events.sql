-- raw.ingested_files: one row per loaded file; the sha256 makes re-delivery a no-op (exactly-once).
create table if not exists raw.ingested_files (
    file_id         bigserial primary key,
    file_name       text        not null,
    file_uri        text        not null,
    checksum_sha256 text        not null unique,
    file_format     text        not null check (file_format in ('csv', 'parquet')),
    row_count       bigint      not null check (row_count >= 0),
    min_event_time  timestamptz,
    max_event_time  timestamptz,
    validation_id   bigint,
    ingested_at     timestamptz not null default now()
);

-- raw.events: REES46 events, range-partitioned by UTC day of event_time; partitions are made on demand
-- by raw.ensure_event_partition(day). (file_id, line_no) traces every row back to its file and line.
create table if not exists raw.events (
    event_time    timestamptz      not null,
    event_type    text             not null check (event_type in ('view', 'cart', 'remove_from_cart', 'purchase')),
    product_id    bigint           not null check (product_id > 0),
    category_id   bigint           not null check (category_id > 0),
    category_code text,
    brand         text,
    price         double precision not null check (price >= 0),
    user_id       bigint           not null check (user_id > 0),
    user_session  uuid,
    file_id       bigint           not null,
    line_no       integer          not null
) partition by range (event_time);

create index if not exists events_user_time_idx on raw.events (user_id, event_time);
create index if not exists events_product_time_idx on raw.events (product_id, event_time);

create or replace function raw.ensure_event_partition(day date) returns text
language plpgsql as $$
declare
    part text := format('events_p%s', to_char(day, 'YYYYMMDD'));
begin
    if to_regclass(format('raw.%I', part)) is null then
        execute format(
            'create table if not exists raw.%I partition of raw.events for values from (%L) to (%L)',
            part, (day::timestamp at time zone 'UTC'), ((day + 1)::timestamp at time zone 'UTC'));
    end if;
    return part;
end;
$$;
