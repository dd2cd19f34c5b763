-- ml.array_concat_agg(array): the concatenation of the arrays of a group (array_cat as the transition function, both
-- built in C). The rollup features (sql/features/pair_aggregates_rollup.sql) use it to count the distinct sessions
-- of a pair over its lookback days in the same aggregate that computes the pair's other features: the union of the
-- per-day session sets, counted with count(distinct) over its elements (issue 17, docs/features.md "Rollups").
create or replace aggregate ml.array_concat_agg(anycompatiblearray) (
    sfunc = array_cat,
    stype = anycompatiblearray,
    initcond = '{}'
);
