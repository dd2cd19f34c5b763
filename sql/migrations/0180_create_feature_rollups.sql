-- Incremental feature rollups (issue 17): per-day aggregates of raw.events that the nightly features read instead
-- of re-aggregating 60 days of raw events per pair (sql/features/*_rollup.sql; docs/features.md, "Rollups").
--
-- Maintained by statement-level triggers on raw.events with transition tables, so every path that writes events
-- (the ingest COPY, load_events_frame, a test's own COPY) updates them IN THE SAME TRANSACTION as the rows:
-- exactly-once holds for the rollups as for the events, and a quarantined (never loaded) file adds nothing.
--   insert: the new rows are aggregated and added to the rollups (upsert; counts add, min/max combine, session
--           sets union): a backfill of an old day or a late file only adds to that day's rows;
--   delete / update (a replaced file): the days the statement touched are rebuilt from raw.events;
--   truncate of raw.events: the rollups are emptied.
-- Not seen by triggers: DDL on partitions (DETACH / DROP of a day partition). After such surgery call
-- raw.rollups_rebuild_days(array[...days...]) (or with null: every day).
--
-- Every timestamp is bucketed by its UTC day. Packed price keys: (whole seconds since the day's UTC midnight)
-- * 2^36 + price in cents; min/max of one bigint carries the price of the first/last event (ties within a second:
-- lowest/highest price), and a query adds (day - since day) * 86400 * 2^36 to compare across days, exactly what
-- pair_features.sql computes from raw events when :since is a UTC midnight.

-- (user, product, UTC day): everything the pair and user features need
create table if not exists raw.rollup_pair_day (
    user_id          bigint      not null,
    product_id       bigint      not null,
    day              date        not null,
    events           integer     not null,
    views            integer     not null,
    carts            integer     not null,
    removes          integer     not null,
    purchases        integer     not null,
    evening_events   integer     not null,  -- hour >= 18 UTC (weekend is a property of the day)
    first_view_at    timestamptz,
    last_view_at     timestamptz,
    last_cart_at     timestamptz,
    last_purchase_at timestamptz,
    last_at          timestamptz not null,
    first_view_key   bigint,                -- min packed key of the day's views
    last_view_key    bigint,                -- max packed key of the day's views
    category_id      bigint      not null,  -- max
    brand            text collate "C",      -- max of the non-null brands
    sessions         uuid[]      not null,  -- the distinct non-null session ids (a set: order is arbitrary)
    primary key (user_id, product_id, day)
);

-- (user, session id, UTC day): sessions, their length and events, days active (null session = no session)
create table if not exists raw.rollup_user_session_day (
    user_id      bigint      not null,
    user_session uuid,
    day          date        not null,
    events       integer     not null,
    first_at     timestamptz not null,
    last_at      timestamptz not null
);
create unique index if not exists rollup_user_session_day_key
    on raw.rollup_user_session_day (user_id, user_session, day) nulls not distinct;

-- (product, UTC day): every user's events on the product (item statistics)
create table if not exists raw.rollup_product_day (
    product_id  bigint  not null,
    day         date    not null,
    events      integer not null,
    views       integer not null,
    carts       integer not null,
    purchases   integer not null,
    last_key    bigint  not null,  -- max packed key of all the day's events (the latest price)
    category_id bigint  not null,
    brand       text collate "C" not null,  -- max(coalesce(brand, '')): '' = unbranded
    primary key (product_id, day)
);

-- The three upserts adding the events of relation/subquery `source` (raw.events' columns) to the rollups.
-- Rows are inserted in key order so that concurrent loaders of the same day lock keys in the same order.
create or replace function raw.rollups_add_sql(source text) returns text[]
language sql immutable as $f$
select array[
format($q$
insert into raw.rollup_pair_day as r (
    user_id, product_id, day, events, views, carts, removes, purchases, evening_events, first_view_at,
    last_view_at, last_cart_at, last_purchase_at, last_at, first_view_key, last_view_key, category_id, brand, sessions)
select user_id, product_id, day,
    sum(events), sum(views), sum(carts), sum(removes), sum(purchases), sum(evening_events),
    min(first_view_at), max(last_view_at), max(last_cart_at), max(last_purchase_at), max(last_at),
    min(first_view_key), max(last_view_key), max(category_id), max(brand),
    coalesce(array_agg(user_session) filter (where user_session is not null), '{}')
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
order by user_id, product_id, day
on conflict (user_id, product_id, day) do update set
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
                    else array(select distinct u from unnest(r.sessions || excluded.sessions) as u) end
$q$, source),
format($q$
insert into raw.rollup_user_session_day as r (user_id, user_session, day, events, first_at, last_at)
select user_id, user_session, (event_time at time zone 'UTC')::date as day, count(*), min(event_time),
    max(event_time)
from %1$s as e
group by user_id, user_session, day
order by user_id, user_session, day
on conflict (user_id, user_session, day) do update set
    events = r.events + excluded.events,
    first_at = least(r.first_at, excluded.first_at),
    last_at = greatest(r.last_at, excluded.last_at)
$q$, source),
format($q$
insert into raw.rollup_product_day as r (
    product_id, day, events, views, carts, purchases, last_key, category_id, brand)
select product_id, day,
    count(*),
    count(*) filter (where event_type = 'view'),
    count(*) filter (where event_type = 'cart'),
    count(*) filter (where event_type = 'purchase'),
    max(k),
    max(category_id),
    max(coalesce(brand, '') collate "C")
from (
    select e.*, (e.event_time at time zone 'UTC')::date as day,
        floor(date_part('epoch', e.event_time at time zone 'UTC' - (e.event_time at time zone 'UTC')::date))::bigint
            * 68719476736 + least(round(e.price * 100), 68719476735)::bigint as k
    from %1$s as e
) as s
group by product_id, day
order by product_id, day
on conflict (product_id, day) do update set
    events = r.events + excluded.events,
    views = r.views + excluded.views,
    carts = r.carts + excluded.carts,
    purchases = r.purchases + excluded.purchases,
    last_key = greatest(r.last_key, excluded.last_key),
    category_id = greatest(r.category_id, excluded.category_id),
    brand = greatest(r.brand, excluded.brand)
$q$, source)]
$f$;

-- Rebuild the rollups of `days` (UTC dates; null = every day) from raw.events: delete, then re-add day by day
-- (each day reads only its own partition).
create or replace function raw.rollups_rebuild_days(days date[]) returns bigint
language plpgsql as $$
declare
    d date;
    q text;
    n bigint := 0;
begin
    if days is null then
        truncate raw.rollup_pair_day, raw.rollup_user_session_day, raw.rollup_product_day;
        select coalesce(array_agg(x order by x), '{}') into days from (
            select to_date(substr(c.relname, 9), 'YYYYMMDD') as x
            from pg_inherits as i join pg_class as c on c.oid = i.inhrelid
            where i.inhparent = 'raw.events'::regclass and c.relname ~ '^events_p[0-9]{8}$'
        ) as parts;
    else
        delete from raw.rollup_pair_day where day = any(days);
        delete from raw.rollup_user_session_day where day = any(days);
        delete from raw.rollup_product_day where day = any(days);
    end if;
    foreach d in array days loop
        foreach q in array raw.rollups_add_sql(format(
            '(select * from raw.events where event_time >= %L and event_time < %L)',
            d::timestamp at time zone 'UTC', (d + 1)::timestamp at time zone 'UTC')) loop
            execute q;
        end loop;
        n := n + 1;
    end loop;
    return n;
end;
$$;

-- jit off: a trigger statement is short, JIT compilation would cost more than it saves on a small file;
-- work_mem: the aggregates of a large file stay in memory
create or replace function raw.rollups_after_insert() returns trigger
language plpgsql set jit = off set work_mem = '256MB' as $$
declare
    q text;
begin
    foreach q in array raw.rollups_add_sql('new_rows') loop
        execute q;
    end loop;
    return null;
end;
$$;

create or replace function raw.rollups_after_delete() returns trigger
language plpgsql set jit = off set work_mem = '256MB' as $$
begin
    perform raw.rollups_rebuild_days(array(select distinct (event_time at time zone 'UTC')::date from old_rows));
    return null;
end;
$$;

create or replace function raw.rollups_after_update() returns trigger
language plpgsql set jit = off set work_mem = '256MB' as $$
begin
    perform raw.rollups_rebuild_days(array(
        select (event_time at time zone 'UTC')::date from old_rows
        union select (event_time at time zone 'UTC')::date from new_rows));
    return null;
end;
$$;

create or replace function raw.rollups_after_truncate() returns trigger
language plpgsql as $$
begin
    truncate raw.rollup_pair_day, raw.rollup_user_session_day, raw.rollup_product_day;
    return null;
end;
$$;

drop trigger if exists events_rollups_insert on raw.events;
create trigger events_rollups_insert after insert on raw.events
    referencing new table as new_rows for each statement execute function raw.rollups_after_insert();
drop trigger if exists events_rollups_delete on raw.events;
create trigger events_rollups_delete after delete on raw.events
    referencing old table as old_rows for each statement execute function raw.rollups_after_delete();
drop trigger if exists events_rollups_update on raw.events;
create trigger events_rollups_update after update on raw.events
    referencing old table as old_rows new table as new_rows for each statement
    execute function raw.rollups_after_update();
drop trigger if exists events_rollups_truncate on raw.events;
create trigger events_rollups_truncate after truncate on raw.events
    for each statement execute function raw.rollups_after_truncate();

-- events loaded before this migration
select raw.rollups_rebuild_days(null);
