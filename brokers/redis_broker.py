"""RedisBroker: many gateway processes, one set of channels (``REDIS_URL``).

* **Publish** is one Lua script, for one publication or a batch of them
  (up to ``CHUNK_ITEMS`` per call; a bigger batch is several calls, one
  after the other): for each, the channel's offset rises by one
  (``HINCRBY ws:meta:<key> offset``), the publication is appended to the
  channel's stream (``XADD ws:stream:<key> <offset>-0``, at most
  ``history_size`` kept), and each channel's new publications go out in
  one ``PUBLISH ws:pub:<key>`` (one JSON object, or an array of them when
  the call holds several for that channel). Stored and sent together, or
  not at all: a call that cannot reach Redis stores nothing, and its
  publications (and those of the calls not yet made) are answered with
  :class:`BrokerUnavailable`.
* **Idempotency keys** are checked in the same script, so two nodes given
  the same id at the same moment publish it once: ``ws:idem:<key>`` is a
  sorted set of ids scored by their offset. An id found there is answered
  with its offset and not published again. It holds the ids of the current
  epoch only (``ws:meta:<key>`` field ``ie`` names the epoch they belong
  to; a new epoch empties it), at most ``id_window`` of them (the oldest
  go), and expires with the history (``history_ttl`` after the channel's
  last publication).
* **Epoch.** ``ws:meta:<key>`` holds the epoch; meta and stream expire
  after ``history_ttl`` seconds without a publication. When they are gone
  (expired, or Redis restarted without persistence) the next publish starts
  a new epoch, and older positions are answered ``recovered: false``.
* **Subscriptions.** A node subscribes in Redis only to the channels it has
  local subscribers for, plus its own probe channel ``ws:node:<id>``. One
  listener greenlet reads them. When Redis goes away it retries every
  0.05-``retry_interval`` s (random) while the outage is younger than
  ``fast_retry_for``, then with full-jitter backoff up to ``backoff_cap``;
  once connected it resubscribes and, as soon as its own probe has come
  back through the new subscription, calls ``on_reconnected`` so the
  channels fetch what they missed from the streams (or tell their clients
  to resync).
* **Half-open Redis.** Every ``probe_interval`` the node publishes a probe
  on its probe channel. A connection that delivers nothing, not even the
  probe, for two intervals (Redis stopped, a network black hole: the TCP
  connection looks open) is declared lost like a closed one: ERROR
  "redis connection lost", ``healthy()`` false, reconnect.
* **Connection counts.** ``ws:conns:<user>`` is a sorted set of session ids
  scored by expiry; the limit check and the insert are one atomic script,
  so across all nodes exactly ``limit`` succeed. Nodes refresh their
  sessions' expiry; a dead node's connections stop counting after
  ``connection_ttl`` seconds.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import gevent
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from brokers.broker import BrokerUnavailable, Outgoing, Publication, Stored
from protocol.channels import Position

__all__ = ["RedisBroker"]

log = logging.getLogger("gateway.broker")

# Connections to Redis for commands (publish, history, connection counts), besides the listener's.
POOL_SIZE = 8

# Publications per script call: each call runs atomically in Redis, which
# serves no one else meanwhile (about 10 µs each); a bigger batch is several calls.
CHUNK_ITEMS = 250
CHUNK_BYTES = 512 * 1024

# Seconds between ERROR lines while Redis stays unreachable.
UNREACHABLE_REPORT_EVERY = 30.0


def shown_url(url: str) -> str:
    """The URL for a log line: ``redis://:secret@host/0`` → ``redis://:[redacted]@host/0``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=f"{parts.username or ''}:[redacted]@{parts.netloc.rsplit('@', 1)[1]}").geturl()

