"""The synthetic REES46 generator: exact text format, determinism, behaviour, drift, signal and corrupt files."""

from __future__ import annotations

import csv
import io
import re
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from ml.dev.generate import (
    CORRUPTION_KINDS,
    HUGE_FIELD_BYTES,
    REES46_COLUMNS,
    SQL_INJECTION_TEXT,
    GeneratorConfig,
    corrupt_file,
    format_rees46_csv,
    generate_events,
    read_rees46_csv,
    write_daily_files,
)

HEADER = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
# one REES46 data line, as the real file writes it (no quotes, empty fields for nulls)
LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC,(view|cart|remove_from_cart|purchase),[1-9]\d{0,18},\d{19},"
    r"([a-z_]+(\.[a-z_]+)*)?,([^,\"\r\n]*),\d+\.\d\d,[1-9]\d{0,18},"
    r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})?$"
)
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
SMALL = GeneratorConfig(days=28, n_users=600, n_products=400, seed=7)


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    return generate_events(SMALL)


@pytest.fixture(scope="module")
def day_csv(events: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen")
    day = events[events["event_time"].dt.date == date(2019, 10, 5)]
    return write_daily_files(day, out)[0]


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    """Categoricals as plain strings, a fresh index: comparable with a frame read back from a file."""
    out = df.reset_index(drop=True).copy()
    for c in ("event_type", "category_code", "brand", "user_session"):
        out[c] = out[c].astype("str")
    return out


def _rows(path: Path) -> list[list[str]]:
    limit = csv.field_size_limit(2**31 - 1)  # huge_field holds 10 MiB; csv's default limit is 128 KiB
    try:
        return list(csv.reader(io.StringIO(path.read_bytes().decode("utf-8"), newline="")))
    finally:
        csv.field_size_limit(limit)


# --- schema and text format -----------------------------------------------------------------------------------------
def test_frame_has_rees46_columns_dtypes_and_order(events: pd.DataFrame) -> None:
    assert tuple(events.columns) == REES46_COLUMNS
    assert str(events["event_time"].dtype) == "datetime64[us, UTC]"
    for c in ("product_id", "category_id", "user_id"):
        assert events[c].dtype == np.int64
    assert events["price"].dtype == np.float64
    assert events["event_time"].is_monotonic_increasing
    assert (events["event_time"].dt.microsecond == 0).all()
    assert events["event_time"].min() >= pd.Timestamp("2019-10-01", tz="UTC")
    assert events["event_time"].max() < pd.Timestamp("2019-10-29", tz="UTC")
    assert events["category_id"].astype(str).str.len().eq(19).all()
    assert ((events["price"] * 100).round() / 100 == events["price"]).all()
    assert (events["price"] > 0).all()


def test_csv_lines_match_the_real_file_format(day_csv: Path, rees46_sample: Path) -> None:
    ours = day_csv.read_bytes().decode("utf-8").split("\n")
    real = rees46_sample.read_bytes().decode("utf-8").split("\r\n")
    assert ours[0] == HEADER == real[0]
    assert ours[-1] == "" and real[-1] == ""  # every line, the last too, ends with the terminator
    assert len(ours) > 100
    assert [ln for ln in ours[1:-1] if not LINE.match(ln)] == []
    assert [ln for ln in real[1:-1] if not LINE.match(ln)] == []
    sessions = [ln.rsplit(",", 1)[1] for ln in ours[1:-1]]
    assert all(UUID4.match(s) for s in sessions if s)


def test_price_keeps_two_decimals_like_the_real_file() -> None:
    df = pd.DataFrame(
        {
            "event_time": pd.to_datetime(["2019-10-01 00:00:00", "2019-10-01 00:00:01"], utc=True),
            "event_type": ["view", "cart"],
            "product_id": [44600062, 3900821],
            "category_id": [2103807459595387724, 2053013552326770905],
            "category_code": [None, "appliances.environment.water_heater"],
            "brand": ["shiseido", "aqua"],
            "price": [35.79, 33.2],
            "user_id": [541312140, 554748717],
            "user_session": ["72d76fde-8bb3-4e00-8c23-a032dfed738c", None],
        }
    )
    text = format_rees46_csv(df, line_terminator="\r\n").decode()
    assert text == (
        HEADER + "\r\n"
        "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,"
        "72d76fde-8bb3-4e00-8c23-a032dfed738c\r\n"
        "2019-10-01 00:00:01 UTC,cart,3900821,2053013552326770905,appliances.environment.water_heater,aqua,33.20,"
        "554748717,\r\n"
    )


def test_values_needing_quotes_are_quoted_rfc4180(events: pd.DataFrame) -> None:
    df = _plain(events.head(2))
    df.loc[0, "brand"] = 'a,"b"'
    lines = format_rees46_csv(df).decode().split("\n")
    assert ',"a,""b""",' in lines[1]
    assert list(csv.reader(io.StringIO(lines[1])))[0][5] == 'a,"b"'


@pytest.mark.parametrize("rows", [3000, None], ids=["slice", "whole"])  # categoricals expanded / quoted per category
def test_csv_equals_pandas_to_csv(events: pd.DataFrame, rows: int | None) -> None:
    part = events.head(rows) if rows else events
    ref = part.to_csv(index=False, date_format="%Y-%m-%d %H:%M:%S UTC", float_format="%.2f", lineterminator="\n")
    assert format_rees46_csv(part) == ref.encode()


def test_csv_round_trip_gives_the_same_frame(events: pd.DataFrame, tmp_path: Path) -> None:
    paths = write_daily_files(events, tmp_path)
    assert [p.name for p in paths] == [f"events_2019-10-{d:02d}.csv" for d in range(1, 29)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in paths]  # no temp files left
    back = pd.concat([read_rees46_csv(p) for p in paths], ignore_index=True)
    pd.testing.assert_frame_equal(back, _plain(events), check_dtype=True)


def test_parquet_schema_and_round_trip(events: pd.DataFrame, tmp_path: Path) -> None:
    paths = write_daily_files(events, tmp_path, formats=("csv", "parquet"))
    assert [p.suffix for p in paths[:2]] == [".csv", ".parquet"]
    table = pq.read_table(paths[1])
    types = {f.name: str(f.type) for f in table.schema}
    assert list(types) == list(REES46_COLUMNS)
    assert types["event_time"] == "timestamp[us, tz=UTC]"
    assert {types[c] for c in ("product_id", "category_id", "user_id")} == {"int64"}
    assert types["price"] == "double"
    assert {types[c] for c in ("event_type", "category_code", "brand", "user_session")} == {"string"}
    back = table.to_pandas()
    first_day = _plain(events[events["event_time"] < pd.Timestamp("2019-10-02", tz="UTC")])
    pd.testing.assert_frame_equal(back, first_day, check_dtype=False)
    assert back["category_code"].isna().sum() == first_day["category_code"].isna().sum() > 0


def test_read_rees46_csv_accepts_the_real_sample(rees46_sample: Path) -> None:
    real = read_rees46_csv(rees46_sample)  # CRLF line ends, as published
    assert len(real) == 17_434
    assert real["category_code"].isna().sum() == 5_746 and real["brand"].isna().sum() == 2_477
    assert real["user_session"].notna().all()
    assert real["event_time"].min() == pd.Timestamp("2019-10-01", tz="UTC")
    assert format_rees46_csv(real, line_terminator="\r\n") == rees46_sample.read_bytes()  # byte-identical


def test_write_to_an_fsspec_url(events: pd.DataFrame) -> None:
    import fsspec

    day = events[events["event_time"] < pd.Timestamp("2019-10-02", tz="UTC")]
    urls = write_daily_files(day, "memory://gen-test/landing", formats=("csv", "parquet"))
    assert [str(u) for u in urls] == ["memory://gen-test/landing/events_2019-10-01.csv",
                                      "memory://gen-test/landing/events_2019-10-01.parquet"]
    fs = fsspec.filesystem("memory")
    assert sorted(fs.ls("/gen-test/landing", detail=False)) == ["/gen-test/landing/events_2019-10-01.csv",
                                                                "/gen-test/landing/events_2019-10-01.parquet"]
    assert fs.cat("/gen-test/landing/events_2019-10-01.csv") == format_rees46_csv(day)
    fs.rm("/gen-test", recursive=True)


def test_write_rejects_unknown_format(events: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown file format"):
        write_daily_files(events.head(5), tmp_path, formats=("json",))


@pytest.mark.parametrize(
    "kwargs", [{"days": 0}, {"n_users": 0}, {"n_products": 10}], ids=["days", "users", "products"]
)
def test_config_rejects_impossible_sizes(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        GeneratorConfig(**kwargs)


# --- determinism ----------------------------------------------------------------------------------------------------
def test_same_seed_same_bytes_different_seed_different() -> None:
    cfg = GeneratorConfig(days=5, n_users=200, n_products=200, seed=11)
    a = format_rees46_csv(generate_events(cfg))
    b = format_rees46_csv(generate_events(GeneratorConfig(days=5, n_users=200, n_products=200, seed=11)))
    c = format_rees46_csv(generate_events(GeneratorConfig(days=5, n_users=200, n_products=200, seed=12)))
    assert a == b
    assert a != c


# --- behaviour ------------------------------------------------------------------------------------------------------
def test_funnel_order_within_sessions(events: pd.DataFrame) -> None:
    df = events.dropna(subset=["user_session"]).reset_index(drop=True)
    df["seq"] = np.arange(len(df))  # the frame is time-sorted with the in-session order kept on ties
    et = df["event_type"].astype("str")
    key = ["user_session", "product_id"]
    first = {t: df[et == t].groupby(key, observed=True)["seq"].min() for t in ("view", "cart", "remove_from_cart")}
    first["purchase"] = df[et == "purchase"].groupby(key, observed=True)["seq"].min()
    last_cart = df[et == "cart"].groupby(key, observed=True)["seq"].min()
    # every cart, remove and purchase has an earlier view / cart of the same product in the same session
    for later, earlier in (("cart", "view"), ("remove_from_cart", "cart"), ("purchase", "cart")):
        j = first[later].to_frame("later").join(first[earlier].rename("earlier"), how="left")
        assert j["earlier"].notna().all(), f"{later} without {earlier}"
        assert (j["earlier"] < j["later"]).all(), f"{later} before {earlier}"
    assert len(last_cart) > 0
    # a session belongs to one user
    assert (df.groupby("user_session", observed=True)["user_id"].nunique() == 1).all()


def test_event_type_rates_are_plausible(events: pd.DataFrame) -> None:
    share = events["event_type"].value_counts(normalize=True)
    assert 0.85 <= share["view"] <= 0.97
    assert 0.01 <= share["cart"] <= 0.10
    assert 0.003 <= share["remove_from_cart"] < share["cart"]
    assert 0.005 <= share["purchase"] < share["cart"]


def test_null_rates_match_the_real_sample(events: pd.DataFrame, rees46_sample: Path) -> None:
    real = pd.read_csv(rees46_sample, dtype=str, keep_default_na=False)
    for col, tol in (("category_code", 0.02), ("brand", 0.02)):
        assert abs(events[col].isna().mean() - (real[col] == "").mean()) < tol, col
    assert events["user_session"].isna().mean() < 0.001
    # calibrated on the run's own event counts: on target, not just near it
    assert events["category_code"].isna().mean() == pytest.approx(SMALL.null_category_code_rate, abs=0.003)
    assert events["brand"].isna().mean() == pytest.approx(SMALL.null_brand_rate, abs=0.003)


def test_weekend_and_evening_effects(events: pd.DataFrame) -> None:
    t = events["event_time"]
    per_day = t.dt.floor("D").value_counts()
    weekend = per_day[per_day.index.day_of_week >= 5].mean()
    weekday = per_day[per_day.index.day_of_week < 5].mean()
    assert weekend > 1.15 * weekday
    per_hour = t.dt.hour.value_counts()
    assert per_hour[[17, 18, 19, 20]].mean() > 1.3 * per_hour[[8, 9, 10, 11]].mean()
    assert per_hour[[8, 9, 10, 11]].mean() > 2 * per_hour[[1, 2, 3, 4]].mean()


def test_category_specific_sessions(events: pd.DataFrame) -> None:
    df = events.dropna(subset=["user_session"])
    top = df["category_code"].astype("str").str.split(".").str[0]
    group = top.map({"electronics": "electronics", "apparel": "fashion", "appliances": "home", "furniture": "home"})
    s = df.assign(group=group).groupby("user_session", observed=True).agg(
        group=("group", "first"),  # first non-empty: the session's (usually focus) category
        products=("product_id", "nunique"),
        seconds=("event_time", lambda x: (x.max() - x.min()).total_seconds()),
        views_per_product=("product_id", lambda x: len(x) / x.nunique()),
    )
    by = s.groupby("group")[["products", "seconds", "views_per_product"]].mean()
    assert by.loc["fashion", "products"] > 1.2 * by.loc["electronics", "products"]  # fashion: more products
    assert by.loc["electronics", "seconds"] > 2 * by.loc["home", "seconds"]  # electronics: long research
    assert by.loc["electronics", "views_per_product"] > by.loc["home", "views_per_product"]


def test_category_tree_ids_and_brands(events: pd.DataFrame) -> None:
    codes = events["category_code"].dropna().astype("str")
    assert codes.str.match(r"^[a-z_]+(\.[a-z_]+)+$").all()
    assert {"electronics.smartphone", "computers.notebook", "appliances.kitchen.refrigerators"} <= set(codes)
    # a category_id names one category_code (or none), a product one category id
    per_cat = events.dropna(subset=["category_code"]).groupby("category_id")["category_code"].nunique()
    assert (per_cat == 1).all()
    assert (events.groupby("product_id")["category_id"].nunique() == 1).all()
    phones = events[events["category_code"] == "electronics.smartphone"]["brand"].dropna().astype("str")
    assert set(phones) <= {"samsung", "apple", "xiaomi", "huawei", "oppo", "nokia", "meizu", "honor"}


def _later_purchase_rates(df: pd.DataFrame, as_of: pd.Timestamp) -> pd.Series:
    """For pairs active in the 14 days before as_of: the share purchased in the 7 days after, by pair history."""
    et = df["event_type"].astype("str")
    past = df[(df["event_time"] < as_of) & (df["event_time"] >= as_of - pd.Timedelta(days=14))]
    pet = et[past.index]
    hist = past.assign(cart=pet == "cart", rm=pet == "remove_from_cart").groupby(["user_id", "product_id"])[
        ["cart", "rm"]
    ].any()
    fut = df[(df["event_time"] >= as_of) & (df["event_time"] < as_of + pd.Timedelta(days=7)) & (et == "purchase")]
    bought = set(zip(fut["user_id"], fut["product_id"], strict=True))
    hist["y"] = [k in bought for k in hist.index]
    kind = np.where(hist["rm"], "removed", np.where(hist["cart"], "carted", "viewed"))
    return hist.groupby(kind)["y"].mean()


def test_signal_carts_predict_later_purchases(events: pd.DataFrame) -> None:
    rates = pd.concat([_later_purchase_rates(events, pd.Timestamp(d, tz="UTC")) for d in
                       ("2019-10-15", "2019-10-22")], axis=1).mean(axis=1)
    assert rates["carted"] > 4 * rates["viewed"]
    assert rates["removed"] < rates["carted"]
    assert rates["viewed"] > 0


def test_some_purchases_follow_a_cart_on_a_later_day(events: pd.DataFrame) -> None:
    et = events["event_type"].astype("str")
    day = events["event_time"].dt.floor("D")
    first_cart = events[et == "cart"].assign(day=day).groupby(["user_id", "product_id"])["day"].min()
    buys = events[et == "purchase"].assign(day=day).groupby(["user_id", "product_id"])["day"].min()
    j = buys.to_frame("buy").join(first_cart.rename("cart"), how="inner")
    later = (j["buy"] - j["cart"]).dt.days
    assert (later >= 1).mean() > 0.2
    assert (later[later >= 1] <= 7).mean() > 0.8


def test_user_history_carries_propensity(events: pd.DataFrame) -> None:
    """Users who bought in the first half buy more per view in the second half (a latent, stable propensity)."""
    et = events["event_type"].astype("str")
    mid = pd.Timestamp("2019-10-15", tz="UTC")
    first, second = events["event_time"] < mid, events["event_time"] >= mid
    buyers = set(events[first & (et == "purchase")]["user_id"])
    s2 = events[second].assign(buy=(et[second] == "purchase"), view=(et[second] == "view"))
    per_user = s2.groupby("user_id")[["buy", "view"]].sum()
    is_buyer = per_user.index.isin(list(buyers))
    rate_b = per_user[is_buyer]["buy"].sum() / per_user[is_buyer]["view"].sum()
    rate_n = per_user[~is_buyer]["buy"].sum() / per_user[~is_buyer]["view"].sum()
    assert rate_b > 1.5 * rate_n


# --- drift ----------------------------------------------------------------------------------------------------------
def test_drift_changes_prices_mix_and_conversion() -> None:
    base = GeneratorConfig(days=28, n_users=800, n_products=400, seed=3)
    drifted = GeneratorConfig(days=28, n_users=800, n_products=400, seed=3, drift_from=date(2019, 10, 15))
    a, b = generate_events(base), generate_events(drifted)
    cut = pd.Timestamp("2019-10-15", tz="UTC")
    # before drift_from the same events happen (which products lack a code or brand is calibrated per run)
    same = ["event_time", "event_type", "product_id", "price", "user_id", "user_session"]
    pd.testing.assert_frame_equal(_plain(a[a["event_time"] < cut])[same],
                                  _plain(b[b["event_time"] < cut])[same])
    after_a, after_b = a[a["event_time"] >= cut], b[b["event_time"] >= cut]
    # prices: the same products cost 20 % more
    med_a = after_a.groupby("product_id")["price"].median()
    med_b = after_b.groupby("product_id")["price"].median()
    ratio = (med_b / med_a).dropna()
    assert 1.15 < ratio.median() < 1.25
    # category mix moves toward apparel/furniture/kids/sport
    def drift_share(df: pd.DataFrame) -> float:
        top = df["category_code"].dropna().astype("str").str.split(".").str[0]
        return float(top.isin(["apparel", "furniture", "kids", "sport"]).mean())

    assert drift_share(after_b) > drift_share(after_a) + 0.05
    # conversion: fewer purchases per view
    def conversion(df: pd.DataFrame) -> float:
        vc = df["event_type"].value_counts()
        return vc["purchase"] / vc["view"]

    assert conversion(after_b) < 0.8 * conversion(after_a)


# --- corrupt files --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clean_csv(events: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_daily_files(events[events["event_time"] < pd.Timestamp("2019-10-02", tz="UTC")],
                             tmp_path_factory.mktemp("clean"))[0]


def test_corruption_kinds_are_the_agreed_names() -> None:
    assert CORRUPTION_KINDS == (
        "missing_column", "extra_column", "wrong_type", "negative_price", "unknown_event_type",
        "unparseable_timestamp", "future_timestamp", "empty_file", "header_only", "truncated_last_line",
        "wrong_delimiter", "non_utf8", "huge_field", "sql_injection_brand", "duplicated_rows",
    )  # fmt: skip


def test_unknown_kind_is_refused(clean_csv: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown corruption kind"):
        corrupt_file(clean_csv, tmp_path / "x.csv", "cosmic_rays")


@pytest.mark.parametrize("kind", CORRUPTION_KINDS)
def test_each_corruption_has_its_defect(kind: str, clean_csv: Path, tmp_path: Path) -> None:
    dst = corrupt_file(clean_csv, tmp_path / f"{kind}.csv", kind, seed=1)
    assert dst == tmp_path / f"{kind}.csv"
    assert [p.name for p in tmp_path.iterdir()] == [dst.name]  # atomic: no temp file left
    raw = dst.read_bytes()
    clean = _rows(clean_csv)
    n = len(clean) - 1
    if kind == "empty_file":
        assert raw == b""
        return
    if kind == "header_only":
        assert raw == (HEADER + "\n").encode()
        return
    if kind == "non_utf8":
        with pytest.raises(UnicodeDecodeError):
            raw.decode("utf-8")
        assert b"caf\xe9" in raw
        return
    if kind == "truncated_last_line":
        assert not raw.endswith(b"\n")
        lines = raw.decode().split("\n")
        assert len(lines) == n + 1 and len(lines[-1].split(",")) < 9
        assert clean_csv.read_bytes().startswith(raw)
        return
    if kind == "wrong_delimiter":
        text = raw.decode()
        assert text.splitlines()[0] == HEADER.replace(",", ";")
        assert "," not in text
        return
    rows = _rows(dst)
    header, body = rows[0], rows[1:]
    if kind == "missing_column":
        assert len(header) == 8 and set(header) < set(REES46_COLUMNS)
        assert {len(r) for r in body} == {8} and len(body) == n
    elif kind == "extra_column":
        assert header == list(REES46_COLUMNS) + ["coupon_code"] and {len(r) for r in body} == {10}
    elif kind == "duplicated_rows":
        assert header == list(REES46_COLUMNS)
        dup_ratio = pd.DataFrame(body).duplicated().sum() / len(body)
        assert dup_ratio > 0.01
        assert pd.DataFrame(body).drop_duplicates().shape[0] == n
    else:
        assert header == list(REES46_COLUMNS) and len(body) == n and {len(r) for r in body} == {9}
        df = pd.DataFrame(body, columns=header)
        changed = (df != pd.DataFrame(clean[1:], columns=header)).any(axis=1)
        assert 1 <= changed.sum() <= max(1, n // 50)
        bad = df[changed]
        if kind == "wrong_type":
            numeric = bad[["product_id", "category_id", "price", "user_id"]]
            assert (~numeric.apply(lambda c: c.str.fullmatch(r"-?\d+(\.\d+)?")).all(axis=1)).all()
        elif kind == "negative_price":
            assert (bad["price"].astype(float) < 0).all()
        elif kind == "unknown_event_type":
            assert set(bad["event_type"]) == {"wishlist"}
        elif kind == "unparseable_timestamp":
            assert pd.to_datetime(bad["event_time"], format="%Y-%m-%d %H:%M:%S UTC", errors="coerce").isna().all()
        elif kind == "future_timestamp":
            parsed = pd.to_datetime(bad["event_time"], format="%Y-%m-%d %H:%M:%S UTC", utc=True)
            assert (parsed > pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=365)).all()
        elif kind == "huge_field":
            assert changed.sum() == 1 and len(bad["brand"].iloc[0]) == HUGE_FIELD_BYTES
        elif kind == "sql_injection_brand":
            assert set(bad["brand"]) == {SQL_INJECTION_TEXT}
            # still a valid REES46 file: every line has the agreed format
            assert all(LINE.match(ln) for ln in raw.decode().split("\n")[1:-1])
        else:  # pragma: no cover
            raise AssertionError(kind)


def test_corruption_keeps_crlf_and_is_seeded(rees46_sample: Path, tmp_path: Path) -> None:
    a = corrupt_file(rees46_sample, tmp_path / "a.csv", "negative_price", seed=5).read_bytes()
    b = corrupt_file(rees46_sample, tmp_path / "b.csv", "negative_price", seed=5).read_bytes()
    c = corrupt_file(rees46_sample, tmp_path / "c.csv", "negative_price", seed=6).read_bytes()
    assert a == b != c
    assert a.count(b"\r\n") == rees46_sample.read_bytes().count(b"\r\n")
    assert len(a) - len(rees46_sample.read_bytes()) == 175  # ceil(1 % of 17,434) rows got a leading "-"


# --- CLI ------------------------------------------------------------------------------------------------------------
def test_cli_generate_writes_daily_files(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ml.cli import app

    res = CliRunner().invoke(app, ["generate", "--days", "3", "--users", "80", "--products", "100", "--seed", "4",
                                   "--out", str(tmp_path), "--format", "both", "--drift-from", "2019-10-02"])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"events_2019-10-0{d}.{ext}" for d in (1, 2, 3) for ext in ("csv", "parquet")]
    out = [ln for ln in res.stdout.splitlines() if ln.startswith(str(tmp_path)) or ln.startswith("wrote")]
    first = read_rees46_csv(tmp_path / "events_2019-10-01.csv")
    assert out[0] == f"{tmp_path / 'events_2019-10-01.csv'}\t{len(first):,} rows"
    n_rows = sum(len(read_rees46_csv(tmp_path / f"events_2019-10-0{d}.csv")) for d in (1, 2, 3))
    assert len(out) == 7 and out[-1].startswith(f"wrote 6 file(s), {n_rows:,} events (")
    bad = CliRunner().invoke(app, ["generate", "--format", "xml", "--out", str(tmp_path)])
    assert bad.exit_code != 0
