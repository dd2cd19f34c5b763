-- issue 15: a publish of a score_date older than the one served is refused unless explicitly allowed; the row of
-- such an explicit publish says so. A 'publishing' row whose publisher died is marked 'failed' by the next
-- publish or cleanup (the publish lock proves no publisher is alive).
alter table scoring.publications add column if not exists allowed_older boolean not null default false;
comment on column scoring.publications.allowed_older is
    'true when this publish served a score_date older than the one served before it, by explicit request';