# KEYS: per channel c (1-based) its meta, stream and idem keys at 3c-2, 3c-1, 3c.
# ARGV: history_size, ttl, id_window, C (channels); per channel its pub/sub channel and a new
# epoch (used if it has none); then per publication: channel number, id ('' for none), ts, data.
# Returns {epochs (one per channel), {offset, duplicate (0/1)} flattened per publication}.
_PUBLISH = """
local size, ttl, window, nc = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local epochs, out, withids, results = {}, {}, {}, {}
for c = 1, nc do
  local epoch = redis.call('HGET', KEYS[3 * c - 2], 'epoch')
  if not epoch then
    epoch = ARGV[4 + 2 * c]
    redis.call('HSET', KEYS[3 * c - 2], 'epoch', epoch)
  end
  epochs[c] = epoch
  out[c] = {}
end
for i = 5 + 2 * nc, #ARGV, 4 do
  local c, id, ts, d = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local meta, idem = KEYS[3 * c - 2], KEYS[3 * c]
  local seen = false
  if id ~= '' then
    if not withids[c] then
      withids[c] = true
      if redis.call('HGET', meta, 'ie') ~= epochs[c] then
        redis.call('DEL', idem)
        redis.call('HSET', meta, 'ie', epochs[c])
      end
    end
    seen = redis.call('ZSCORE', idem, id)
  end
  if seen then
    results[#results + 1] = tonumber(seen)
    results[#results + 1] = 1
  else
    local offset = redis.call('HINCRBY', meta, 'offset', 1)
    redis.call('XADD', KEYS[3 * c - 1], 'MAXLEN', size, offset .. '-0', 'd', d, 't', ts)
    if id ~= '' then
      redis.call('ZADD', idem, offset, id)
    end
    local pubs = out[c]
    pubs[#pubs + 1] = '{"o":' .. offset .. ',"e":"' .. epochs[c] .. '","t":' .. ts .. ',"d":' .. d .. '}'
    results[#results + 1] = offset
    results[#results + 1] = 0
  end
end
for c = 1, nc do
  redis.call('EXPIRE', KEYS[3 * c - 2], ttl)
  redis.call('EXPIRE', KEYS[3 * c - 1], ttl)
  redis.call('EXPIRE', KEYS[3 * c], ttl)
  if withids[c] then
    redis.call('ZREMRANGEBYRANK', KEYS[3 * c], 0, -window - 1)
  end
  local pubs = out[c]
  if #pubs == 1 then
    redis.call('PUBLISH', ARGV[3 + 2 * c], pubs[1])
  elseif #pubs > 1 then
    redis.call('PUBLISH', ARGV[3 + 2 * c], '[' .. table.concat(pubs, ',') .. ']')
  end
end
return {epochs, results}
"""

_POSITION = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
local offset = redis.call('HGET', KEYS[1], 'offset') or '0'
return {tonumber(offset), epoch}
"""

# KEYS[1]: a record; ARGV: the text expected there, the new text, its ttl in ms.
_SWAP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ttl = tonumber(ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(ttl * 2))
return 1
"""

_REFRESH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('ZADD', 'ws:conns:' .. ARGV[i], 'XX', now + ttl, ARGV[i + 1])
  redis.call('EXPIRE', 'ws:conns:' .. ARGV[i], math.ceil(ttl * 2))
end
return 1
"""


def _meta(key: str) -> str:
    return f"ws:meta:{key}"


def _stream(key: str) -> str:
    return f"ws:stream:{key}"


def _pubsub(key: str) -> str:
    return f"ws:pub:{key}"


def _idem(key: str) -> str:
    return f"ws:idem:{key}"


def _chunks(items: Sequence[Outgoing], texts: list[str]) -> list[range]:
    """Index ranges of at most CHUNK_ITEMS publications and (unless one alone is more) CHUNK_BYTES of data."""
    out: list[range] = []
    start, size = 0, 0
    for i, text in enumerate(texts):
        if i > start and (i - start >= CHUNK_ITEMS or size + len(text) > CHUNK_BYTES):
            out.append(range(start, i))
            start, size = i, 0
        size += len(text)
    if start < len(texts):
        out.append(range(start, len(texts)))
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Silent(Exception):
    """The subscription delivered nothing, not even this node's probe, for too long."""


