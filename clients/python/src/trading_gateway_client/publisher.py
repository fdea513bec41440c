"""Publishing for platform services: ``POST /api/publish`` and ``POST /api/publish/batch``, with retries.

Every publication carries an idempotency key, ``id`` (a random one unless
the caller gives its own): the gateway remembers the ids of each channel's
recent publications and answers a repeated one with the first one's offset
(``duplicate: true``) instead of storing it twice. That is what makes
retrying safe, even after an answer that does not say whether the
publication was stored (``503 broker_timeout``, a timeout, a reset
connection). Answers that say "nothing was published" (``503
broker_unavailable``, refused connections) are retried too; answers that
say "never" (``400``, ``401``, ``403``, ``413``) are not.

Standard library only (``urllib``); :class:`AsyncPublisher` runs the same
calls in a thread.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from trading_gateway_client.errors import MaybePublished, PublishError

__all__ = ["AsyncPublisher", "Publication", "Published", "Publisher", "http_base"]

# Answers after which nothing was stored: retried without a second thought.
NOTHING_STORED = frozenset({"broker_unavailable"})
# Answers after which the publication may have been stored: retried only because it carries an id.
MAYBE_STORED = frozenset({"broker_timeout"})


def http_base(url: str) -> str:
    """``http://host:port`` from a gateway URL (``ws://host:port/ws`` or ``http://host:port``)."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


@dataclass(frozen=True)
class Publication:
    channel: str  # bot-status, trades, positions or signals
    user: str
    data: Any  # any JSON for a single publish; an object in a batch
    id: str | None = None  # the idempotency key; a random one when None

    def to_json(self, pid: str) -> dict[str, Any]:
        return {"channel": self.channel, "user": self.user, "data": self.data, "id": pid}


@dataclass(frozen=True)
class Published:
    """One publication's outcome: stored (``offset``, ``epoch``), or why not (``error``)."""

    channel: str
    user: str
    id: str
    offset: int | None = None
    epoch: str | None = None
    duplicate: bool = False  # the gateway had it already (a retry): offset and epoch are the first one's
    error: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class _Retry(Exception):
    def __init__(self, status: int | None, error: str, message: str, ambiguous: bool, wait: float | None = None):
        super().__init__(message)
        self.status, self.error, self.message, self.ambiguous, self.wait = status, error, message, ambiguous, wait


