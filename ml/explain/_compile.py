"""Turn a :class:`ParsedForest` into the flat arrays the kernels read: conditions, leaf groups with their
precomputed contribution tables, fallback leaves and the routing arrays for margin prediction.

Grouping (per tree). Leaves are grouped by subtree: for a node ``n`` the group's *bits* are

* one bit per distinct feature among ``n``'s ancestors: the AND of the ancestor splits on that feature (the row's
  one-bit for that feature on the shared part of the path), and
* one bit per distinct condition inside ``n``'s subtree (the row goes left there or not).

Every leaf below ``n`` has its one-bits determined by those bits, so the sum of their contributions is a function
of ``K`` bits: one table of ``2^K`` rows per feature involved. We take the highest node with ``K <= max_bits``
(a whole CatBoost oblivious tree of depth d has K = d: one lookup per tree). A leaf that fits no group is tabled on
its own (``K = u`` unique features) when ``u <= max_unique``; otherwise it is a *fallback* leaf whose contributions
are computed per row in O(u^2).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ml.explain import _kernels as K
from ml.explain._forest import ParsedForest, ParsedTree


@dataclass
class CompiledForest:
    """Flat arrays for :mod:`ml.explain._kernels` plus build statistics (see :meth:`stats`)."""

    arrays: dict[str, np.ndarray]
    expected_value: float
    base_margin: float
    n_features: int
    max_conds: int
    max_fb_u: int
    max_group_bits: int
    n_trees: int
    n_groups: int
    n_table_leaves: int
    n_fallback_leaves: int
    n_zero_cover_leaves: int  # leaves with zero cover (tabled like the others; weight 0 in the expectation)
    build_seconds: float
    max_bits: int
    max_unique: int
    group_bits_hist: dict[int, int] = field(default_factory=dict)

    @property
    def table_bytes(self) -> int:
        """Bytes held by the contribution tables."""
        return int(self.arrays["tables"].nbytes)

    @property
    def total_bytes(self) -> int:
        """Bytes held by all compiled arrays."""
        return int(sum(a.nbytes for a in self.arrays.values()))


@dataclass
class _Leaf:
    value: float
    feats: list[int]  # unique features, first-appearance order along the path
    z: list[float]
    terms: list[list[tuple[int, int]]]  # per feature: (tree-local condition, want_left)
    reach_only: bool = False  # zero cover: contributes only to rows that reach it (see _leaf_info)


class _Lists:
    """A tree's arrays as Python lists: scalar indexing of lists is ~10x cheaper than of numpy arrays."""

    def __init__(self, tree: ParsedTree) -> None:
        self.root = tree.root
        self.cond_feat = tree.cond_feat.tolist()
        self.node_cond = tree.node_cond.tolist()
        self.node_left = tree.node_left.tolist()
        self.node_right = tree.node_right.tolist()
        self.node_cover = tree.node_cover.tolist()
        self.leaf_cover = tree.leaf_cover.tolist()
        self.leaf_value = tree.leaf_value.tolist()


def _leaves_of(tree: _Lists) -> tuple[dict[int, list[tuple[int, int]]], dict[int, float]]:
    """Per leaf: its path [(node, went_left)] and the product of cover ratios along it (0 if any cover is 0)."""
    paths: dict[int, list[tuple[int, int]]] = {}
    ratio: dict[int, float] = {}
    stack: list[tuple[int, list[tuple[int, int]], float]] = [(tree.root, [], 1.0)]
    while stack:
        ref, path, pr = stack.pop()
        if ref < 0:
            paths[~ref] = path
            ratio[~ref] = pr
            continue
        cov = tree.node_cover[ref]
        for child, left in ((tree.node_left[ref], 1), (tree.node_right[ref], 0)):
            ccov = tree.leaf_cover[~child] if child < 0 else tree.node_cover[child]
            stack.append((child, path + [(ref, left)], pr * _cover_ratio(ccov, cov)))
    return paths, ratio


def _cover_ratio(child_cover: float, cover: float) -> float:
    """Fraction of a node's cover that goes to one child: ``child_cover / cover``; 1/2 below a zero-cover node.

    A zero-cover node is only reached through a zero ratio (its own cover is 0), so the convention below it never
    changes the expected value; it keeps the path-dependent conditional expectation a weighted average there.
    """
    return child_cover / cover if cover > 0 else 0.0


