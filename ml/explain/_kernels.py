"""numba kernels: per-leaf contribution tables, the table-driven TreeSHAP pass and margin prediction.

All kernels are compiled with ``cache=True`` (the machine code is kept in ``__pycache__`` next to this file) and
without ``fastmath``: NaN tests must survive compilation and results must not depend on vector width, so the same
row gives bit-identical contributions whatever block or thread it lands in.

Notation: a leaf's path has ``u`` unique features with zero fractions ``z_j`` (product of cover ratios of the splits
on feature j along the path) and one-bits ``o_j`` (1 iff the row satisfies every split on j along the path). The
path-dependent TreeSHAP contribution of that leaf (value ``v``) to feature ``i`` is

    phi_i = v * sum_{S subset of U\\{i}} |S|!(u-|S|-1)!/u! * (o_i - z_i)
                * prod_{j in S} o_j * prod_{j not in S, j != i} z_j

Because ``o`` is binary this depends on the set ``O`` of satisfied features only. Writing ``Zbar(O) = prod_{j not in
O} z_j`` and ``G(A) = sum_s w(s) [t^s] prod_{j in A} (z_j + t)`` with ``w(s) = s!(u-1-s)!/u!``:

    i not in O:  phi_i = -v * Zbar(O) * G(O)
    i in O:      phi_i =  v * (1 - z_i) * Zbar(O) * G(O \\ {i})
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_ZERO = 1e-35  # LightGBM kZeroThreshold


@njit(cache=True)
def shapley_weights(u: int) -> np.ndarray:
    """w(s) = s!(u-1-s)!/u! for s = 0..u-1 (float64[u])."""
    w = np.empty(max(u, 1))
    w[0] = 1.0 / u if u > 0 else 0.0
    for s in range(u - 1):
        w[s + 1] = w[s] * (s + 1) / (u - 1 - s)
    return w


@njit(cache=True)
def leaf_table(z: np.ndarray, v: float) -> np.ndarray:
    """Contributions of one leaf for every one-bit pattern: float64[2^u, u], row ``O`` (bit j = o_j).

    All polynomials are built by multiplying positive factors only (no synthetic division), so the table is exact
    to float64 rounding even for tiny zero fractions.
    """
    u = z.shape[0]
    P = 1 << u
    w = shapley_weights(u)
    poly = np.zeros((P, u + 1))
    prodz = np.empty(P)  # prod_{j in A} z_j
    g = np.empty(P)
    poly[0, 0] = 1.0
    prodz[0] = 1.0
    g[0] = w[0] if u > 0 else 0.0
    for a in range(1, P):
        low = a & (-a)
        j = 0
        while (1 << j) != low:
            j += 1
        b = a ^ low
        zj = z[j]
        m = 0
        x = a
        while x:
            x &= x - 1
            m += 1
        poly[a, 0] = poly[b, 0] * zj
        for k in range(1, m + 1):
            poly[a, k] = poly[b, k] * zj + poly[b, k - 1]
        prodz[a] = prodz[b] * zj
        acc = 0.0
        for s in range(min(m, u - 1) + 1):
            acc += w[s] * poly[a, s]
        g[a] = acc
    out = np.empty((P, u))
    full = P - 1
    for o in range(P):
        zbar = prodz[full ^ o]
        for i in range(u):
            if (o >> i) & 1:
                out[o, i] = v * (1.0 - z[i]) * zbar * g[o ^ (1 << i)]
            else:
                out[o, i] = -v * zbar * g[o]
    return out


@njit(cache=True)
def build_group_tables(
    g_nbits, g_table_off, g_nslots, g_leaf_start,
    l_value, l_reach_only, l_feat_start, lf_z, lf_slot, lf_term_start, t_pos, t_want,
    tables,
):  # fmt: skip
    """Fill every group's table: ``tables[off + slot * 2^K + p]`` = sum over the group's leaves of the contribution
    to the slot's feature when the group's condition bits are ``p``.

    A leaf feature's one-bit is the AND of its terms ``bit[t_pos] == t_want``. A ``l_reach_only`` leaf (zero cover)
    contributes only where all its one-bits are set (rows that reach it).
    """
    n_groups = g_nbits.shape[0]
    for g in range(n_groups):
        K = g_nbits[g]
        P = 1 << K
        off = g_table_off[g]
        for leaf in range(g_leaf_start[g], g_leaf_start[g + 1]):
            f0 = l_feat_start[leaf]
            u = l_feat_start[leaf + 1] - f0
            lt = leaf_table(lf_z[f0 : f0 + u], l_value[leaf])
            full = (1 << u) - 1
            for p in range(P):
                o = 0
                for j in range(u):
                    ok = 1
                    for t in range(lf_term_start[f0 + j], lf_term_start[f0 + j + 1]):
                        if ((p >> t_pos[t]) & 1) != t_want[t]:
                            ok = 0
                            break
                    o |= ok << j
                if l_reach_only[leaf] and o != full:
                    continue
                for j in range(u):
                    tables[off + lf_slot[f0 + j] * P + p] += lt[o, j]


@njit(cache=True, inline="always")
def _go_left(v: float, thr: float, nan_left: np.uint8, zero_dir: np.int8) -> bool:
    if v != v:
        return nan_left != 0
    if zero_dir >= 0 and -_ZERO <= v <= _ZERO:
        return zero_dir != 0
    return v <= thr


@njit(cache=True)
def _path_contrib(z, o, v, w, q, out):
    """Contributions of one leaf for one row (the fallback): O(u^2) via one synthetic division per satisfied
    feature. ``z``: zero fractions, ``o``: one-bits (uint8), ``w``: shapley_weights(u), ``q``: scratch (u + 1)."""
    u = z.shape[0]
    q[0] = 1.0
    m = 0
    zbar = 1.0
    for j in range(u):
        if o[j]:
            zj = z[j]
            q[m + 1] = q[m]
            for k in range(m, 0, -1):
                q[k] = q[k] * zj + q[k - 1]
            q[0] = q[0] * zj
            m += 1
        else:
            zbar *= z[j]
    g_all = 0.0
    for s in range(min(m, u - 1) + 1):
        g_all += w[s] * q[s]
    for i in range(u):
        if o[i]:
            zi = z[i]
            # p = q / (t + z_i), top-down (multiplies by z_i <= 1: no error growth)
            pk = q[m]
            acc = w[m - 1] * pk
            for k in range(m - 1, 0, -1):
                pk = q[k] - zi * pk
                acc += w[k - 1] * pk
            out[i] = v * (1.0 - zi) * zbar * acc
        else:
            out[i] = -v * zbar * g_all


@njit(cache=True)
def _or_bits(idx, cb, rows, flips, k, n, first, R):
    """idx |= sum_{i<n} (cb[rows[k+i]] ^ flips[k+i]) << (k+i), four bits per pass over the rows."""
    c0 = cb[rows[k]]
    f0 = flips[k]
    if n == 1:
        if first:
            for r in range(R):
                idx[r] = np.uint16(c0[r] ^ f0)
        else:
            for r in range(R):
                idx[r] |= np.uint16(c0[r] ^ f0) << k
        return
    c1 = cb[rows[k + 1]]
    f1 = flips[k + 1]
    if n == 2:
        for r in range(R):
            v = np.uint16(c0[r] ^ f0) | (np.uint16(c1[r] ^ f1) << 1)
            idx[r] = v if first else idx[r] | (v << k)
        return
    c2 = cb[rows[k + 2]]
    f2 = flips[k + 2]
    if n == 3:
        for r in range(R):
            v = np.uint16(c0[r] ^ f0) | (np.uint16(c1[r] ^ f1) << 1) | (np.uint16(c2[r] ^ f2) << 2)
            idx[r] = v if first else idx[r] | (v << k)
        return
    c3 = cb[rows[k + 3]]
    f3 = flips[k + 3]
    for r in range(R):
        v = (
            np.uint16(c0[r] ^ f0)
            | (np.uint16(c1[r] ^ f1) << 1)
            | (np.uint16(c2[r] ^ f2) << 2)
            | (np.uint16(c3[r] ^ f3) << 3)
        )
        idx[r] = v if first else idx[r] | (v << k)


@njit(parallel=True, cache=True)
def shap_blocks(
    X, out, block, max_conds, max_bits, max_fb_u,
    tree_cond_start, cond_feat, cond_thr, cond_nan_left, cond_zero_dir,
    tree_group_start, group_nbits, group_bit_start, bit_term_start, term_cond, term_flip,
    group_table_start, group_slot_start, slot_feat, tables,
    tree_fb_start, fb_value, fb_reach_only, fb_feat_start, fbf_feat, fbf_z, fbf_term_start, fbt_cond, fbt_flip,
):  # fmt: skip
    """Accumulate every tree's contributions for the rows of ``X`` (float64[n, F], already rounded the library's
    way) into ``out`` (float64[n, F]). Rows are processed in blocks of ``block`` rows in parallel; inside a block,
    data is feature-major so that each step is a loop over rows (vectorised by LLVM):

    1. evaluate each distinct condition of the tree for all rows (uint8 "goes left"),
    2. per group: build the table index from its bits (a bit with several terms - an ancestor feature split more
       than once - is AND-ed into a scratch row first), then for each slot gather one table entry per row and add
       it to that feature's accumulator (two slots per pass),
    3. per fallback leaf: per row, compute its one-bits and its contributions directly (O(u^2)); a reach-only
       (zero-cover) leaf only for the rows that reach it.
    """
    n, F = X.shape
    n_trees = tree_cond_start.shape[0] - 1
    n_blocks = (n + block - 1) // block
    for b in prange(n_blocks):
        r0 = b * block
        R = min(n, r0 + block) - r0
        xt = np.empty((F, R))
        for r in range(R):
            for f in range(F):
                xt[f, r] = X[r0 + r, f]
        acc = np.zeros((F, R))
        # rows 0..max_conds-1: conditions; then one scratch row per possible multi-term bit of a group
        cb = np.empty((max_conds + max_bits, R), np.uint8)
        idx = np.empty(R, np.uint16)
        rows = np.empty(max_bits, np.int64)
        flips = np.empty(max_bits, np.uint8)
        ob = np.empty(max_fb_u, np.uint8)
        q = np.empty(max_fb_u + 1)
        contrib = np.empty(max_fb_u)
        for t in range(n_trees):
            c0 = tree_cond_start[t]
            for c in range(tree_cond_start[t + 1] - c0):
                xr = xt[cond_feat[c0 + c]]
                thr = cond_thr[c0 + c]
                nl = cond_nan_left[c0 + c]
                zd = cond_zero_dir[c0 + c]
                cr = cb[c]
                if zd < 0:
                    for r in range(R):
                        v = xr[r]
                        cr[r] = np.uint8(v <= thr) | (np.uint8(v != v) & nl)
                else:
                    for r in range(R):
                        cr[r] = _go_left(xr[r], thr, nl, zd)
            for g in range(tree_group_start[t], tree_group_start[t + 1]):
                K = group_nbits[g]
                bs = group_bit_start[g]
                for k in range(K):
                    ts = bit_term_start[bs + k]
                    te = bit_term_start[bs + k + 1]
                    if te - ts == 1:
                        rows[k] = term_cond[ts]
                        flips[k] = term_flip[ts]
                    else:
                        sr = cb[max_conds + k]
                        cr = cb[term_cond[ts]]
                        fl = term_flip[ts]
                        for r in range(R):
                            sr[r] = cr[r] ^ fl
                        for tt in range(ts + 1, te):
                            cr2 = cb[term_cond[tt]]
                            fl2 = term_flip[tt]
                            for r in range(R):
                                sr[r] &= cr2[r] ^ fl2
                        rows[k] = max_conds + k
                        flips[k] = 0
                for k in range(0, K, 4):
                    _or_bits(idx, cb, rows, flips, k, min(4, K - k), k == 0, R)
                P = 1 << K
                s0 = group_slot_start[g]
                s1 = group_slot_start[g + 1]
                toff = group_table_start[g]
                s = s0
                while s + 1 < s1:
                    a1 = acc[slot_feat[s]]
                    a2 = acc[slot_feat[s + 1]]
                    o1 = toff + (s - s0) * P
                    t1 = tables[o1 : o1 + P]
                    t2 = tables[o1 + P : o1 + 2 * P]
                    for r in range(R):
                        i = np.int64(idx[r])
                        a1[r] += t1[i]
                        a2[r] += t2[i]
                    s += 2
                if s < s1:
                    ar = acc[slot_feat[s]]
                    o1 = toff + (s - s0) * P
                    tab = tables[o1 : o1 + P]
                    for r in range(R):
                        ar[r] += tab[np.int64(idx[r])]
            for leaf in range(tree_fb_start[t], tree_fb_start[t + 1]):
                f0 = fb_feat_start[leaf]
                u = fb_feat_start[leaf + 1] - f0
                w = shapley_weights(u)
                z = fbf_z[f0 : f0 + u]
                o = ob[:u]
                out_u = contrib[:u]
                for r in range(R):
                    n_ok = 0
                    for j in range(u):
                        ok = np.uint8(1)
                        for tt in range(fbf_term_start[f0 + j], fbf_term_start[f0 + j + 1]):
                            ok &= cb[fbt_cond[tt], r] ^ fbt_flip[tt]
                        o[j] = ok
                        n_ok += ok
                    if fb_reach_only[leaf] and n_ok != u:
                        continue
                    _path_contrib(z, o, fb_value[leaf], w, q, out_u)
                    for j in range(u):
                        acc[fbf_feat[f0 + j], r] += out_u[j]
        for r in range(R):
            for f in range(F):
                out[r0 + r, f] = acc[f, r]


@njit(parallel=True, cache=True)
def predict_blocks(
    X, margin, leaves, want_leaves, base,
    tree_cond_start, cond_feat, cond_thr, cond_nan_left, cond_zero_dir,
    tree_node_start, node_cond, node_left, node_right, tree_leaf_start, leaf_value, leaf_id,
):  # fmt: skip
    """Route every row through every tree: ``margin[r] = base + sum of reached leaf values`` (tree order) and, if
    ``want_leaves``, ``leaves[r, t]`` = the library's id of the reached leaf."""
    n = X.shape[0]
    n_trees = tree_cond_start.shape[0] - 1
    for r in prange(n):
        s = base
        for t in range(n_trees):
            c0 = tree_cond_start[t]
            n0 = tree_node_start[t]
            ref = 0 if tree_node_start[t + 1] > n0 else -1
            while ref >= 0:
                c = c0 + node_cond[n0 + ref]
                if _go_left(X[r, cond_feat[c]], cond_thr[c], cond_nan_left[c], cond_zero_dir[c]):
                    ref = node_left[n0 + ref]
                else:
                    ref = node_right[n0 + ref]
            li = tree_leaf_start[t] + (-1 - ref)
            s += leaf_value[li]
            if want_leaves:
                leaves[r, t] = leaf_id[li]
        margin[r] = s
