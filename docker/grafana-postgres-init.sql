-- Runs once, on the first start of the compose Postgres (after 10-propensity.sql): Grafana's login, which can only
-- read the bi.* views (migration 0101 grants them to propensity_bi_reader; the role is created here first so the
-- grant below works before the pipeline's migrations ran).
create role propensity_bi_reader nologin;
create role grafana login password 'grafana' in role propensity_bi_reader;
\connect propensity
revoke all on schema public from grafana;