def _leaf_info(tree: _Lists, leaf: int, path: list[tuple[int, int]]) -> _Leaf:
    """Unique features of the path with zero fractions (products of cover ratios, root to leaf, as TreeSHAP does)
    and their terms.

    A leaf below a zero-cover branch carries no weight in the expectation. CatBoost's TreeSHAP skips such subtrees
    (its values are the Shapley values of the game without those leaves), which is additive only for rows whose own
    leaf has weight. With monotone constraints CatBoost fills empty leaves with non-zero values, so a row can reach
    one: such a leaf is marked ``reach_only`` and contributes only to the rows that reach it (the game without the
    other empty leaves): equal to CatBoost's values wherever those are additive, and additive for every row.
    """
    feats: list[int] = []
    z: list[float] = []
    terms: list[list[tuple[int, int]]] = []
    pos: dict[int, int] = {}
    empty = False
    for i, (node, left) in enumerate(path):
        child = path[i + 1][0] if i + 1 < len(path) else ~leaf
        ccov = tree.leaf_cover[~child] if child < 0 else tree.node_cover[child]
        cov = tree.node_cover[node]
        empty = empty or cov <= 0 or ccov <= 0
        cond = tree.node_cond[node]
        f = tree.cond_feat[cond]
        if f not in pos:
            pos[f] = len(feats)
            feats.append(f)
            z.append(1.0)
            terms.append([])
        j = pos[f]
        z[j] *= _cover_ratio(ccov, cov)
        terms[j].append((cond, left))
    return _Leaf(tree.leaf_value[leaf], feats, z, terms, empty)


class _Builder:
    """Collects flat arrays over all trees."""

    def __init__(self) -> None:
        # kernel: groups
        self.group_nbits: list[int] = []
        self.group_bit_start: list[int] = [0]
        self.bit_term_start: list[int] = [0]
        self.term_cond: list[int] = []
        self.term_flip: list[int] = []
        self.group_table_start: list[int] = []
        self.group_slot_start: list[int] = [0]
        self.slot_feat: list[int] = []
        self.table_size = 0
        # table build: leaves of each group
        self.g_leaf_start: list[int] = [0]
        self.l_value: list[float] = []
        self.l_reach_only: list[int] = []
        self.l_feat_start: list[int] = [0]
        self.lf_z: list[float] = []
        self.lf_slot: list[int] = []
        self.lf_term_start: list[int] = [0]
        self.t_pos: list[int] = []
        self.t_want: list[int] = []
        # fallback leaves
        self.fb_value: list[float] = []
        self.fb_reach_only: list[int] = []
        self.fb_feat_start: list[int] = [0]
        self.fbf_feat: list[int] = []
        self.fbf_z: list[float] = []
        self.fbf_term_start: list[int] = [0]
        self.fbt_cond: list[int] = []
        self.fbt_flip: list[int] = []
        self.n_table_leaves = 0
        self.hist: dict[int, int] = {}

    def _add_bit(self, terms: list[tuple[int, int]]) -> None:
        for cond, want in terms:
            self.term_cond.append(cond)
            self.term_flip.append(1 - want)
        self.bit_term_start.append(len(self.term_cond))

    def add_group(
        self, bits: list[list[tuple[int, int]]], leaves: list[_Leaf], leaf_terms: list[list[list[tuple[int, int]]]]
    ) -> None:
        """``bits``: per bit, its condition terms; ``leaf_terms[l][j]``: (bit position, want) terms of leaf l's
        feature j."""
        nb = len(bits)
        for bt in bits:
            self._add_bit(bt)
        self.group_nbits.append(nb)
        self.group_bit_start.append(self.group_bit_start[-1] + nb)
        self.hist[nb] = self.hist.get(nb, 0) + 1
        slots: dict[int, int] = {}
        for lf in leaves:
            for f in lf.feats:
                slots.setdefault(f, len(slots))
        self.slot_feat.extend(slots)
        self.group_slot_start.append(len(self.slot_feat))
        self.group_table_start.append(self.table_size)
        self.table_size += len(slots) << nb
        for lf, lterms in zip(leaves, leaf_terms):
            self.l_value.append(lf.value)
            self.l_reach_only.append(int(lf.reach_only))
            for j, f in enumerate(lf.feats):
                self.lf_z.append(lf.z[j])
                self.lf_slot.append(slots[f])
                for p, want in lterms[j]:
                    self.t_pos.append(p)
                    self.t_want.append(want)
                self.lf_term_start.append(len(self.t_pos))
            self.l_feat_start.append(len(self.lf_z))
        self.g_leaf_start.append(len(self.l_value))
        self.n_table_leaves += len(leaves)

    def add_fallback(self, lf: _Leaf) -> None:
        self.fb_value.append(lf.value)
        self.fb_reach_only.append(int(lf.reach_only))
        for j, f in enumerate(lf.feats):
            self.fbf_feat.append(f)
            self.fbf_z.append(lf.z[j])
            for cond, want in lf.terms[j]:
                self.fbt_cond.append(cond)
                self.fbt_flip.append(1 - want)
            self.fbf_term_start.append(len(self.fbt_cond))
        self.fb_feat_start.append(len(self.fbf_feat))


