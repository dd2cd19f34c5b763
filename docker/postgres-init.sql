-- Runs once, on the first start of the compose Postgres: the pipeline gets its own database and role,
-- next to Airflow's metadata database.
create role propensity login password 'propensity';
create database propensity owner propensity;
