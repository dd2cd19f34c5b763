-- Runs once, as the superuser (POSTGRES_USER=postgres), on the first start of the compose Postgres (psql >= 15 for
-- \getenv). Creates every login and database; the pipeline's grants come from migration 0160, which
-- `python -m ml migrate` (airflow-init) applies as the owner login.
--
--   airflow             Airflow's metadata database "airflow" (and the Celery result backend); nothing else.
--   propensity          owner login (member of propensity_owner): owns database "propensity", runs migrations.
--   propensity_pipeline_user  the Airflow connection propensity_postgres (member of propensity_pipeline).
--   propensity_bi_user  analysts and BI tools (member of propensity_bi): reads bi.* only.
--
-- Passwords come from the postgres service's environment (docker-compose.yaml requires each one).
\set ON_ERROR_STOP on
\getenv airflow_password AIRFLOW_DB_PASSWORD
\getenv owner_password PROPENSITY_OWNER_PASSWORD
\getenv pipeline_password PROPENSITY_PIPELINE_PASSWORD
\getenv bi_password PROPENSITY_BI_PASSWORD

create role airflow login password :'airflow_password';
create database airflow owner airflow;

-- the groups of migration 0160 (it creates them itself when missing; here they exist before the first migration)
create role propensity_owner nologin;
create role propensity_pipeline nologin;
create role propensity_bi nologin;
grant propensity_owner to propensity_pipeline;

create role propensity login password :'owner_password' in role propensity_owner;
create role propensity_pipeline_user login password :'pipeline_password' in role propensity_pipeline;
create role propensity_bi_user login password :'bi_password' in role propensity_bi;
create database propensity owner propensity;

-- nobody but these roles connects to the pipeline database; BI cannot reach Airflow's
revoke connect, temporary on database propensity from public;
grant connect on database propensity to propensity_owner, propensity_pipeline, propensity_bi;
revoke connect, temporary on database airflow from public;
\connect propensity
revoke create on schema public from public;