def _subtree_conds(tree: _Lists) -> dict[int, frozenset[int]]:
    """Distinct conditions used inside each internal node's subtree (the node included)."""
    out: dict[int, frozenset[int]] = {}
    order: list[int] = []
    stack = [tree.root] if tree.root >= 0 else []
    while stack:
        n = stack.pop()
        order.append(n)
        for c in (tree.node_left[n], tree.node_right[n]):
            if c >= 0:
                stack.append(c)
    for n in reversed(order):
        s = {tree.node_cond[n]}
        for c in (tree.node_left[n], tree.node_right[n]):
            if c >= 0:
                s |= out[c]
        out[n] = frozenset(s)
    return out


def _leaves_under(tree: _Lists, ref: int) -> list[int]:
    out: list[int] = []
    stack = [ref]
    while stack:
        r = stack.pop()
        if r < 0:
            out.append(~r)
        else:
            stack += [tree.node_right[r], tree.node_left[r]]
    return out


def _group_tree(tree: _Lists, infos: dict[int, _Leaf], bld: _Builder, max_bits: int, max_unique: int) -> int:
    """Partition the tree's leaves into groups / single-leaf tables / fallback leaves. Returns fallback count."""
    sub = _subtree_conds(tree)
    n_fb = 0

    def emit(ref: int, anc: list[tuple[int, int]]) -> None:
        # ancestor feature bits: feature -> terms, in first-appearance order
        anc_feat: dict[int, list[tuple[int, int]]] = {}
        for node, left in anc:
            cond = tree.node_cond[node]
            anc_feat.setdefault(tree.cond_feat[cond], []).append((cond, left))
        sub_conds = sorted(sub[ref]) if ref >= 0 else []
        bits = [terms for terms in anc_feat.values()] + [[(c, 1)] for c in sub_conds]
        apos = {f: i for i, f in enumerate(anc_feat)}
        cpos = {c: len(anc_feat) + i for i, c in enumerate(sub_conds)}
        leaves: list[_Leaf] = []
        leaf_terms: list[list[list[tuple[int, int]]]] = []
        for li in _leaves_under(tree, ref):
            lf = infos[li]
            lt: list[list[tuple[int, int]]] = []
            for j, f in enumerate(lf.feats):
                terms = []
                if f in apos:
                    terms.append((apos[f], 1))
                # the leaf's own terms below the group root: all of its terms minus the ancestor ones
                n_anc_terms = len(anc_feat.get(f, []))
                for cond, want in lf.terms[j][n_anc_terms:]:
                    terms.append((cpos[cond], want))
                lt.append(terms)
            leaves.append(lf)
            leaf_terms.append(lt)
        if leaves:
            bld.add_group(bits, leaves, leaf_terms)

    def visit(ref: int, anc: list[tuple[int, int]]) -> None:
        nonlocal n_fb
        anc_feats = {tree.cond_feat[tree.node_cond[n]] for n, _ in anc}
        k = len(anc_feats) + (len(sub[ref]) if ref >= 0 else 0)
        if k <= max_bits:
            emit(ref, anc)
            return
        if ref < 0:  # a deep leaf: alone with its unique-feature bits, or the per-row fallback
            lf = infos[~ref]
            if len(lf.feats) <= max_unique:
                emit(ref, anc)
            else:
                bld.add_fallback(lf)
                n_fb += 1
            return
        visit(tree.node_left[ref], anc + [(ref, 1)])
        visit(tree.node_right[ref], anc + [(ref, 0)])

    visit(tree.root, [])
    return n_fb