class RedisBroker:
    def __init__(self, url: str, *, history_size: int = 100, history_ttl: float = 300.0,
                 connection_ttl: float = 30.0, retry_interval: float = 0.5, fast_retry_for: float = 60.0,
                 backoff_base: float = 0.2, backoff_cap: float = 1.5, probe_interval: float = 1.0,
                 socket_timeout: float = 2.0) -> None:
        """``retry_interval``: while an outage is younger than ``fast_retry_for`` seconds, the
        listener waits a random 0.05-``retry_interval`` s between attempts; after that, full
        jitter from ``backoff_base`` doubling up to ``backoff_cap``. Either way a node is back
        within about max(``retry_interval``, ``backoff_cap``) of Redis answering again.
        ``probe_interval``: how often the listener's probe goes round; a subscription silent
        for two intervals is a lost connection.
        """
        self.url = url
        self.history_size = history_size
        self.history_ttl = max(1, int(history_ttl))
        self.connection_ttl = connection_ttl
        self.retry_interval = retry_interval
        self.fast_retry_for = fast_retry_for
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.probe_interval = probe_interval
        self.probe_timeout = 2 * probe_interval
        self.on_publication: Callable[[Publication], None] = lambda pub: None
        self.on_reconnected: Callable[[], None] = lambda: None
        # No retries inside redis-py: a pub/sub connection it reconnected by itself would skip
        # on_reconnected (and so the catch-up), and a retried publish could publish twice.
        # A bounded pool: concurrent publishes wait (cooperatively) for one of
        # POOL_SIZE connections instead of opening one each; redis-py never closes
        # idle ones, so an unbounded pool keeps its peak's descriptors for good.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=POOL_SIZE, timeout=socket_timeout, socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout, health_check_interval=5, retry=Retry(NoBackoff(), 0))
        self.redis = redis.Redis(connection_pool=pool)
        self._publish = self.redis.register_script(_PUBLISH)
        self._position = self.redis.register_script(_POSITION)
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._refresh = self.redis.register_script(_REFRESH)
        self._swap = self.redis.register_script(_SWAP)
        self._keys: set[str] = set()
        self._pubsub: Any = None
        self._subscribing = False  # the current pub/sub connection takes SUBSCRIBE commands
        self._connected = False  # ... and has delivered this node's probe: healthy
        self._closing = False
        self.node_channel = f"ws:node:{secrets.token_hex(6)}"
        self._node_channel = self.node_channel.encode()
        self._prober: gevent.Greenlet | None = None
        self.reconnects = 0
        self.probes_missed = 0  # connections declared lost because nothing came back (half-open)
        self._listener = gevent.spawn(self._listen_forever)

    # -- publishing and history -----------------------------------------------------

    def publish(self, key: str, data: Any, ts: int) -> Publication:
        result = self.publish_many([Outgoing(key, data, ts)], id_window=0)[0]
        if isinstance(result, BrokerUnavailable):
            raise result
        return result.publication

    def publish_many(self, items: Sequence[Outgoing], *, id_window: int) -> list[Stored | BrokerUnavailable]:
        texts = [item.text if item.text is not None
                 else json.dumps(item.data, separators=(",", ":"), ensure_ascii=False) for item in items]
        out: list[Stored | BrokerUnavailable] = []
        failed: BrokerUnavailable | None = None
        for chunk in _chunks(items, texts):
            if failed is not None:
                # Not tried: nothing of these was stored, whatever became of the call that failed.
                out += [BrokerUnavailable(f"not tried after: {failed}")] * len(chunk)
                continue
            try:
                out += self._publish_chunk([items[i] for i in chunk], [texts[i] for i in chunk], id_window)
            except redis.TimeoutError as exc:
                # Sent, unanswered: Redis may run the script when it resumes (a frozen server).
                failed = BrokerUnavailable(f"redis: {exc}", maybe_stored=True)
                out += [failed] * len(chunk)
            except redis.RedisError as exc:
                failed = BrokerUnavailable(f"redis: {exc}")
                out += [failed] * len(chunk)
        return out

    def _publish_chunk(self, items: list[Outgoing], texts: list[str], id_window: int) -> list[Stored]:
        channels: dict[str, int] = {}
        keys: list[str] = []
        head: list[Any] = [self.history_size, self.history_ttl, max(1, id_window), 0]
        body: list[Any] = []
        for item, text in zip(items, texts, strict=True):
            c = channels.get(item.key)
            if c is None:
                c = channels[item.key] = len(channels) + 1
                keys += [_meta(item.key), _stream(item.key), _idem(item.key)]
                head += [_pubsub(item.key), secrets.token_hex(4)]
            body += [c, item.id or "", item.ts, text]
        head[3] = len(channels)
        epochs, results = self._publish(keys=keys, args=head + body)
        names = [epoch.decode() for epoch in epochs]
        return [Stored(Publication(item.key, int(results[2 * i]), names[channels[item.key] - 1], item.data, item.ts),
                       duplicate=bool(results[2 * i + 1]))
                for i, item in enumerate(items)]

    def position(self, key: str) -> Position:
        try:
            offset, epoch = self._position(keys=[_meta(key)], args=[secrets.token_hex(4), self.history_ttl])
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"redis: {exc}") from exc
        return Position(int(offset), epoch.decode())

    def history(self, key: str, since: Position) -> tuple[list[Publication], bool]:
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.hmget(_meta(key), "epoch", "offset")
            pipe.xrange(_stream(key), min=f"{since.offset + 1}-0", max="+")
            (epoch, offset), entries = pipe.execute()
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"redis: {exc}") from exc
        if epoch is None or epoch.decode() != since.epoch:
            return [], False
        head = int(offset or 0)
        if since.offset > head:
            return [], False
        if since.offset == head:
            return [], True
        pubs = [Publication(key, int(entry_id.split(b"-")[0]), since.epoch, json.loads(fields[b"d"]),
                            int(fields[b"t"])) for entry_id, fields in entries]
        if not pubs or pubs[0].offset != since.offset + 1 or pubs[-1].offset < head:
            return [], False  # trimmed past ``since``: cannot recover all of it
        return pubs, True

    def receivers(self, key: str) -> int | None:
        try:
            return int(self.redis.pubsub_numsub(_pubsub(key))[0][1])
        except redis.RedisError:
            return 0

    # -- node interest -------------------------------------------------------------

    def subscribe(self, key: str) -> None:
        if key in self._keys:
            return
        self._keys.add(key)
        if self._subscribing:
            try:
                self._pubsub.subscribe(_pubsub(key))
            except redis.RedisError:
                pass  # the listener resubscribes everything when it reconnects

    def unsubscribe(self, key: str) -> None:
        if key not in self._keys:
            return
        self._keys.discard(key)
        if self._subscribing:
            try:
                self._pubsub.unsubscribe(_pubsub(key))
            except redis.RedisError:
                pass

    def _retry_delay(self, attempt: int, outage: float) -> float:
        """Seconds before reconnect attempt ``attempt + 1``, ``outage`` seconds into an outage."""
        if outage < self.fast_retry_for:
            return random.uniform(0.05, max(0.05, self.retry_interval))
        # (2 ** 1100 does not fit a float: the exponent is capped, for outages of any length)
        return max(0.05, random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** min(attempt, 32))))

    def _listen_forever(self) -> None:
        attempt = 0
        first = True
        down_since = time.monotonic()
        next_report = 0.0  # while Redis stays unreachable, an ERROR line at most every UNREACHABLE_REPORT_EVERY
        while not self._closing:
            try:
                self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                keys = set(self._keys)
                # The probe channel also keeps the connection in subscribe mode with no keys.
                self._pubsub.subscribe(self.node_channel, *[_pubsub(k) for k in keys])
                self._subscribing = True
                added = self._keys - keys  # subscribed to while the SUBSCRIBE was on its way
                if added:
                    self._pubsub.subscribe(*[_pubsub(k) for k in added])
                self._serve(self._pubsub, first, attempt, down_since)
            except Exception as exc:  # the listener must outlive anything: nothing else would reconnect
                if self._closing:
                    break
                if not isinstance(exc, (redis.RedisError, OSError, _Silent)):
                    log.exception("redis listener failed; reconnecting")
                error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, _Silent) else str(exc)
                now = time.monotonic()
                if self._connected:
                    if isinstance(exc, _Silent):
                        self.probes_missed += 1
                    log.error("redis connection lost; serving local data, reconnecting",
                              extra={"fields": {"error": error}})
                    next_report = now + UNREACHABLE_REPORT_EVERY
                    first, attempt, down_since = False, 0, now
                elif now >= next_report:
                    # At start (nothing else would say so) and every so often while it lasts.
                    log.error("redis unreachable at %s; serving local data, publishing refused (503), retrying",
                              shown_url(self.url), extra={"fields": {"error": error, "attempts": attempt + 1}})
                    next_report = now + UNREACHABLE_REPORT_EVERY
                self._connected = self._subscribing = False
                try:
                    self._pubsub.close()
                except Exception:  # noqa: BLE001 - the connection is being abandoned
                    pass
                delay = self._retry_delay(attempt, now - down_since)
                attempt += 1
                gevent.sleep(delay)

    def _serve(self, pubsub: Any, first: bool, attempt: int, down_since: float) -> None:
        """Read deliveries and keep the probe going round; raise when the connection fails or stays silent.

        The connection counts (``healthy()``, ``on_reconnected``) only once this node's probe
        has come back through it: then every channel in the SUBSCRIBE is live in Redis, and a
        catch-up started now cannot miss a publication that the subscription would not deliver.
        """
        start = time.monotonic()
        heard = start  # the last delivery of any kind on this connection (probes included)
        next_probe = start
        prober: gevent.Greenlet | None = None  # this connection's own: one stuck on the last one must not delay it
        while not self._closing:
            now = time.monotonic()
            if now >= next_probe:
                if prober is None or prober.dead:  # else the last probe is still on its way (Redis slow or stopped)
                    prober = self._prober = gevent.spawn(self._send_probe)
                next_probe = now + self.probe_interval
            wait = min(next_probe, heard + self.probe_timeout) - now
            message = pubsub.get_message(timeout=max(0.001, wait))
            now = time.monotonic()
            if message is None:
                if now - heard > self.probe_timeout:
                    raise _Silent(f"no delivery for {now - heard:.1f} s, not even this node's probe "
                                  f"(sent every {self.probe_interval:g} s): Redis is not answering")
                continue
            heard = now
            if message["type"] != "message":
                continue
            if message["channel"] == self._node_channel:
                if not self._connected:
                    self._connected = True
                    if first:
                        log.info("redis connected at %s", shown_url(self.url),
                                 extra={"fields": {"attempts": attempt + 1}})
                    else:
                        self.reconnects += 1
                        log.warning("redis reconnected; channels catch up from the streams",
                                    extra={"fields": {"channels": len(self._keys), "attempt": attempt,
                                                      "outage_s": round(now - down_since, 3)}})
                    # At once, and at the first connect too (channels joined while Redis was
                    # unreachable at start): each channel fetches what it missed, or resyncs.
                    self.on_reconnected()
                continue
            self._dispatch(message["channel"], message["data"])

    def _send_probe(self) -> None:
        try:
            self.redis.publish(self.node_channel, b"probe")
        except redis.RedisError:
            pass  # the listener notices that nothing comes back

    def _dispatch(self, channel: bytes, payload: bytes) -> None:
        key = channel.decode()[len("ws:pub:"):]
        try:
            msg = json.loads(payload)
            # One publication, or several of one script call (a batch) in offset order.
            pubs = [Publication(key, int(m["o"]), m["e"], m["d"], int(m["t"]))
                    for m in (msg if isinstance(msg, list) else [msg])]
        except (ValueError, KeyError, TypeError):
            log.warning("malformed publication from redis", extra={"fields": {"channel": key}})
            return
        for pub in pubs:
            self.on_publication(pub)

    # -- connection counts ------------------------------------------------------------

    def acquire_connection(self, user: str, session_id: str, limit: int) -> bool:
        try:
            return bool(self._acquire(keys=[f"ws:conns:{user}"], args=[session_id, limit, self.connection_ttl]))
        except redis.RedisError:
            # Redis down: admit, and count locally only (documented); the limit
            # is enforced again across nodes once Redis is back.
            log.warning("redis unavailable for the connection limit; admitting on the local count")
            return True

    def release_connection(self, user: str, session_id: str) -> None:
        try:
            self.redis.zrem(f"ws:conns:{user}", session_id)
        except redis.RedisError:
            pass  # it expires after connection_ttl

    def refresh_connections(self, sessions: list[tuple[str, str]]) -> None:
        for i in range(0, len(sessions), 500):
            args: list[Any] = [self.connection_ttl]
            for user, session_id in sessions[i:i + 500]:
                args += [user, session_id]
            try:
                self._refresh(args=args)
            except redis.RedisError:
                return

    # -- small shared records: bot commands, the services that own bots ---------------

    def record_put(self, key: str, text: str, ttl: float) -> str | None:
        try:
            for _ in range(3):
                if self.redis.set(f"ws:rec:{key}", text, nx=True, px=max(1, int(ttl * 1000))):
                    return None
                existing = self.redis.get(f"ws:rec:{key}")
                if existing is not None:  # else it expired between the two calls: try again
                    return _text(existing)
        except redis.TimeoutError as exc:
            raise BrokerUnavailable(f"redis: {exc}", maybe_stored=True) from exc
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"redis: {exc}") from exc
        raise BrokerUnavailable("redis: the record kept expiring under us")

    def record_get(self, key: str) -> str | None:
        try:
            value = self.redis.get(f"ws:rec:{key}")
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"redis: {exc}") from exc
        return None if value is None else _text(value)

    def record_swap(self, key: str, expected: str, text: str, ttl: float) -> bool:
        try:
            return bool(self._swap(keys=[f"ws:rec:{key}"], args=[expected, text, max(1, int(ttl * 1000))]))
        except redis.TimeoutError as exc:
            raise BrokerUnavailable(f"redis: {exc}", maybe_stored=True) from exc
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"redis: {exc}") from exc

    def record_delete(self, key: str) -> None:
        try:
            self.redis.delete(f"ws:rec:{key}")
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"redis: {exc}") from exc

    def register_service(self, service: str, patterns: Sequence[str]) -> None:
        try:
            self.redis.hset("ws:services", service, json.dumps(list(patterns)))
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"redis: {exc}") from exc

    def services(self) -> dict[str, tuple[str, ...]]:
        try:
            entries = self.redis.hgetall("ws:services")
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"redis: {exc}") from exc
        out: dict[str, tuple[str, ...]] = {}
        for name, patterns in entries.items():
            try:
                out[_text(name)] = tuple(str(p) for p in json.loads(patterns))
            except (ValueError, TypeError):
                continue  # not ours: skipped, not fatal
        return out

    def healthy(self) -> bool:
        return self._connected

    def stats(self) -> dict[str, Any]:
        return {"kind": "redis", "connected": self._connected, "channels": len(self._keys),
                "reconnects": self.reconnects, "probesMissed": self.probes_missed}

    def close(self) -> None:
        self._closing = True
        # Wait for the listener to end before closing its connection under it
        # (redis-py's read cleanup fails loudly on a closed buffer).
        self._listener.kill(block=True, timeout=1.0)
        if self._prober is not None:
            self._prober.kill(block=True, timeout=1.0)
        try:
            self.redis.close()
        except Exception:  # noqa: BLE001 - closing anyway
            pass
