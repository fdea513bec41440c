"""Faults injected on command: their JSON form, validation, and the rules that outlive the command.

A fault arrives as a JSON object (``POST /control/fault`` or
``SimulatorServer.inject``) with a ``fault`` key and options; every fault
takes an optional ``category`` (``"spot"`` or ``"linear"``) that limits it to
that market, otherwise it applies to both.

Each fault, its options (defaults) and its effect:

* ``close`` — ``code`` (1000), ``reason`` (""), ``abrupt`` (false): close the
  current connections now with that close code; ``abrupt`` drops TCP with no
  close frame.
* ``silent`` — ``seconds`` (null = until ``resume``), ``replies`` (false):
  the current connections get nothing, not even pongs; TCP stays open. With
  ``replies`` true only market data stops: pongs and acks still go out (a
  stuck feed behind a live socket). When it ends, each stateful topic
  restarts with a snapshot.
* ``garbage`` — ``count`` (1), ``kind`` ("mixed" | "text" | "json" | "binary"):
  send frames no Bybit parser accepts; "mixed" starts with non-JSON text.
* ``reject_subscribe`` — ``count`` (1) or ``symbol``, ``form`` (null): the
  next ``count`` subscribes fail, naming their first topic, or every
  subscribe naming ``symbol`` fails until ``resume``, naming every topic of
  that symbol in it, with the market's own failure reply. ``form`` says how
  the reply lists the topics: null as recorded (spot ``[a,b]``, linear the
  first one), ``"comma"`` (``a,b``), ``"space"`` (Go's ``[a b]``), or
  ``"none"``: a failure that names no topic (``error:subscribe rejected``,
  an invented text in Bybit's reply shape).
* ``skip_u`` — ``symbol`` (all): the next orderbook delta of each subscribed
  book skips one ``u`` (that update is lost, as on a real gap).
* ``u1_snapshot`` — ``symbol`` (all): the next orderbook message of each
  subscribed book is a fresh snapshot with ``u = 1``; deltas go on from 2.
* ``snapshot_before_ack`` — ``count`` (1): the next subscribe that names an
  orderbook sends the book snapshot before the ack.
* ``refuse`` — ``seconds`` (null = until ``resume``), ``mode`` ("close" |
  "503"): new WebSocket connections are closed without an answer, or get
  ``HTTP 503``. The control API keeps answering.
* ``latency`` — ``ms`` (0): every request a client sends from now on
  (subscribe, unsubscribe, ping) takes effect ``ms`` later, in order, as
  over a slow link to the exchange; data already flowing keeps flowing
  meanwhile. ``ms`` 0 (or ``resume``) ends it.
* ``frame`` — ``text``, ``count`` (1): send ``text`` verbatim as a text
  frame ``count`` times to the current connections (a well-formed frame with
  a bad value, data for a topic nobody subscribed, ...).
* ``resume`` — clear every fault (with ``category``: that market's, and the
  unscoped ones).

:func:`parse_fault` validates once at the edge and raises :class:`FaultError`
with what was wrong. :class:`FaultBook` keeps the rules that decide future
events (``reject_subscribe``, ``snapshot_before_ack``, ``refuse``,
``latency``); the server applies the others to connections and feeds when
injected.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from simulator.protocol import Category

__all__ = [
    "REJECT_FORMS",
    "Close",
    "Fault",
    "FaultBook",
    "FaultError",
    "Frame",
    "Garbage",
    "Latency",
    "Refuse",
    "RejectSubscribe",
    "Rejection",
    "Resume",
    "Silent",
    "SkipU",
    "SnapshotBeforeAck",
    "U1Snapshot",
    "describe",
    "garbage_payloads",
    "parse_fault",
]


class FaultError(ValueError):
    """A fault command that is not valid JSON of a known fault."""


@dataclass(frozen=True, slots=True)
class Close:
    category: Category | None = None
    code: int = 1000
    reason: str = ""
    abrupt: bool = False


@dataclass(frozen=True, slots=True)
class Silent:
    category: Category | None = None
    seconds: float | None = None
    replies: bool = False


@dataclass(frozen=True, slots=True)
class Garbage:
    category: Category | None = None
    count: int = 1
    kind: str = "mixed"


@dataclass(frozen=True, slots=True)
class RejectSubscribe:
    category: Category | None = None
    count: int | None = None
    symbol: str | None = None
    form: str | None = None


@dataclass(frozen=True, slots=True)
class SkipU:
    category: Category | None = None
    symbol: str | None = None


@dataclass(frozen=True, slots=True)
class U1Snapshot:
    category: Category | None = None
    symbol: str | None = None


@dataclass(frozen=True, slots=True)
class SnapshotBeforeAck:
    category: Category | None = None
    count: int = 1


@dataclass(frozen=True, slots=True)
class Refuse:
    category: Category | None = None
    seconds: float | None = None
    mode: str = "close"


@dataclass(frozen=True, slots=True)
class Latency:
    category: Category | None = None
    ms: float = 0


@dataclass(frozen=True, slots=True)
class Frame:
    category: Category | None = None
    text: str = ""
    count: int = 1


@dataclass(frozen=True, slots=True)
class Burst:
    """Every subscribed topic updates ``factor`` times as often for ``seconds`` (the whole server)."""

    category: Category | None = None  # not scoped: the tick drives every market
    factor: float = 10.0
    seconds: float | None = 30.0


@dataclass(frozen=True, slots=True)
class Resume:
    category: Category | None = None


Fault = (Close | Silent | Garbage | RejectSubscribe | SkipU | U1Snapshot | SnapshotBeforeAck | Refuse | Latency
         | Frame | Burst | Resume)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A forced subscribe failure: the indices of the args to name, and how to list them."""

    indices: tuple[int, ...]
    form: str | None = None

