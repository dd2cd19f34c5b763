"""LIME (``lime`` 0.2.0.1, LimeTabularExplainer) against exact TreeSHAP (``ml.explain``) on one LightGBM member:
cost per row, local fidelity/additivity, stability across seeds, agreement of the top-5 features.
Figures and discussion: docs/explain.md, "Why exact TreeSHAP and not LIME".

``lime`` is not a project dependency (it is only this comparison): install it aside, e.g.
``pip install --no-deps --target /tmp/lime lime==0.2.0.1`` and run
``PYTHONPATH=/tmp/lime:. .venv/bin/python bench/bench_lime.py``.
"""
import time, json, sys
import numpy as np, lightgbm as lgb
try:
    from lime.lime_tabular import LimeTabularExplainer
except ImportError:
    sys.exit("bench_lime needs lime: pip install --no-deps --target /tmp/lime lime==0.2.0.1; PYTHONPATH=/tmp/lime:.")
from ml.explain import TreeExplainer

rng = np.random.default_rng(7)
n, f = 20_000, 36
X = rng.normal(size=(n, f)); X[rng.random(X.shape) < 0.05] = np.nan
logit = 1.2 * np.nan_to_num(X[:, 0]) - 0.8 * np.nan_to_num(X[:, 1]) + 0.5 * np.nan_to_num(X[:, 2]) * np.nan_to_num(X[:, 3]) - 2
y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
model = lgb.LGBMClassifier(n_estimators=300, num_leaves=63, learning_rate=0.05, verbose=-1, n_jobs=2).fit(X, y)
rows = X[:100]
ex = TreeExplainer.from_model(model)
t = time.perf_counter(); phi = ex.shap_values(rows); shap_s = (time.perf_counter() - t) / len(rows)
margin = model.predict(rows, raw_score=True)
shap_add = float(np.max(np.abs(phi.sum(1) + ex.expected_value - margin)))
Xf = np.nan_to_num(X[:5000])
predict = lambda A: model.predict_proba(A)
def lime_run(seed, k=len(rows[:40])):
    le = LimeTabularExplainer(Xf, mode="classification", discretize_continuous=True, random_state=seed)
    W, err, t0 = [], [], time.perf_counter()
    for r in np.nan_to_num(rows[:k]):
        e = le.explain_instance(r, predict, num_features=f, num_samples=5000)
        w = np.zeros(f)
        for j, v in e.as_map()[1]:
            w[j] = v
        W.append(w)
        err.append(abs(e.intercept[1] + w.sum() - predict(r[None])[0, 1]))  # local model vs the model, prob space
    return np.array(W), np.array(err), (time.perf_counter() - t0) / k
W1, err1, lime_s = lime_run(1)
W2, _, _ = lime_run(2)
top = lambda A: [set(np.argsort(-np.abs(a))[:5]) for a in A]
stab = np.mean([len(a & b) / 5 for a, b in zip(top(W1), top(W2))])
agree = np.mean([len(a & b) / 5 for a, b in zip(top(W1), top(phi[:40]))])
sign_flip = np.mean([(np.sign(W1[i][j]) != np.sign(W2[i][j])) for i in range(len(W1)) for j in np.argsort(-np.abs(W1[i]))[:5]])
print(json.dumps({"rows_shap": len(rows), "rows_lime": len(W1), "shap_ms_per_row": shap_s * 1e3, "lime_ms_per_row": lime_s * 1e3,
                  "shap_additivity_max": shap_add, "lime_local_error_mean": float(err1.mean()), "lime_local_error_max": float(err1.max()),
                  "lime_top5_overlap_between_seeds": float(stab), "lime_top5_sign_flips_between_seeds": float(sign_flip),
                  "lime_vs_shap_top5_overlap": float(agree)}, indent=1))