class Publisher:
    """Publishes over HTTP with a service credential: ``api_key`` (SERVICE_API_KEY) or a service token.

    ``token`` / ``get_token``: a JWT with ``role: "service"`` (``get_token``
    is asked again after a 401). ``retries``: further attempts after the
    first, with full-jitter backoff from ``backoff_base`` up to
    ``backoff_cap`` seconds.
    """

    def __init__(self, url: str, *, api_key: str | None = None, token: str | None = None,
                 get_token: Callable[[], str] | None = None, retries: int = 6, backoff_base: float = 0.1,
                 backoff_cap: float = 3.0, timeout: float = 5.0, batch_size: int = 500,
                 rng: random.Random | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        if api_key is None and token is None and get_token is None:
            raise ValueError("give api_key, token or get_token")
        self.base = http_base(url)
        self._api_key, self._token, self._get_token = api_key, token, get_token
        self.retries, self.backoff_base, self.backoff_cap = retries, backoff_base, backoff_cap
        self.timeout, self.batch_size = timeout, batch_size
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._batch_supported: bool | None = None  # None: not known yet (an older gateway answers 404)

    # -- HTTP -----------------------------------------------------------------------------------

    def _credential(self, renew: bool = False) -> str:
        if self._api_key is not None:
            return self._api_key
        if self._get_token is not None and (renew or self._token is None):
            self._token = self._get_token()
        assert self._token is not None
        return self._token

    def _post(self, path: str, body: Any, renew: bool = False) -> tuple[int, Any, Mapping[str, str]]:
        request = urllib.request.Request(
            self.base + path, json.dumps(body, separators=(",", ":"), allow_nan=False).encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {self._credential(renew)}"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, _json(response.read()), dict(response.headers)
        except urllib.error.HTTPError as err:
            return err.code, _json(err.read()), dict(err.headers or {})

    def _backoff(self, attempt: int) -> float:
        return self._rng.uniform(0.0, min(self.backoff_cap, self.backoff_base * 2 ** attempt))

    def _attempts(self, call: Callable[[bool], Any]) -> Any:
        """Run ``call(renew_token)`` until it stops raising _Retry, at most 1 + retries times."""
        renew = False
        last: _Retry | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(max(self._backoff(attempt - 1), last.wait or 0.0) if last else 0.0)
            try:
                return call(renew)
            except _Retry as retry:
                last = retry
                renew = retry.status == 401
        assert last is not None
        if last.ambiguous:
            raise MaybePublished(last.status, last.error, last.message + f" (after {self.retries + 1} attempts: it "
                                 "may have been stored; publishing it again with the same id is safe)")
        raise PublishError(last.status, last.error, last.message + f" (after {self.retries + 1} attempts)")

    def _send(self, path: str, body: Any, renew: bool) -> tuple[int, Any]:
        """One request; _Retry for what is worth another attempt."""
        try:
            status, answer, headers = self._post(path, body, renew)
        except urllib.error.URLError as exc:
            reason = exc.reason
            refused = isinstance(reason, ConnectionRefusedError)
            raise _Retry(None, "unreachable", f"{reason}", ambiguous=not refused) from None
        except (TimeoutError, ConnectionError, OSError) as exc:
            # The request may have been received: only its id makes another attempt safe.
            raise _Retry(None, "no_answer", f"{type(exc).__name__}: {exc}", ambiguous=True) from None
        error = answer.get("error", "") if isinstance(answer, dict) else ""
        if status == 401 and self._get_token is not None and not renew:
            raise _Retry(401, error, "unauthorized: asking get_token for a new token", ambiguous=False)
        if status == 503 or status >= 500 or status == 429:
            retry_after = headers.get("Retry-After")
            raise _Retry(status, error or "unavailable", _message(answer),
                         ambiguous=error not in NOTHING_STORED, wait=_seconds(retry_after))
        return status, answer

    # -- one publication ------------------------------------------------------------------------

    def publish(self, channel: str, user: str, data: Any, *, id: str | None = None) -> Published:
        """Publish one message; returns its offset and epoch. Raises PublishError (or MaybePublished)."""
        pid = id or uuid.uuid4().hex
        body = Publication(channel, user, data, pid).to_json(pid)

        def call(renew: bool) -> Published:
            status, answer = self._send("/api/publish", body, renew)
            if status == 202 and isinstance(answer, dict):
                return Published(channel, user, pid, answer.get("offset"), answer.get("epoch"),
                                 bool(answer.get("duplicate", False)))
            error = answer.get("error", "") if isinstance(answer, dict) else ""
            raise PublishError(status, error, _message(answer), answer)

        return self._attempts(call)  # type: ignore[no-any-return]

    # -- many -------------------------------------------------------------------------------------

    def publish_many(self, publications: Iterable[Publication | Mapping[str, Any]], *,
                     raise_on_error: bool = True) -> list[Published]:
        """Publish in order, in batches of ``batch_size`` (``POST /api/publish/batch``; one by one on a
        gateway without it). Each item is retried on its own until stored or refused for good.

        Returns one :class:`Published` per item, in order. With
        ``raise_on_error`` a refused item raises PublishError after the
        whole list has been tried (``.body`` holds every result).
        """
        items = [p if isinstance(p, Publication) else Publication(p["channel"], p["user"], p["data"], p.get("id"))
                 for p in publications]
        ids = [p.id or uuid.uuid4().hex for p in items]
        results: list[Published | None] = [None] * len(items)
        for start in range(0, len(items), max(1, self.batch_size)):
            chunk = list(range(start, min(len(items), start + self.batch_size)))
            self._publish_chunk(items, ids, chunk, results)
        final = [r for r in results if r is not None]
        failed = [r for r in final if not r.ok]
        if failed and raise_on_error:
            first = failed[0]
            raise PublishError(None, first.error or "", f"{len(failed)} of {len(final)} publications failed; the "
                               f"first: {first.message}", final)
        return final

    def _publish_chunk(self, items: Sequence[Publication], ids: Sequence[str], chunk: list[int],
                       results: list[Published | None]) -> None:
        if self._batch_supported is False:
            for i in chunk:
                results[i] = self._one(items[i], ids[i])
            return
        pending = list(chunk)
        attempt = 0
        renew = False
        last = ""
        while pending:
            body = {"publications": [items[i].to_json(ids[i]) for i in pending]}
            try:
                status, answer = self._send("/api/publish/batch", body, renew)
                renew = False
            except _Retry as retry:
                renew = retry.status == 401
                last = retry.message
                if attempt >= self.retries:
                    for i in pending:
                        results[i] = Published(items[i].channel, items[i].user, ids[i],
                                               error="broker_timeout" if retry.ambiguous else retry.error,
                                               message=f"{retry.message} (after {attempt + 1} attempts)")
                    return
                self._sleep(max(self._backoff(attempt), retry.wait or 0.0))
                attempt += 1
                continue
            if status in (404, 405) and self._batch_supported is None:
                self._batch_supported = False  # an older gateway: one by one
                for i in pending:
                    results[i] = self._one(items[i], ids[i])
                return
            if status == 413 or (status == 400 and isinstance(answer, dict)
                                 and answer.get("error") == "too_many_publications"):
                if len(pending) == 1:
                    results[pending[0]] = self._refused(items[pending[0]], ids[pending[0]], answer)
                    return
                half = len(pending) // 2
                self._publish_chunk(items, ids, pending[:half], results)
                self._publish_chunk(items, ids, pending[half:], results)
                return
            if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("results"), list) \
                    or len(answer["results"]) != len(pending):
                for i in pending:
                    results[i] = self._refused(items[i], ids[i], answer)
                return
            self._batch_supported = True
            again = []
            for i, result in zip(pending, answer["results"], strict=True):
                error = result.get("error") if isinstance(result, dict) else "invalid_answer"
                if error in NOTHING_STORED or error in MAYBE_STORED:
                    again.append(i)  # the same id again: stored at most once
                    last = result.get("message", error)
                elif error is not None:
                    results[i] = Published(items[i].channel, items[i].user, ids[i], error=error,
                                           message=result.get("message", ""))
                else:
                    results[i] = Published(items[i].channel, items[i].user, ids[i], result.get("offset"),
                                           result.get("epoch"), bool(result.get("duplicate", False)))
            if again and attempt >= self.retries:
                for i in again:
                    results[i] = Published(items[i].channel, items[i].user, ids[i], error="broker_unavailable",
                                           message=f"{last} (after {attempt + 1} attempts)")
                return
            pending = again
            if pending:
                self._sleep(self._backoff(attempt))
                attempt += 1

    def _one(self, item: Publication, pid: str) -> Published:
        try:
            return self.publish(item.channel, item.user, item.data, id=pid)
        except PublishError as exc:
            return Published(item.channel, item.user, pid, error=exc.error or "error", message=exc.message)

    @staticmethod
    def _refused(item: Publication, pid: str, answer: Any) -> Published:
        error = answer.get("error", "error") if isinstance(answer, dict) else "error"
        return Published(item.channel, item.user, pid, error=error, message=_message(answer))


class AsyncPublisher:
    """:class:`Publisher` for asyncio code: the same calls, each run in a thread."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self._sync = Publisher(url, **kwargs)

    async def publish(self, channel: str, user: str, data: Any, *, id: str | None = None) -> Published:
        return await asyncio.to_thread(self._sync.publish, channel, user, data, id=id)

    async def publish_many(self, publications: Iterable[Publication | Mapping[str, Any]], *,
                           raise_on_error: bool = True) -> list[Published]:
        items = list(publications)
        return await asyncio.to_thread(self._sync.publish_many, items, raise_on_error=raise_on_error)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return {"error": "invalid_answer", "message": raw[:200].decode("utf-8", "replace")}


def _message(answer: Any) -> str:
    return str(answer.get("message", "")) if isinstance(answer, dict) else str(answer)[:200]


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
