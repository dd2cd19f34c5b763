-- Ingest at load speed (issue 17 item 3): the rollups of migration 0180 become range-partitioned by UTC day, like
-- raw.events, and a new day is loaded into plain tables that are attached at the end of the load transaction.
--
-- Why (docs/ingest.md, "How a file is loaded"): a COPY into a day partition that already has its B-tree indexes
-- pays one random index insertion per row and index; a COPY into an index-free table followed by one sorted build
-- per index is several times cheaper, and the same holds for the rollup rows of that day (about 0.7 rollup rows per
-- event on REES46-like data). The statement triggers of 0180 stay for every other writer of raw.events; ml.ingest
-- computes the rollups of a file from the Arrow table it already holds and writes them itself, in the file's
-- transaction, through raw.rollup_upsert_sql below (the one definition of how rollup rows combine).
--
-- Invariant kept by raw.ensure_event_partition and by ml.ingest: a day that has a raw.events partition has its three
-- rollup partitions too, so a trigger's upsert always finds its partition.

-- the name of <parent>'s partition for a UTC day: events_p20191001, rollup_pair_day_p20191001, ...
create or replace function raw.day_partition_name(parent text, day date) returns text
language sql immutable as $$
    select format('%s_p%s', parent, to_char(day, 'YYYYMMDD'))
$$;

-- Does raw.<parent>_pYYYYMMDD exist? Read from pg_class with the statement's snapshot, not to_regclass: after
-- waiting on an advisory lock, to_regclass can still answer from this backend's stale relation cache (advisory
-- locks process no cache invalidations) and miss a table another transaction just committed.
create or replace function raw.day_partition_exists(parent text, day date) returns boolean
language sql stable as $$
    select exists (
        select 1 from pg_class as c join pg_namespace as n on n.oid = c.relnamespace
        where n.nspname = 'raw' and c.relname = raw.day_partition_name(parent, day))
$$;

-- The FOR VALUES bounds of <parent>'s partition for a day: raw.events is partitioned by event_time (timestamptz,
-- UTC midnights), the rollups by day (date).
create or replace function raw.day_partition_bounds(parent text, day date) returns text
language sql immutable as $$
    select case when parent = 'events'
        then format('from (%L) to (%L)', day::timestamp at time zone 'UTC', (day + 1)::timestamp at time zone 'UTC')
        else format('from (%L) to (%L)', day, day + 1) end
$$;

-- Create raw.<parent>_pYYYYMMDD as a plain table shaped like raw.<parent> (defaults and CHECK constraints included,
-- no indexes) with a CHECK constraint equal to its partition bound: rows are checked as they are written, and the
-- later ATTACH needs no validation scan. Not yet a partition: readers of raw.<parent> do not see it. Returns the name.
create or replace function raw.create_day_table(parent text, day date) returns text
language plpgsql as $$
declare
    part text := raw.day_partition_name(parent, day);
    col text := case when parent = 'events' then 'event_time' else 'day' end;
    lo text := case when parent = 'events' then quote_literal(day::timestamp at time zone 'UTC')
                    else quote_literal(day) end;
    hi text := case when parent = 'events' then quote_literal((day + 1)::timestamp at time zone 'UTC')
                    else quote_literal(day + 1) end;
begin
    execute format('create table raw.%I (like raw.%I including defaults including constraints)', part, parent);
    execute format('alter table raw.%I add constraint %I check (%I is not null and %I >= %s and %I < %s)',
                   part, part || '_bound', col, col, lo, col, hi);
    return part;
end;
$$;

-- Attach a table made by raw.create_day_table as raw.<parent>'s partition. The attach builds each of the parent's
-- indexes on it (one sorted build per index) and takes SHARE UPDATE EXCLUSIVE on the parent, which blocks neither
-- readers nor loaders (only another attach, until this transaction ends).
create or replace function raw.attach_day_table(parent text, day date) returns text
language plpgsql as $$
declare
    part text := raw.day_partition_name(parent, day);
begin
    execute format('alter table raw.%I attach partition raw.%I for values %s', parent, part,
                   raw.day_partition_bounds(parent, day));
    return part;
end;
$$;

-- The day tables, in the order every creator takes them (a fixed order: no lock-order deadlocks).
create or replace function raw.day_partitioned_tables() returns text[]
language sql immutable as $$
    select array['events', 'rollup_pair_day', 'rollup_user_session_day', 'rollup_product_day']
$$;

-- Same contract as before (idempotent; returns the raw.events partition name), now for the three rollups too.
-- The advisory lock is the one ml.ingest takes for a day it creates inside its load transaction.
create or replace function raw.ensure_event_partition(day date) returns text
language plpgsql as $$
declare
    parent text;
    missing boolean := false;
begin
    foreach parent in array raw.day_partitioned_tables() loop
        missing := missing or not raw.day_partition_exists(parent, day);
    end loop;
    if missing then
        perform pg_advisory_xact_lock(hashtext('raw.ensure_event_partition'),
                                      hashtext(raw.day_partition_name('events', day)));
        foreach parent in array raw.day_partitioned_tables() loop
            if not raw.day_partition_exists(parent, day) then
                perform raw.create_day_table(parent, day);
                perform raw.attach_day_table(parent, day);
            end if;
        end loop;
    end if;
    return raw.day_partition_name('events', day);
