-- propensity_bi_reader: the least-privilege role of BI tools (Grafana, Metabase, ...): it reads the bi.* views only
-- (a view reads its tables with its owner's rights, so no grant on raw/scoring/monitoring is needed). NOLOGIN: grant
-- it to a login role (docker/grafana-postgres-init.sql does so for Grafana's user in compose).
do $$
begin
    if not exists (select from pg_roles where rolname = 'propensity_bi_reader') then
        create role propensity_bi_reader nologin;
    end if;
exception when duplicate_object or unique_violation then
    null;  -- created concurrently by another database's migration on the same server
end
$$;
grant usage on schema bi to propensity_bi_reader;
grant select on all tables in schema bi to propensity_bi_reader;
alter default privileges in schema bi grant select on tables to propensity_bi_reader;
