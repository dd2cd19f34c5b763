"""Benchmark: the lookup API under a bounded loopback load, against a bare FastAPI route and raw Redis GETs.

Starts a private Redis under ``--state-dir`` and publishes a synthetic version into it (no Postgres needed), then, for
1 and 2 uvicorn workers, runs the same closed-loop load (``--connections`` keep-alive connections, ``--requests``
requests or ``--seconds``, whichever ends first) against:

- ``GET /v1/users/{id}/recommendations`` and ``GET /v1/users/{id}/products/{pid}`` of ``propensity api`` (auth and
  rate limiting on, as deployed; the limit is set high enough not to trigger);
- a bare FastAPI route with no Redis call, under the same uvicorn settings (the framework's ceiling);
- raw Redis ``GET`` of a small key over the same socket the API uses (the store's ceiling).

The load generator is a small asyncio (uvloop) client with pre-encoded requests, running on the same 2 cores as the
servers: every figure includes that competition, which is why ratios matter more than absolute numbers. Each row also
gives the CPU time per request of the server processes, Redis and the load generator during the scenario (psutil),
which tells where a request's cost goes. ``--baseline-ref main`` also runs the API of that git ref (a ``git archive``
of it, on the same Redis and load) as a before/after baseline. Servers bind 127.0.0.1 only and are stopped at the
end. Run: ``.venv/bin/python bench/bench_api.py --baseline-ref main`` (about five minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._report import md_table, write_section  # noqa: E402

PREFIX = "benchapi"


def create_bare_app():  # noqa: ANN201 - FastAPI; imported lazily by uvicorn --factory
    """A FastAPI app with one route that touches nothing: the framework + server ceiling."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/bare/{user_id}")
    async def bare(user_id: int) -> dict[str, int]:
        return {"user_id": user_id}

    return app


# --- data ---------------------------------------------------------------------------------------------------------------
def publish_synthetic(redis_url: str, users: int, per_user: int, seed: int = 3) -> list[tuple[int, int]]:
    """Write one complete version (zset + hash per user, reasons, meta) and flip the pointer to it. Returns
    (user_id, a hot product_id) per user."""
    import redis

    from ml.keyspace import KeySpace
    from ml.observe import Progress
    from ml.publish import _Heartbeat, _write_version

    class _NoLock:
        def reacquire(self) -> None:
            pass

    rng = random.Random(seed)
    rows, pairs = [], []
    for u in range(users):
        uid = 700_000_000 + u
        pids = rng.sample(range(1_000_000, 3_000_000), per_user)
        probs = sorted((rng.random() for _ in pids), reverse=True)
        codes = ["REPEAT_VIEWS\x1fPRICE_DROP" if k % 3 == 0 else "" for k in range(per_user)]
        texts = [f"viewed it {k + 1} times in the last 7 days\x1fprice dropped 5% since they first viewed it"
                 if k % 3 == 0 else "" for k in range(per_user)]
        rows.append((uid, pids, probs, ["hot"] * per_user, codes, texts))
        pairs.append((uid, pids[0]))
    client = redis.Redis.from_url(redis_url)
    ks = KeySpace(PREFIX)
    for key in client.scan_iter(match=f"{PREFIX}:*"):
        client.delete(key)
    with _Heartbeat(_NoLock(), 60) as hb:
        _write_version(iter(rows), client, ks, 1, 20_000, hb, Progress("bench", every_s=1e9))
    client.hset(ks.meta(1), mapping={"version": 1, "score_date": "2019-12-01", "model_version": "bench",
                                     "published_at": "2019-12-02T00:00:00+00:00", "previous": ""})
    client.zadd(ks.versions(), {1: 1})
    client.set(ks.current(), 1)
    client.set(f"{PREFIX}:raw", json.dumps({"user_id": 1, "probability": 0.5}))
    client.close()
    return pairs


# --- load generator -----------------------------------------------------------------------------------------------------
@dataclass
class LoadResult:
    requests: int
    seconds: float
    errors: int
    latencies: list[float]
    cpu_s: dict[str, float]  # CPU seconds over the measured run: "load generator" and each probe's name

    def cpu_us(self, name: str) -> float:
        """CPU microseconds per request spent by ``name`` (a process or process group)."""
        return self.cpu_s.get(name, 0.0) / max(1, self.requests) * 1e6

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        return statistics.quantiles(self.latencies, n=1000)[int(q * 1000) - 1] * 1000 if self.latencies else 0.0