end;
$$;

-- The upsert adding the rows of `select_sql` (one row per key, the rollup's columns by name) to raw.<rollup>: counts
-- add, first/min combine with least, last/max with greatest, session sets union. Rows go in key order so that
-- concurrent loaders of one day lock keys in the same order. Used by the triggers (raw.rollups_add_sql) and by
-- ml.ingest (from the rollups it computed client-side).
create or replace function raw.rollup_upsert_sql(rollup text, select_sql text) returns text
language plpgsql immutable as $f$
declare
    keys text;
    cols text;
    merge text;
begin
    if rollup = 'rollup_pair_day' then
        keys := 'user_id, product_id, day';
        cols := 'events, views, carts, removes, purchases, evening_events, first_view_at, last_view_at, last_cart_at,'
                ' last_purchase_at, last_at, first_view_key, last_view_key, category_id, brand, sessions';
        merge := $m$
    events = r.events + excluded.events,
    views = r.views + excluded.views,
    carts = r.carts + excluded.carts,
    removes = r.removes + excluded.removes,
    purchases = r.purchases + excluded.purchases,
    evening_events = r.evening_events + excluded.evening_events,
    first_view_at = least(r.first_view_at, excluded.first_view_at),
    last_view_at = greatest(r.last_view_at, excluded.last_view_at),
    last_cart_at = greatest(r.last_cart_at, excluded.last_cart_at),
    last_purchase_at = greatest(r.last_purchase_at, excluded.last_purchase_at),
    last_at = greatest(r.last_at, excluded.last_at),
    first_view_key = least(r.first_view_key, excluded.first_view_key),
    last_view_key = greatest(r.last_view_key, excluded.last_view_key),
    category_id = greatest(r.category_id, excluded.category_id),
    brand = greatest(r.brand, excluded.brand),
    sessions = case when excluded.sessions <@ r.sessions then r.sessions
                    else array(select distinct u from unnest(r.sessions || excluded.sessions) as u) end$m$;
    elsif rollup = 'rollup_user_session_day' then
        keys := 'user_id, user_session, day';
        cols := 'events, first_at, last_at';
        merge := $m$
    events = r.events + excluded.events,
    first_at = least(r.first_at, excluded.first_at),
    last_at = greatest(r.last_at, excluded.last_at)$m$;
    elsif rollup = 'rollup_product_day' then
        keys := 'product_id, day';
        cols := 'events, views, carts, purchases, last_key, category_id, brand';
        merge := $m$
    events = r.events + excluded.events,
    views = r.views + excluded.views,
    carts = r.carts + excluded.carts,
    purchases = r.purchases + excluded.purchases,
    last_key = greatest(r.last_key, excluded.last_key),
    category_id = greatest(r.category_id, excluded.category_id),
    brand = greatest(r.brand, excluded.brand)$m$;
    else
        raise exception 'unknown rollup %', rollup;
    end if;
    return format('insert into raw.%1$I as r (%2$s, %3$s) select %2$s, %3$s from (%4$s) as s order by %2$s '
                  'on conflict (%2$s) do update set %5$s', rollup, keys, cols, select_sql, merge);
end;
$f$;

-- 0180's aggregation of raw.events-shaped rows, now combined through raw.rollup_upsert_sql.
create or replace function raw.rollups_add_sql(source text) returns text[]
language sql immutable as $f$
select array[
raw.rollup_upsert_sql('rollup_pair_day', format($q$
select user_id, product_id, day,
    sum(events) as events, sum(views) as views, sum(carts) as carts, sum(removes) as removes,
    sum(purchases) as purchases, sum(evening_events) as evening_events,
    min(first_view_at) as first_view_at, max(last_view_at) as last_view_at, max(last_cart_at) as last_cart_at,
    max(last_purchase_at) as last_purchase_at, max(last_at) as last_at,
    min(first_view_key) as first_view_key, max(last_view_key) as last_view_key, max(category_id) as category_id,
    max(brand) as brand,
    coalesce(array_agg(user_session) filter (where user_session is not null), '{}') as sessions
from (
    -- one row per (user, product, day, session) first: both levels are plain hash aggregates (no per-group sort)
    select user_id, product_id, day, user_session,
        count(*) as events,
        count(*) filter (where event_type = 'view') as views,
        count(*) filter (where event_type = 'cart') as carts,
        count(*) filter (where event_type = 'remove_from_cart') as removes,
        count(*) filter (where event_type = 'purchase') as purchases,
        count(*) filter (where date_part('hour', event_time at time zone 'UTC') >= 18) as evening_events,
        min(event_time) filter (where event_type = 'view') as first_view_at,
        max(event_time) filter (where event_type = 'view') as last_view_at,
        max(event_time) filter (where event_type = 'cart') as last_cart_at,
        max(event_time) filter (where event_type = 'purchase') as last_purchase_at,
        max(event_time) as last_at,
        min(k) filter (where event_type = 'view') as first_view_key,
        max(k) filter (where event_type = 'view') as last_view_key,
        max(category_id) as category_id,
        max(brand collate "C") as brand
    from (
        select e.*, (e.event_time at time zone 'UTC')::date as day,
            floor(date_part('epoch', e.event_time at time zone 'UTC' - (e.event_time at time zone 'UTC')::date))::bigint
                * 68719476736 + least(round(e.price * 100), 68719476735)::bigint as k
        from %1$s as e
    ) as s
    group by user_id, product_id, day, user_session
) as ps
group by user_id, product_id, day
$q$, source)),
raw.rollup_upsert_sql('rollup_user_session_day', format($q$
select user_id, user_session, (event_time at time zone 'UTC')::date as day, count(*) as events,
    min(event_time) as first_at, max(event_time) as last_at
from %1$s as e
group by user_id, user_session, day
$q$, source)),
raw.rollup_upsert_sql('rollup_product_day', format($q$
select product_id, day,
    count(*) as events,
    count(*) filter (where event_type = 'view') as views,
    count(*) filter (where event_type = 'cart') as carts,
    count(*) filter (where event_type = 'purchase') as purchases,
    max(k) as last_key,
    max(category_id) as category_id,
    max(coalesce(brand, '') collate "C") as brand
from (
    select e.*, (e.event_time at time zone 'UTC')::date as day,
        floor(date_part('epoch', e.event_time at time zone 'UTC' - (e.event_time at time zone 'UTC')::date))::bigint
            * 68719476736 + least(round(e.price * 100), 68719476735)::bigint as k
    from %1$s as e
) as s
group by product_id, day
$q$, source))]
$f$;

-- The rollup tables become partitioned by day (same columns and keys as 0180); their rows move over day by day.
alter table raw.rollup_pair_day rename to rollup_pair_day_0180;
alter index raw.rollup_pair_day_pkey rename to rollup_pair_day_0180_pkey;
alter table raw.rollup_user_session_day rename to rollup_user_session_day_0180;
alter index raw.rollup_user_session_day_key rename to rollup_user_session_day_0180_key;
alter table raw.rollup_product_day rename to rollup_product_day_0180;
alter index raw.rollup_product_day_pkey rename to rollup_product_day_0180_pkey;

-- (user, product, UTC day): everything the pair and user features need (column notes: migration 0180)
create table raw.rollup_pair_day (
    user_id          bigint      not null,
    product_id       bigint      not null,
    day              date        not null,
    events           integer     not null,
    views            integer     not null,
    carts            integer     not null,
    removes          integer     not null,
    purchases        integer     not null,
    evening_events   integer     not null,
    first_view_at    timestamptz,
    last_view_at     timestamptz,
    last_cart_at     timestamptz,
    last_purchase_at timestamptz,
    last_at          timestamptz not null,
    first_view_key   bigint,
    last_view_key    bigint,
    category_id      bigint      not null,
    brand            text collate "C",
    sessions         uuid[]      not null,
    primary key (user_id, product_id, day)
) partition by range (day);

-- (user, session id, UTC day)
create table raw.rollup_user_session_day (
    user_id      bigint      not null,
    user_session uuid,
    day          date        not null,
    events       integer     not null,
    first_at     timestamptz not null,
    last_at      timestamptz not null
) partition by range (day);
create unique index rollup_user_session_day_key
    on raw.rollup_user_session_day (user_id, user_session, day) nulls not distinct;

-- (product, UTC day)
create table raw.rollup_product_day (
    product_id  bigint  not null,
    day         date    not null,
    events      integer not null,
    views       integer not null,
    carts       integer not null,
    purchases   integer not null,
    last_key    bigint  not null,
    category_id bigint  not null,
    brand       text collate "C" not null,
    primary key (product_id, day)
) partition by range (day);

-- partitions for every day that has events or rollup rows; then the rows move
do $$
declare
    d date;
    parent text;
begin
    for d in
        select to_date(substr(c.relname, 9), 'YYYYMMDD')
        from pg_inherits as i join pg_class as c on c.oid = i.inhrelid
        where i.inhparent = 'raw.events'::regclass and c.relname ~ '^events_p[0-9]{8}$'
        union select day from raw.rollup_pair_day_0180
        union select day from raw.rollup_user_session_day_0180
        union select day from raw.rollup_product_day_0180
    loop
        foreach parent in array array['rollup_pair_day', 'rollup_user_session_day', 'rollup_product_day'] loop
            perform raw.create_day_table(parent, d);
            perform raw.attach_day_table(parent, d);
        end loop;
    end loop;
end $$;
insert into raw.rollup_pair_day select * from raw.rollup_pair_day_0180;
insert into raw.rollup_user_session_day select * from raw.rollup_user_session_day_0180;
insert into raw.rollup_product_day select * from raw.rollup_product_day_0180;
drop table raw.rollup_pair_day_0180, raw.rollup_user_session_day_0180, raw.rollup_product_day_0180;