def compile_forest(forest: ParsedForest, max_bits: int = 8, max_unique: int = 10) -> CompiledForest:
    """Group leaves, build all contribution tables (numba) and flatten everything for the kernels.

    ``max_bits``: largest group index (table rows 2^max_bits per feature). ``max_unique``: largest unique-feature
    count of a leaf tabled alone; deeper leaves use the per-row fallback.
    """
    if not 1 <= max_bits <= 16 or not 1 <= max_unique <= 16:
        raise ValueError("max_bits and max_unique must be in 1..16")
    t0 = time.perf_counter()
    bld = _Builder()
    tree_cond_start = [0]
    tree_group_start = [0]
    tree_fb_start = [0]
    tree_node_start = [0]
    tree_leaf_start = [0]
    cond_feat, cond_thr, cond_nan, cond_zero = [], [], [], []
    node_cond, node_left, node_right, leaf_value, leaf_id = [], [], [], [], []
    expected = 0.0
    n_fb = 0
    n_zero_cover = 0
    max_conds = 1
    for tree in forest.trees:
        lt = _Lists(tree)
        paths, ratio = _leaves_of(lt)
        infos = {li: _leaf_info(lt, li, p) for li, p in paths.items()} if tree.root >= 0 else {}
        n_zero_cover += sum(1 for li in paths if lt.leaf_cover[li] <= 0) if tree.root >= 0 else 0
        if tree.root < 0:
            expected += float(tree.leaf_value[0])
        else:
            # sum_l v_l * prod(cover ratios): the expectation TreeSHAP's zero fractions imply (additivity).
            expected += float(sum(lt.leaf_value[li] * ratio[li] for li in sorted(ratio)))
            n_fb += _group_tree(lt, infos, bld, max_bits, max_unique)
        tree_group_start.append(len(bld.group_nbits))
        tree_fb_start.append(len(bld.fb_value))
        cond_feat += tree.cond_feat.tolist()
        cond_thr += tree.cond_thr.tolist()
        cond_nan += tree.cond_nan_left.tolist()
        cond_zero += tree.cond_zero_dir.tolist()
        tree_cond_start.append(len(cond_feat))
        max_conds = max(max_conds, len(tree.cond_feat))
        node_cond += tree.node_cond.tolist()
        node_left += tree.node_left.tolist()
        node_right += tree.node_right.tolist()
        tree_node_start.append(len(node_cond))
        leaf_value += tree.leaf_value.tolist()
        leaf_id += tree.leaf_id.tolist()
        tree_leaf_start.append(len(leaf_value))

    i64, i32, f64, u8 = np.int64, np.int32, np.float64, np.uint8
    tables = np.zeros(bld.table_size, dtype=f64)
    if bld.group_nbits:
        K.build_group_tables(
            np.array(bld.group_nbits, i32), np.array(bld.group_table_start, i64),
            np.diff(np.array(bld.group_slot_start, i64)), np.array(bld.g_leaf_start, i64),
            np.array(bld.l_value, f64), np.array(bld.l_reach_only, u8), np.array(bld.l_feat_start, i64), np.array(bld.lf_z, f64),
            np.array(bld.lf_slot, i64), np.array(bld.lf_term_start, i64), np.array(bld.t_pos, i32),
            np.array(bld.t_want, i32), tables,
        )  # fmt: skip
    fb_u = np.diff(np.array(bld.fb_feat_start, i64))
    arrays = {
        "tree_cond_start": np.array(tree_cond_start, i64),
        "cond_feat": np.array(cond_feat, i32),
        "cond_thr": np.array(cond_thr, f64),
        "cond_nan_left": np.array(cond_nan, u8),
        "cond_zero_dir": np.array(cond_zero, np.int8),
        "tree_group_start": np.array(tree_group_start, i64),
        "group_nbits": np.array(bld.group_nbits, i32),
        "group_bit_start": np.array(bld.group_bit_start, i64),
        "bit_term_start": np.array(bld.bit_term_start, i64),
        "term_cond": np.array(bld.term_cond, i32),
        "term_flip": np.array(bld.term_flip, u8),
        "group_table_start": np.array(bld.group_table_start, i64),
        "group_slot_start": np.array(bld.group_slot_start, i64),
        "slot_feat": np.array(bld.slot_feat, i32),
        "tables": tables,
        "tree_fb_start": np.array(tree_fb_start, i64),
        "fb_value": np.array(bld.fb_value, f64),
        "fb_reach_only": np.array(bld.fb_reach_only, u8),
        "fb_feat_start": np.array(bld.fb_feat_start, i64),
        "fbf_feat": np.array(bld.fbf_feat, i32),
        "fbf_z": np.array(bld.fbf_z, f64),
        "fbf_term_start": np.array(bld.fbf_term_start, i64),
        "fbt_cond": np.array(bld.fbt_cond, i32),
        "fbt_flip": np.array(bld.fbt_flip, u8),
        "tree_node_start": np.array(tree_node_start, i64),
        "node_cond": np.array(node_cond, i32),
        "node_left": np.array(node_left, i32),
        "node_right": np.array(node_right, i32),
        "tree_leaf_start": np.array(tree_leaf_start, i64),
        "leaf_value": np.array(leaf_value, f64),
        "leaf_id": np.array(leaf_id, i32),
    }
    return CompiledForest(
        arrays=arrays,
        expected_value=forest.base_margin + expected,
        base_margin=forest.base_margin,
        n_features=forest.n_features,
        max_conds=max_conds,
        max_fb_u=int(fb_u.max()) if fb_u.size else 1,
        max_group_bits=max(bld.group_nbits, default=1),
        n_trees=len(forest.trees),
        n_groups=len(bld.group_nbits),
        n_table_leaves=bld.n_table_leaves,
        n_fallback_leaves=n_fb,
        n_zero_cover_leaves=n_zero_cover,
        build_seconds=time.perf_counter() - t0,
        max_bits=max_bits,
        max_unique=max_unique,
        group_bits_hist=dict(sorted(bld.hist.items())),
    )