async def _open(target: tuple) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if target[0] == "unix":
        return await asyncio.open_unix_connection(target[1])
    return await asyncio.open_connection(target[1], target[2])


async def _http_worker(target: tuple, requests: list[bytes], budget: list[int], deadline: float,
                       lat: list[float], errors: list[int]) -> None:
    reader, writer = await _open(target)
    i = random.randrange(len(requests))
    try:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            i = (i + 1) % len(requests)
            t = time.perf_counter()
            writer.write(requests[i])
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            lat.append(time.perf_counter() - t)
            if head[9:12] != b"200":
                errors[0] += 1
    finally:
        writer.close()


async def _redis_worker(target: tuple, command: bytes, budget: list[int], deadline: float,
                        lat: list[float], errors: list[int]) -> None:
    reader, writer = await _open(target)
    try:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            t = time.perf_counter()
            writer.write(command)
            head = await reader.readuntil(b"\r\n")
            if head[:1] == b"$" and head[1:3] != b"-1":
                await reader.readexactly(int(head[1:-2]) + 2)
            else:
                errors[0] += 1
            lat.append(time.perf_counter() - t)
    finally:
        writer.close()


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """CPU time (user + system) of process ``pid``, with its descendants when ``children`` (uvicorn's workers)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *(proc.children(recursive=True) if children else [])]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def run_load(kind: str, target: tuple, payloads: list[bytes], connections: int, n_requests: int,
             seconds: float, warmup: int = 300, probes: dict[str, Any] | None = None) -> LoadResult:
    """Closed-loop load: ``connections`` concurrent keep-alive connections, each sending the next request as soon as
    the previous answer is read, until ``n_requests`` were sent or ``seconds`` passed. ``probes`` (name -> function
    returning CPU seconds so far) are read around the measured run, after the warm-up, as is this process's CPU
    (the load generator's)."""
    import uvloop

    async def go(n: int, secs: float) -> LoadResult:
        lat: list[float] = []
        errors = [0]
        budget = [n]
        deadline = time.perf_counter() + secs
        t = time.perf_counter()
        if kind == "http":
            tasks = [_http_worker(target, payloads, budget, deadline, lat, errors) for _ in range(connections)]
        else:
            tasks = [_redis_worker(target, payloads[0], budget, deadline, lat, errors) for _ in range(connections)]
        await asyncio.gather(*tasks)
        return LoadResult(len(lat), time.perf_counter() - t, errors[0], lat, {})

    uvloop.run(go(warmup, 10.0))
    probes = probes or {}
    before = {name: probe() for name, probe in probes.items()}
    own = time.process_time()
    result = uvloop.run(go(n_requests, seconds))
    result.cpu_s["load generator"] = time.process_time() - own
    for name, probe in probes.items():
        result.cpu_s[name] = probe() - before[name]
    return result


def http_requests(paths: list[str], headers: dict[str, str]) -> list[bytes]:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return [f"GET {p} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode() for p in paths]


# --- servers ------------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cmd: list[str], env: dict[str, str], port: int, ready_path: str,
                 cwd: Path = ROOT) -> subprocess.Popen:
    """Start a server in its own process group and wait until ``ready_path`` answers (30 s at most)."""
    import httpx

    proc = subprocess.Popen(cmd, env=env, cwd=cwd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd} exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=1).status_code < 500:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"{cmd} did not become ready on port {port}")


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the process group this script started (uvicorn's parent and its workers)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def cpu_breakdown(redis_url: str, key: str, digest: str, users: list[int], n: int = 2_000,
                  concurrency: int = 32, repeat: int = 3) -> list[list[object]]:
    """CPU time per request inside one process (raw ASGI calls, no HTTP, no load generator), median of ``repeat``:
    the bare route, the API with its two Redis reads replaced by their cached results, and the full API. CPU time
    is much less sensitive to other load than wall-clock rates."""
    import uvloop

    import ml.api as api
    from ml.settings import Settings

    settings = Settings(redis_url=redis_url, redis_prefix=PREFIX, api_key_hashes=[digest],
                        api_rate_limit="100000000/minute")
    headers = [(b"host", b"bench"), (b"authorization", f"Bearer {key}".encode())]

    async def measure(app, path_of) -> float:  # noqa: ANN001
        async def call(path: str) -> None:
            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                     "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                     "root_path": "", "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
            sent: list[dict] = []

            async def receive() -> dict:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict) -> None:
                sent.append(message)

            await app(scope, receive, send)
            if sent[0]["status"] != 200:
                raise RuntimeError(f"{path}: {sent}")

        async with app.router.lifespan_context(app):
            for i in range(30):
                await call(path_of(i))
            todo = iter(range(n))

            async def worker() -> None:
                for i in todo:
                    await call(path_of(i))

            c0 = time.process_time()
            await asyncio.gather(*[worker() for _ in range(concurrency)])
            return (time.process_time() - c0) / n * 1e6

    real = api.ScoreReader.recommendations
    cached: dict[str, Any] = {}

    async def without_redis(self, user_id: int, limit: int):  # noqa: ANN001, ANN202 - the reads, answered from memory
        if "hit" not in cached:
            cached["hit"] = await real(self, user_id, limit)
        return cached["hit"]

    lookup = lambda i: f"/v1/users/{users[i % len(users)]}/recommendations"  # noqa: E731
    variants = {
        "bare FastAPI route": (create_bare_app, lambda i: f"/bare/{i}"),
        "API, Redis reads stubbed (auth, limiter, metrics, JSON)": (lambda: api.create_app(settings), lookup),
        "API, full: lookups multiplexed over one hiredis connection (ml.api_redis) - as deployed": (
            lambda: api.create_app(settings), lookup),
        "API, full: the same reads through a redis-py asyncio pipeline": (
            lambda: api.create_app(settings), lookup),
    }
    supports = api.FastRedis.supports
    samples: dict[str, list[float]] = {}
    for _ in range(repeat):
        for name, (factory, path_of) in variants.items():
            api.ScoreReader.recommendations = without_redis if "stubbed" in name else real
            api.FastRedis.supports = staticmethod(lambda url, cluster: False) if "redis-py" in name else supports
            cached.clear()
            try:
                samples.setdefault(name, []).append(uvloop.run(measure(factory(), path_of)))
            finally:
                api.ScoreReader.recommendations = real
                api.FastRedis.supports = supports
    return [[name, statistics.median(v)] for name, v in samples.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=20_000, help="users in the published version (default 20,000)")
    ap.add_argument("--per-user", type=int, default=20, help="hot pairs per user (default 20)")
    ap.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections (default 32)")
    ap.add_argument("--requests", type=int, default=20_000, help="requests per scenario (default 20,000)")
    ap.add_argument("--seconds", type=float, default=20.0, help="time cap per scenario, seconds (default 20)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="uvicorn worker counts (default 1 2)")
    ap.add_argument("--state-dir", type=Path, default=ROOT / ".local" / "bench-api", help="private Redis location")
    ap.add_argument("--no-write", action="store_true", help="print the table, do not touch docs/BENCHMARKS.md")
    ap.add_argument("--baseline-ref", default=None,
                    help="also run the API of this git ref (e.g. main) under the same load: a before/after baseline")
    args = ap.parse_args()

    from ml.api_auth import new_api_key
    from ml.dev.services import redis_uri, start_redis, stop_redis

    load_start = os.getloadavg()[0]
    state = args.state_dir.absolute()
    redis_was_up = redis_uri(state) is not None
    redis_url = start_redis(state)
    procs: list[subprocess.Popen] = []
    rows: list[list[object]] = []
    baseline_dir = None
    try:
        import redis

        redis_pid = int(redis.Redis.from_url(redis_url).info("server")["process_id"])
        pairs = publish_synthetic(redis_url, args.users, args.per_user)
        rng = random.Random(5)
        sample = [pairs[rng.randrange(len(pairs))] for _ in range(2_000)]
        key, digest = new_api_key()
        auth = {"Authorization": f"Bearer {key}"}
        env = {**os.environ, "PROPENSITY_REDIS_URL": redis_url, "PROPENSITY_REDIS_PREFIX": PREFIX,
               "PROPENSITY_API_KEY_HASHES": json.dumps([digest]), "PROPENSITY_API_RATE_LIMIT": "100000000/minute",
               "PROPENSITY_STATE_DIR": str(state), "PROPENSITY_LOG_LEVEL": "WARNING"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        py = sys.executable

        breakdown = cpu_breakdown(redis_url, key, digest, [uid for uid, _ in sample])
        print(breakdown, flush=True)

        # raw Redis GET over the API's own socket
        u = urlsplit(redis_url)
        target = ("unix", u.path) if u.scheme == "unix" else ("tcp", u.hostname, u.port or 6379)
        raw_key = f"{PREFIX}:raw".encode()
        get = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(raw_key), raw_key)
        raw = run_load("redis", target, [get], args.connections, args.requests * 2, args.seconds,
                       probes={"Redis": lambda: cpu_seconds(redis_pid)})
        rows.append(["raw Redis GET (same socket as the API)", "-", raw.requests, raw.rps, raw.pct(0.5),
                     raw.pct(0.99), raw.errors, "-", raw.cpu_us("Redis"), raw.cpu_us("load generator")])
        print(rows[-1], flush=True)

        apis = [("API", ROOT, env)]
        if args.baseline_ref:  # the same API at another commit, from a `git archive` of it
            import tempfile

            baseline_dir = Path(tempfile.mkdtemp(prefix="bench-api-baseline-"))
            archive = subprocess.run(["git", "archive", args.baseline_ref], cwd=ROOT, check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(baseline_dir)], input=archive, check=True)
            apis.append((f"API at {args.baseline_ref}", baseline_dir, {**env, "PYTHONPATH": str(baseline_dir)}))

        for workers in args.workers:
            port = free_port()
            bare = start_server([py, "-m", "uvicorn", "bench.bench_api:create_bare_app", "--factory", "--host",
                                 "127.0.0.1", "--port", str(port), "--workers", str(workers), "--no-access-log",
                                 "--log-level", "warning"], env, port, "/bare/1")
            procs.append(bare)
            probes = {"server": lambda: cpu_seconds(bare.pid, children=True), "Redis": lambda: cpu_seconds(redis_pid)}
            res = run_load("http", ("tcp", "127.0.0.1", port),
                           http_requests([f"/bare/{uid}" for uid, _ in sample], {}), args.connections,
                           args.requests, args.seconds, probes=probes)
            stop_server(bare)
            rows.append(["bare FastAPI route, no Redis", workers, res.requests, res.rps, res.pct(0.5),
                         res.pct(0.99), res.errors, *(res.cpu_us(k) for k in ("server", "Redis", "load generator"))])
            print(rows[-1], flush=True)

            for label, root, api_env in apis:
                port = free_port()
                api = start_server([py, "-m", "ml", "--log-level", "WARNING", "api", "--host", "127.0.0.1", "--port",
                                    str(port), "--workers", str(workers), "--no-access-log"], api_env, port,
                                   "/healthz", cwd=root)
                procs.append(api)
                probes = {"server": lambda: cpu_seconds(api.pid, children=True),  # noqa: B023 - read in this loop
                          "Redis": lambda: cpu_seconds(redis_pid)}
                for route, paths in [
                    ("/v1/users/{id}/recommendations", [f"/v1/users/{uid}/recommendations" for uid, _ in sample]),
                    ("/v1/users/{id}/products/{pid}", [f"/v1/users/{uid}/products/{pid}" for uid, pid in sample]),
                ]:
                    res = run_load("http", ("tcp", "127.0.0.1", port), http_requests(paths, auth),
                                   args.connections, args.requests, args.seconds, probes=probes)
                    rows.append([f"{label} {route}", workers, res.requests, res.rps, res.pct(0.5), res.pct(0.99),
                                 res.errors, *(res.cpu_us(k) for k in ("server", "Redis", "load generator"))])
                    print(rows[-1], flush=True)
                import httpx

                metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                hits = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                           if line.startswith("propensity_api_lookups_total") and 'result="hit"' in line)
                print(f"{label}, workers={workers}: /metrics counts {hits:,.0f} hits across workers", flush=True)
                stop_server(api)
    finally:
        for p in procs:
            stop_server(p)
        if not redis_was_up:
            stop_redis(state)
        if baseline_dir is not None:
            import shutil

            shutil.rmtree(baseline_dir, ignore_errors=True)

    table = md_table(["target", "workers", "requests", "req/s", "p50 ms", "p99 ms", "non-2xx",
                      "CPU us/req: server", "Redis", "load generator"], rows)
    by = {(r[0], r[1]): r for r in rows}
    recs, pair_route = "/v1/users/{id}/recommendations", "/v1/users/{id}/products/{pid}"
    lines = []
    for w in args.workers:
        api, bare = by.get((f"API {recs}", w)), by.get(("bare FastAPI route, no Redis", w))
        if api and bare:
            lines.append(f"{w} worker(s): recommendations at {api[3] / bare[3]:.0%} of the bare route's rate, "
                         f"{api[3] / raw.rps:.0%} of raw Redis GET")
        before = by.get((f"API at {args.baseline_ref} {recs}", w)) if args.baseline_ref else None
        if api and before:
            after_pair, before_pair = by.get((f"API {pair_route}", w)), by.get((f"API at {args.baseline_ref} "
                                                                                f"{pair_route}", w))
            lines.append(f"{w} worker(s), against the API at `{args.baseline_ref}` in this run: recommendations "
                         f"{api[3] / before[3]:.2f}x the rate (p99 {before[5]:.1f} -> {api[5]:.1f} ms, server CPU "
                         f"{before[7]:.0f} -> {api[7]:.0f} us/request)"
                         + (f", pair lookups {after_pair[3] / before_pair[3]:.2f}x (p99 {before_pair[5]:.1f} -> "
                            f"{after_pair[5]:.1f} ms)" if after_pair and before_pair else ""))
    two = by.get((f"API {recs}", 2))
    if two:
        met = two[3] >= 6000 and two[5] <= 15
        lines.append(f"issue 17 goal, 2 workers: >= 6,000 req/s with p99 <= 15 ms on recommendations: "
                     f"{two[3]:,.0f} req/s, p99 {two[5]:.1f} ms - {'met' if met else 'NOT met'} in this run "
                     f"(load average above)")
    inproc = dict((str(k), float(v)) for k, v in breakdown)
    bare_us = inproc.get("bare FastAPI route", 0.0)
    stub_us = next((v for k, v in inproc.items() if "stubbed" in k), 0.0)
    full_us = next((v for k, v in inproc.items() if "as deployed" in k), 0.0)
    remaining = ""
    if two:
        remaining = (
            f"What one recommendations request costs now (2 workers, CPU per request from the table): the API "
            f"workers {two[7]:.0f} us, Redis {two[8]:.0f} us, the load generator {two[9]:.0f} us. Inside a worker "
            f"(the in-process table): FastAPI/Starlette's own routing, middleware and response {bare_us:.0f} us "
            f"(the bare route); our route around the read (parameters, auth, rate limit, metrics, orjson) "
            f"{stub_us - bare_us:.0f} us; the read itself (key names, hiredis packing 3 commands and parsing their "
            f"replies (81 values), suspending and resuming the request while Redis answers, the shared socket's "
            f"syscalls, building 20 items from cached payloads) {full_us - stub_us:.0f} us; the rest of the workers' share "
            f"is uvicorn's HTTP parsing and writing, the kernel's loopback TCP, and for 2 workers Prometheus' "
            f"multiprocess files. Redis' part is the ZREVRANGE WITHSCORES and HGETALL of 20 entries each (a raw GET "
            f"costs it {raw.cpu_us('Redis'):.1f} us). A further cut of both would be on the publish side: one "
            f"pre-encoded value per user and version, read with one GET (docs/redis_api.md).")
    body = f"""
Closed-loop loopback load: {args.connections} keep-alive connections, {args.requests:,} requests per scenario (or
{args.seconds:.0f} s), after 300 warm-up requests; requests rotate over 2,000 random published users
({args.users:,} users x {args.per_user} hot pairs in Redis). The API runs as deployed (`propensity api`: bearer
auth, rate limiter, Prometheus metrics, uvicorn with uvloop + httptools, access log off); every lookup is one
pipelined round trip to Redis (pointer GET + the user's keys), multiplexed with the worker's other lookups over one
connection. The load generator (asyncio + uvloop, pre-encoded requests) shares the 2 cores with the servers and
Redis; the CPU columns are each process's CPU time during the scenario divided by its requests (the server column
sums uvicorn's workers), which depends less on other load than the rates do.
1-minute load average {load_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end (other jobs shared
the machine; compare rows within this table, not across runs).

{table}

{chr(10).join('- ' + r for r in lines)}

CPU per request inside one API process (raw ASGI calls, {32} concurrent, no HTTP parsing and no load generator
in the measurement; median of 3):

{md_table(["variant", "CPU us / request"], breakdown)}

{remaining}

Steady state is one round trip per lookup: the pointer GET is pipelined with the reads of the version seen last,
repeated only when the pointer moved. The round trip goes through `ml/api_redis.py`: one asyncio Protocol
connection per worker, every concurrent lookup's commands flushed together once per event-loop iteration, replies
matched in order, RESP3 so hiredis parses the scores; the last row sends the same reads through a redis-py asyncio
pipeline instead.
"""
    print(body)
    if not args.no_write:
        print("wrote", write_section("api", "Lookup API throughput and latency", body))


if __name__ == "__main__":
    main()