_KINDS: dict[str, type[Any]] = {
    "close": Close,
    "silent": Silent,
    "garbage": Garbage,
    "reject_subscribe": RejectSubscribe,
    "skip_u": SkipU,
    "u1_snapshot": U1Snapshot,
    "snapshot_before_ack": SnapshotBeforeAck,
    "refuse": Refuse,
    "latency": Latency,
    "frame": Frame,
    "burst": Burst,
    "resume": Resume,
}
_NAMES = {cls: name for name, cls in _KINDS.items()}
GARBAGE_KINDS = ("mixed", "text", "json", "binary")
REFUSE_MODES = ("close", "503")
REJECT_FORMS = ("comma", "space", "none")


def _number(name: str, value: Any, *, integer: bool, minimum: float) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or not math.isfinite(value) or value < minimum:
        kind = "an integer" if integer else "a number"
        raise FaultError(f"{name} must be {kind} >= {minimum:g}")
    return value


def parse_fault(obj: Any) -> Fault:
    """Validate a fault command. Raises :class:`FaultError` naming the first problem.

    >>> parse_fault({"fault": "silent", "seconds": 2, "category": "spot"})
    Silent(category=<Category.SPOT: 'spot'>, seconds=2)
    """
    if not isinstance(obj, dict):
        raise FaultError("fault command must be a json object")
    name = obj.get("fault")
    cls = _KINDS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise FaultError(f"unknown fault {name!r}")
    fields = dict(obj)
    del fields["fault"]
    allowed = set(cls.__dataclass_fields__)
    for key in fields:
        if key not in allowed:
            raise FaultError(f"unexpected key {key!r} for fault {name!r}")
    if fields.get("category") is not None:
        try:
            fields["category"] = Category(fields["category"])
        except ValueError as exc:
            raise FaultError(f"unknown category {fields['category']!r}") from exc
    if fields.get("seconds") is not None:
        _number("seconds", fields["seconds"], integer=False, minimum=0)
    if "count" in fields and (fields["count"] is not None or cls is not RejectSubscribe):
        _number("count", fields["count"], integer=True, minimum=1)
    if "code" in fields:
        code = _number("code", fields["code"], integer=True, minimum=1000)
        if code > 4999 or code in (
            1004,
            1005,
            1006,
            1015,
        ):  # RFC 6455 §7.4.1: never sent on the wire
            raise FaultError(f"close code {code} cannot be sent")
    if fields.get("ms") is not None:
        _number("ms", fields["ms"], integer=False, minimum=0)
    if "factor" in fields:
        _number("factor", fields["factor"], integer=False, minimum=1)
        if fields["factor"] > 100:
            raise FaultError("factor must be at most 100")
    for key in ("reason", "symbol", "text", "form"):
        if fields.get(key) is not None and not isinstance(fields[key], str):
            raise FaultError(f"{key} must be a string")
    for key in ("abrupt", "replies"):
        if key in fields and not isinstance(fields[key], bool):
            raise FaultError(f"{key} must be true or false")
    if cls is Frame and not fields.get("text"):
        raise FaultError("text must be a non-empty string")
    if fields.get("form") is not None and fields["form"] not in REJECT_FORMS:
        raise FaultError(f"form must be one of {', '.join(REJECT_FORMS)}")
    if cls is Garbage and fields.get("kind", "mixed") not in GARBAGE_KINDS:
        raise FaultError(f"kind must be one of {', '.join(GARBAGE_KINDS)}")
    if cls is Refuse and fields.get("mode", "close") not in REFUSE_MODES:
        raise FaultError(f"mode must be one of {', '.join(REFUSE_MODES)}")
    if cls is RejectSubscribe:
        if fields.get("count") is not None and fields.get("symbol") is not None:
            raise FaultError("give count or symbol, not both")
        if fields.get("count") is None and fields.get("symbol") is None:
            fields["count"] = 1
    fault: Fault = cls(**fields)
    return fault


