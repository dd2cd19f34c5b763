-- Per (model_version, segment, bin): the reliability curve on :n_bins equal-width probability bins
-- (bin = least(floor(p * n_bins), n_bins - 1), as ml.evaluate.expected_calibration_error).
select
    model_version,
    segment,
    least(floor(probability * :n_bins)::integer, :n_bins - 1) as bin,
    count(*)                                                 as pairs,
    sum(probability)                                         as sum_probability,
    sum(label)                                               as positives
from mon_segments
group by 1, 2, 3
