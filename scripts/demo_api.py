"""A local stand-in for the APIs in jobs.yaml, so a full sync runs end to end offline.

    python3 scripts/demo_api.py                     # http://127.0.0.1:8765, token demo-token
    python3 scripts/demo_api.py --fail-rate 0.3     # 30% of requests answer 503
    python3 scripts/demo_api.py --rate-limit 20/60  # more than 20 requests a minute get 429

Standard library only. Every endpoint uses a different pagination style, as
real APIs do:

| path                    | items at         | pagination                                  |
|-------------------------|------------------|---------------------------------------------|
| /v1/airdrops            | data             | links.next (a URL); ?updated_since=ISO      |
| /v1/airdrops/upcoming   | data             | cursor: meta.next_cursor sent back as ?after |
| /v1/quests              | quests           | ?page=N until an empty page                 |
| /v1/yield               | (the body)       | Link: <…>; rel="next"                        |
| /v1/sponsored           | data             | none                                        |
| /v1/community/posts     | results.posts    | next (a URL); needs ?api_key=               |
| /v1/points/leaderboard  | wallets          | ?page=N (the python job's source)           |
| /v1/bench               | data             | links.next; ?total=N&per_page=M (benchmarks) |

All but /v1/bench want ``Authorization: Bearer TOKEN`` (community wants the
``api_key`` query parameter instead). New airdrops appear every ``--new-every``
seconds, so a second run with ``since`` fetches only those.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from email.utils import formatdate
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

CHAINS = ["ethereum", "arbitrum", "optimism", "base", "solana", "zksync", "starknet", "polygon"]
WORDS = ["Nova", "Orbit", "Flux", "Aether", "Quanta", "Lumen", "Vertex", "Drift", "Helix", "Pulse"]
PROTOCOLS = ["Aave", "Lido", "Curve", "Pendle", "Morpho", "Ethena", "GMX", "Jito"]


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_iso(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return None


class Data:
    """Deterministic fake data; ``started`` anchors times so reruns see the same items."""

    def __init__(self, seed: int, scale: float, new_every: float):
        self.seed = seed
        self.scale = scale
        self.new_every = new_every
        self.started = time.time()

    def count(self, base: int) -> int:
        return max(1, int(base * self.scale))

    def airdrop(self, i: int, base_count: int) -> dict:
        rng = random.Random(self.seed * 1_000_003 + i)
        name = f"{rng.choice(WORDS)} {rng.choice(WORDS)}"
        updated = self.started - (base_count - i) * 600 if i <= base_count else \
            self.started + (i - base_count) * self.new_every
        return {
            "id": f"ad-{i:05d}", "name": name, "chain": rng.choice(CHAINS),
            "status": "live", "reward": {"token": name.split()[0].upper()[:4],
                                         "amount": rng.randrange(50, 5000)},
            "tasks": rng.sample(["bridge", "swap", "stake", "follow", "mint", "vote"], 3),
            "ends_at": iso(self.started + rng.randrange(1, 60) * 86400),
            "updated_at": iso(updated),
        }

    def airdrops(self) -> list[dict]:
        base = self.count(240)
        fresh = int((time.time() - self.started) // self.new_every) if self.new_every else 0
        return [self.airdrop(i, base) for i in range(1, base + fresh + 1)]

    def upcoming(self) -> list[dict]:
        out = []
        for i in range(1, self.count(120) + 1):
            rng = random.Random(self.seed * 7919 + i)
            out.append({"id": f"up-{i:05d}", "name": f"{rng.choice(WORDS)} Season {rng.randrange(1, 5)}",
                        "chain": rng.choice(CHAINS),
                        "snapshot_at": iso(self.started + rng.randrange(1, 90) * 86400),
                        "confirmed": rng.random() < 0.4})
        return out

    def quests(self) -> list[dict]:
        out = []
        for i in range(1, self.count(75) + 1):
            rng = random.Random(self.seed * 104729 + i)
            out.append({"quest_id": i, "title": f"{rng.choice(['Bridge to', 'Swap on', 'Stake with'])} "
                                                f"{rng.choice(PROTOCOLS)}",
                        "xp": rng.randrange(10, 500), "chain": rng.choice(CHAINS),
                        "steps": [{"n": n, "done": False} for n in range(1, rng.randrange(2, 5))]})
        return out

    def yields(self) -> list[dict]:
        out = []
        for i in range(1, self.count(60) + 1):
            rng = random.Random(self.seed * 31337 + i)
            protocol = rng.choice(PROTOCOLS)
            out.append({"pool": f"{protocol.lower()}-{rng.choice(CHAINS)}-{i}", "protocol": protocol,
                        "apy": round(rng.uniform(0.5, 35.0), 2),
                        "tvl_usd": rng.randrange(10_000, 900_000_000)})
        return out

    def sponsored(self) -> list[dict]:
        slot = int(time.time() // 300)  # the rotation changes every 5 minutes
        rng = random.Random(self.seed + slot)
        return [{"slot": n, "airdrop_id": f"ad-{rng.randrange(1, self.count(240)):05d}",
                 "until": iso((slot + 1) * 300)} for n in range(1, 9)]

    def posts(self) -> list[dict]:
        out = []
        for i in range(1, self.count(90) + 1):
            rng = random.Random(self.seed * 4099 + i)
            out.append({"id": 10_000 + i, "author": f"user{rng.randrange(1, 400)}",
                        "title": f"Thoughts on {rng.choice(WORDS)}", "score": rng.randrange(0, 900)})
        return out

    def wallets(self) -> list[dict]:
        out = []
        for i in range(1, self.count(200) + 1):
            rng = random.Random(self.seed * 65537 + i)
            out.append({"wallet": "0x" + "".join(rng.choice("0123456789abcdef") for _ in range(40)),
                        "points": rng.randrange(0, 250_000),
                        "multiplier": round(rng.choice([1, 1, 1.25, 1.5, 2]), 2)})
        return out


@lru_cache(maxsize=256)
def bench_page(page: int, per_page: int, total: int, path: str) -> bytes:
    """One page of the benchmark dataset, built once: the server must not be the bottleneck."""
    first = (page - 1) * per_page + 1
    last = min(total, page * per_page)
    items = [{"id": i, "name": f"item {i}", "chain": CHAINS[i % len(CHAINS)], "score": i * 7 % 1000,
              "reward": {"token": "DEMO", "amount": i % 5000}, "tags": ["a", "b"][: 1 + i % 2],
              "updated_at": "2024-05-01T12:00:00Z"} for i in range(first, last + 1)]
    more = last < total
    nxt = f"{path}?{urlencode({'page': page + 1, 'per_page': per_page, 'total': total})}" if more else None
    return json.dumps({"data": items, "links": {"next": nxt}}).encode()


class Limiter:
    """A fixed window: more than ``limit`` requests per ``window`` seconds get 429."""

    def __init__(self, limit: int, window: float):
        self.limit, self.window = limit, window
        self.start, self.count = time.time(), 0
        self.lock = threading.Lock()

    def check(self) -> float | None:
        """None if allowed, else seconds until the window resets."""
        with self.lock:
            now = time.time()
            if now - self.start >= self.window:
                self.start, self.count = now, 0
            self.count += 1
            return None if self.count <= self.limit else self.start + self.window - now


def make_handler(args, data: Data, limiter: Limiter | None):
    rng = random.Random(args.seed)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "demo-api/1"

        def log_message(self, fmt, *a):
            if args.verbose:
                sys.stderr.write(f"{self.address_string()} {fmt % a}\n")

        def do_GET(self):
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            path = parts.path.rstrip("/")
            if path == "/v1/bench":
                return self.send(200, bench_page(int(query.get("page", 1)), int(query.get("per_page", 1000)),
                                                 int(query.get("total", 100_000)), path))
            if args.latency:
                time.sleep(args.latency)
            if limiter and (wait := limiter.check()) is not None:
                return self.send(429, {"error": "rate limited"},
                                 {"Retry-After": str(max(1, round(wait)))})
            if args.fail_rate and rng.random() < args.fail_rate:
                return self.send(503, {"error": "upstream busy, try again"}, {"Retry-After": "1"})
            if path == "/v1/community/posts":
                if query.get("api_key") != args.key:
                    return self.send(401, {"error": "missing or wrong api_key"})
            elif self.headers.get("Authorization") != f"Bearer {args.token}":
                return self.send(401, {"error": "missing or wrong bearer token"})
            page = max(1, int(query.get("page", "1") or 1))
            if path == "/v1/airdrops":
                items = data.airdrops()
                since = parse_iso(query["updated_since"]) if query.get("updated_since") else None
                if since is not None:
                    items = [a for a in items if parse_iso(a["updated_at"]) > since]
                chunk, more = self.slice(items, page, 50)
                nxt = f"{path}?{urlencode({**query, 'page': page + 1})}" if more else None
                return self.send(200, {"data": chunk, "links": {"next": nxt}, "total": len(items)})
            if path == "/v1/airdrops/upcoming":
                items = data.upcoming()
                start = int(query.get("after", "0") or 0)
                chunk = items[start:start + 40]
                cursor = str(start + 40) if start + 40 < len(items) else None
                return self.send(200, {"data": chunk, "meta": {"next_cursor": cursor}})
            if path == "/v1/quests":
                chunk, _ = self.slice(data.quests(), page, 25)
                return self.send(200, {"quests": chunk, "page": page})
            if path == "/v1/yield":
                chunk, more = self.slice(data.yields(), page, 20)
                links = {}
                if more:
                    links["Link"] = f'<{path}?{urlencode({**query, "page": page + 1})}>; rel="next"'
                return self.send(200, chunk, links)
            if path == "/v1/sponsored":
                return self.send(200, {"data": data.sponsored()})
            if path == "/v1/community/posts":
                chunk, more = self.slice(data.posts(), page, 30)
                nxt = f"{path}?{urlencode({**query, 'page': page + 1})}" if more else None
                return self.send(200, {"results": {"posts": chunk}, "next": nxt})
            if path == "/v1/points/leaderboard":
                chunk, _ = self.slice(data.wallets(), page, 100)
                return self.send(200, {"wallets": chunk, "page": page})
            return self.send(404, {"error": f"no such endpoint: {path}"})

        @staticmethod
        def slice(items, page, size):
            chunk = items[(page - 1) * size: page * size]
            return chunk, page * size < len(items)

        def send(self, code: int, body, headers: dict | None = None):
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.send_header("Date", formatdate(usegmt=True))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)

    return Handler


def serve(args) -> ThreadingHTTPServer:
    limiter = None
    if args.rate_limit:
        limit, _, window = args.rate_limit.partition("/")
        limiter = Limiter(int(limit), float(window or 60))
    data = Data(args.seed, args.scale, args.new_every)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args, data, limiter))
    server.daemon_threads = True
    return server


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Local demo API for schedsync's example jobs.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port (printed)")
    p.add_argument("--token", default="demo-token", help="bearer token the API accepts")
    p.add_argument("--key", default="demo-key", help="api_key the community endpoint accepts")
    p.add_argument("--fail-rate", type=float, default=0.0, help="share of requests answered 503")
    p.add_argument("--rate-limit", metavar="N/SECONDS", help="answer 429 + Retry-After beyond N per window")
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every response")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every dataset's size")
    p.add_argument("--new-every", type=float, default=60.0, help="a new airdrop appears every N seconds")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--verbose", "-v", action="store_true", help="log every request")
    return p


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    server = serve(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host, port = server.server_address[:2]
    print(f"demo API on http://{host}:{port} (token {args.token}; Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
