-- Per (model_version, segment, tier): pairs, positives and mean probability (expected conversion).
select
    model_version,
    segment,
    tier,
    count(*)         as pairs,
    sum(label)       as positives,
    avg(probability) as mean_probability
from mon_segments
group by 1, 2, 3
