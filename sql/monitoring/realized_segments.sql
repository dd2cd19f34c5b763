-- mon_segments (temporary): mon_pairs once per segment it belongs to ('all'; 'published' when published), with
-- the rank of the pair among the user's pairs of that segment (the published pairs are a prefix of the ranking,
-- so the rank is the same).
create temporary table mon_segments on commit drop as
select p.model_version, seg.segment, p.user_id, p.product_id, p.probability, p.tier, p.label, p.rnk
from mon_pairs as p
cross join lateral (values ('all'), ('published')) as seg (segment)
where seg.segment = 'all' or p.published
