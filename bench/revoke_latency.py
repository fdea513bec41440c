"""How long a revocation takes to close a connection on another node.

    python bench/revoke_latency.py [--rounds 50]

Two gateway processes on 127.0.0.1 share a redis-server (and each keeps its
own SQLite audit file under a temporary DATA_DIR). Each round connects a
client to node B with a token carrying a fresh ``jti``, then revokes that
``jti`` with ``POST /api/admin/revoke`` on node A and times, from the
moment the request is sent, until the client on B reads the close frame
(4501). That includes storing the revocation (the answer waits for it), the
broadcast through Redis and B closing the connection. The issue's bound is
1 s; docs/operations.md ("Admin API") has the run of record.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness import GatewayProcess
from tests.redis_server import RedisServer
from tests.test_admin import ADMIN_KEY, _connect, _http


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    redis_server = RedisServer().start()
    try:
        env = {"REDIS_URL": redis_server.url, "ADMIN_API_KEY": ADMIN_KEY}
        with GatewayProcess(env) as a, GatewayProcess({**env, "JWT_SECRET": a.secret}) as b:
            b.secret = a.secret
            times = []
            for i in range(args.rounds):
                client = _connect(b, a.token("bench", jti=f"bench-{i}"))
                started = time.perf_counter()
                status, _ = _http(a, "POST", "/api/admin/revoke", {"jti": f"bench-{i}"})
                code = client.expect_close(timeout=5)[0]
                elapsed = (time.perf_counter() - started) * 1000
                if status != 200 or code != 4501:
                    print(f"round {i}: revoke answered {status}, close code {code}", file=sys.stderr)
                    return 1
                times.append(elapsed)
    finally:
        redis_server.stop()
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(f"revocation on node A to close 4501 on node B, {len(times)} rounds: "
          f"median {statistics.median(times):.1f} ms, p99 {p99:.1f} ms, max {times[-1]:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