def describe(fault: Fault) -> dict[str, Any]:
    """The fault as JSON-ready data, ``fault`` key first."""
    data = {k: v for k, v in asdict(fault).items() if v is not None}
    return {"fault": _NAMES[type(fault)], **data}


def _matches(scope: Category | None, category: Category) -> bool:
    return scope is None or scope is category


@dataclass(slots=True)
class _Rule:
    category: Category | None
    remaining: int | None = None  # None: until resume / expiry
    symbol: str | None = None
    until: float | None = None  # monotonic deadline
    mode: str = "close"


class FaultBook:
    """The rules that decide future events. ``clock`` is a monotonic clock in seconds.

    Every query consumes what it uses: a ``reject_subscribe`` with a count
    is spent one subscribe at a time.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._rejects: list[_Rule] = []
        self._before_ack: list[_Rule] = []
        self._refusals: list[_Rule] = []
        self._latency: dict[Category | None, float] = {}
        self._burst: tuple[float, float | None] | None = None  # (factor, until)

    def rate_factor(self) -> float:
        """How many times the normal update rate the markets run at now (``burst``)."""
        if self._burst is None:
            return 1.0
        factor, until = self._burst
        if until is not None and self._clock() >= until:
            self._burst = None
            return 1.0
        return factor

    def add(self, fault: RejectSubscribe | SnapshotBeforeAck | Refuse | Latency | Burst) -> None:
        if isinstance(fault, Burst):
            until = None if fault.seconds is None else self._clock() + fault.seconds
            self._burst = (fault.factor, until) if fault.factor > 1 else None
            return
        if isinstance(fault, RejectSubscribe):
            self._rejects.append(_Rule(fault.category, fault.count, fault.symbol, mode=fault.form or ""))
        elif isinstance(fault, SnapshotBeforeAck):
            self._before_ack.append(_Rule(fault.category, fault.count))
        elif isinstance(fault, Latency):
            if fault.ms:
                self._latency[fault.category] = fault.ms / 1000
            else:
                self._latency.pop(fault.category, None)
        else:
            until = None if fault.seconds is None else self._clock() + fault.seconds
            self._refusals.append(_Rule(fault.category, until=until, mode=fault.mode))

    def clear(self, category: Category | None = None) -> None:
        """Drop every rule, or with ``category`` the rules of that category and the unscoped ones."""
        for rules in (self._rejects, self._before_ack, self._refusals):
            rules[:] = [r for r in rules if category is not None and r.category not in (None, category)]
        for scope in list(self._latency):
            if category is None or scope in (None, category):
                del self._latency[scope]
        self._burst = None

    def take_reject(self, category: Category, symbols: list[str]) -> Rejection | None:
        """The args to name in a forced failure, or ``None`` if this subscribe passes.

        A symbol rule fails any request that names the symbol (and is not
        spent), naming every arg of that symbol; a count rule fails the next
        request whatever it names, naming its first arg.
        """
        for rule in self._rejects:
            if not _matches(rule.category, category):
                continue
            form = rule.mode or None
            if rule.symbol is not None:
                if rule.symbol in symbols:
                    return Rejection(tuple(i for i, s in enumerate(symbols) if s == rule.symbol), form)
                continue
            if rule.remaining:
                rule.remaining -= 1
                if rule.remaining == 0:
                    self._rejects.remove(rule)
                return Rejection((0,), form)
        return None

    def latency(self, category: Category) -> float:
        """Seconds every request of a ``category`` connection waits before it takes effect."""
        return max(self._latency.get(category, 0.0), self._latency.get(None, 0.0))

    def take_snapshot_before_ack(self, category: Category) -> bool:
        """True once per counted ``snapshot_before_ack`` matching ``category``."""
        for rule in self._before_ack:
            if _matches(rule.category, category) and rule.remaining:
                rule.remaining -= 1
                if rule.remaining == 0:
                    self._before_ack.remove(rule)
                return True
        return False

    def refusal(self, category: Category) -> str | None:
        """The refuse mode in force for a new connection to ``category``, if any."""
        now = self._clock()
        self._refusals[:] = [r for r in self._refusals if r.until is None or r.until > now]
        for rule in self._refusals:
            if _matches(rule.category, category):
                return rule.mode
        return None

    def state(self) -> dict[str, list[dict[str, Any]]]:
        """Active rules as JSON-ready data, for ``GET /control/state``."""
        now = self._clock()

        def scope(rule: _Rule) -> str | None:
            return None if rule.category is None else str(rule.category)

        return {
            "reject_subscribe": [
                {"category": scope(r), "remaining": r.remaining, "symbol": r.symbol, "form": r.mode or None}
                for r in self._rejects
            ],
            "latency": [
                {"category": None if c is None else str(c), "ms": round(v * 1000, 3)} for c, v in self._latency.items()
            ],
            "snapshot_before_ack": [{"category": scope(r), "remaining": r.remaining} for r in self._before_ack],
            "refuse": [
                {
                    "category": scope(r),
                    "mode": r.mode,
                    "seconds_left": None if r.until is None else round(max(0.0, r.until - now), 3),
                }
                for r in self._refusals
                if r.until is None or r.until > now
            ],
            "burst": [] if self.rate_factor() == 1.0 or self._burst is None else [
                {"factor": self._burst[0],
                 "seconds_left": None if self._burst[1] is None else round(max(0.0, self._burst[1] - now), 3)}],
        }


_GARBAGE_TEXT = (
    b"<html><body><h1>502 Bad Gateway</h1></body></html>",
    b'{"topic":"orderbook.50.BTCUSDT","data":',
    b"\x00\x01not json at all",
)
_GARBAGE_JSON = (
    b'{"topic":42,"type":"snapshot","data":"nope"}',
    b"[1,2,3]",
    b'{"success":"maybe","op":null}',
    b"null",
    b'"pong"',
)


def garbage_payloads(kind: str, count: int) -> list[tuple[bool, bytes]]:
    """``count`` unparseable frames as ``(binary, payload)``.

    ``text``: text frames that are not JSON; ``json``: valid JSON of the
    wrong schema; ``binary``: binary frames; ``mixed`` cycles through the
    three, starting with a non-JSON text frame.
    """
    out: list[tuple[bool, bytes]] = []
    for i in range(count):
        which = ("text", "json", "binary")[i % 3] if kind == "mixed" else kind
        j = i // 3 if kind == "mixed" else i
        if which == "text":
            out.append((False, _GARBAGE_TEXT[j % len(_GARBAGE_TEXT)]))
        elif which == "json":
            out.append((False, _GARBAGE_JSON[j % len(_GARBAGE_JSON)]))
        else:
            out.append((True, bytes([0xFF, 0xFE, j % 256]) + b"\x00garbage"))
    return out
