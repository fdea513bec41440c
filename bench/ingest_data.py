"""What the ingest feed (``bench/ingest_feed.py``) sends, computed before it sends anything.

Pure: no sockets, no clock. Everything is deterministic from a seed, so the
feed knows the truth (the book every consumer must end with) without keeping
a book of its own while it sends.

* **Books.** Per symbol, a cycle of ``2 × steps`` deltas: ``steps`` random
  deltas (1–4 levels on a side, some of them deletes with size ``"0"``, some
  inserts, most size changes, biased to the top of the book; never crossed,
  never a delete of a level that is not there, at most :data:`MAX_LEVELS` per
  side so that the orderbook.50 snapshot holds every level a delta can touch)
  followed by their inverses in reverse order. The book is back where it
  started after each cycle, so a topic can run for ever from templates while
  ``u`` still rises by one per delta. :meth:`BookCycle.state` replays the
  cycle to any position: the snapshot sent on subscribe and the truth after
  the last delta.
* **Trades.** Per symbol, a cycle of publicTrade frames of 1–3 trades.
* **Tickers.** Per symbol, a cycle of spot ticker snapshots (linear: one full
  snapshot, then deltas of the fields that changed).

Frames are :class:`Template` objects: the WebSocket frame's bytes cut at a
few fixed-width slots (the send time in ms, ``u``, ``seq``, ``cs``, trade
ids), filled in at send time with one ``bytes.join``. Slots keep their width,
so the frame header (the payload length) is computed once.

Message shapes are the simulator's (``simulator/protocol.py``: Bybit's key
order for spot and linear, checked against recorded frames in
``tests/test_simulator.py``).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from simulator.protocol import Category, Topic, TopicKind, orderbook_message, ticker_message, trade_message
from transport.frames import Opcode, encode_frame

__all__ = [
    "KIND_WEIGHTS",
    "MAX_LEVELS",
    "BookCycle",
    "Market",
    "Template",
    "book_snapshot",
    "book_templates",
    "compare_top",
    "instruments",
    "price_text",
    "symbols",
    "ticker_snapshot",
    "ticker_templates",
    "trade_templates",
]

#: Levels per side never exceed this: an orderbook.50 snapshot holds the whole book.
MAX_LEVELS = 50
MIN_LEVELS = 30
START_LEVELS = 42
#: Frames per topic kind in one round of the schedule, per symbol: the book moves
#: most (Bybit pushes orderbook.50 every 20 ms, spot tickers every 50 ms, trades on
#: every match: on a busy pair the book is about half of the frames).
KIND_WEIGHTS = {"orderbook": 2, "publicTrade": 1, "tickers": 1}

_BASES = ("BTC ETH SOL XRP DOGE ADA AVAX LINK DOT TRX LTC BCH UNI ATOM ETC XLM FIL APT ARB OP NEAR ICP HBAR VET "
          "MKR AAVE GRT ALGO QNT EGLD SAND MANA AXS THETA FTM EOS XTZ FLOW CHZ KAVA ZEC DASH NEO IOTA COMP SNX CRV "
          "LDO RUNE SUI").split()

TS_WIDTH = 13  # milliseconds since the epoch, 13 digits until the year 2286
U0 = 1_000_000_000  # order book update ids: 10 digits for the first 9e9 deltas of a topic
SEQ0 = 40_000_000_000  # book cross sequence: 11 digits
CS0 = 20_000_000_000  # ticker cross sequence: 11 digits
TRADE_SEQ0 = 1_000_000_000
SPOT_TRADE_ID0 = 2_200_000_000_000_000_000  # spot trade ids are numeric text, 19 digits


def symbols(n: int) -> list[str]:
    """``n`` spot-style symbols: real bases first (BTCUSDT, ETHUSDT, ...), then S051USDT, ..."""
    names = [f"{b}USDT" for b in _BASES[:n]]
    names += [f"S{i:03d}USDT" for i in range(len(names) + 1, n + 1)]
    return names


def price_text(ticks: int, decimals: int) -> str:
    """``ticks`` × 10^-decimals as plain decimal text: ``price_text(6000001, 2) == "60000.01"``."""
    if decimals == 0:
        return str(ticks)
    s = str(ticks).rjust(decimals + 1, "0")
    return f"{s[:-decimals]}.{s[-decimals:]}"


@dataclass(frozen=True)
class Market:
    """One symbol's price scale: mid price in ticks, price and size decimals."""

    symbol: str
    index: int
    mid: int
    decimals: int
    size_decimals: int

    @classmethod
    def of(cls, symbol: str, index: int, seed: int) -> Market:
        rng = random.Random(f"{seed}:{symbol}:market")
        decimals = rng.choice((1, 2, 2, 3, 4))
        mid = rng.randint(10 ** (decimals + 1), 6 * 10 ** (decimals + 4))
        return cls(symbol, index, mid, decimals, rng.choice((3, 4, 6)))

    def price(self, ticks: int) -> str:
        return price_text(ticks, self.decimals)

    def size(self, rng: random.Random) -> str:
        return price_text(rng.randint(1, 5 * 10 ** (self.size_decimals + 1)), self.size_decimals)


Level = tuple[int, str]  # (price in ticks, size text); size "0" deletes in a delta
Delta = tuple[tuple[Level, ...], tuple[Level, ...]]  # (bids best first, asks best first)


class BookCycle:
    """A book and a cycle of deltas that returns it to its start (see the module docstring)."""

    def __init__(self, market: Market, seed: int, steps: int) -> None:
        self.market = market
        rng = random.Random(f"{seed}:{market.symbol}:book")
        bids: dict[int, str] = {}
        asks: dict[int, str] = {}
        price = market.mid - 1
        for _ in range(START_LEVELS):
            bids[price] = market.size(rng)
            price -= rng.randint(1, 3)
        price = market.mid + 1
        for _ in range(START_LEVELS):
            asks[price] = market.size(rng)
            price += rng.randint(1, 3)
        self.bids0, self.asks0 = dict(bids), dict(asks)
        forward: list[Delta] = []
        backward: list[Delta] = []
        for _ in range(steps):
            delta, inverse = self._step(rng, bids, asks)
            forward.append(delta)
            backward.append(inverse)
        self.deltas: list[Delta] = forward + backward[::-1]
        if self.state(len(self.deltas) - 1) == (self.bids0, self.asks0) or self._replay(self.deltas) != (
                self.bids0, self.asks0):
            raise AssertionError("the cycle must end where it started")

    def _step(self, rng: random.Random, bids: dict[int, str], asks: dict[int, str]) -> tuple[Delta, Delta]:
        n_bids, n_asks = rng.choice(((1, 0), (0, 1), (1, 1), (2, 1), (1, 2), (2, 2), (3, 1), (1, 3), (4, 2), (2, 4)))
        out: list[list[Level]] = [[], []]
        back: list[list[Level]] = [[], []]
        for side_no, (side, count) in enumerate(((bids, n_bids), (asks, n_asks))):
            is_bid = side_no == 0
            touched: set[int] = set()
            for _ in range(count):
                best_first = sorted(side, reverse=is_bid)
                roll = rng.random()
                if roll < 0.12 and len(side) > MIN_LEVELS:
                    op = "delete"
                elif roll < 0.27 and len(side) < MAX_LEVELS:
                    op = "insert"
                else:
                    op = "update"
                if op == "insert":
                    price = self._free_price(rng, side, bids, asks, is_bid, touched)
                    if price is None:
                        op = "update"
                if op != "insert":
                    candidates = [p for p in best_first if p not in touched]
                    if not candidates:
                        continue
                    price = candidates[min(int(rng.expovariate(1 / 6)), len(candidates) - 1)]
                old = side.get(price)
                if op == "delete":
                    new = "0"
                    del side[price]
                else:
                    new = self.market.size(rng)
                    while new == old:
                        new = self.market.size(rng)
                    side[price] = new
                touched.add(price)
                out[side_no].append((price, new))
                back[side_no].append((price, old if old is not None else "0"))
        delta = tuple(tuple(sorted(levels, key=lambda lv: -lv[0] if i == 0 else lv[0])) for i, levels in enumerate(out))
        inverse = tuple(tuple(sorted(levels, key=lambda lv: -lv[0] if i == 0 else lv[0]))
                        for i, levels in enumerate(back))
        return delta, inverse  # type: ignore[return-value]  # two sides, as Delta says

    @staticmethod
    def _free_price(rng: random.Random, side: dict[int, str], bids: dict[int, str], asks: dict[int, str],
                    is_bid: bool, touched: set[int]) -> int | None:
        """A price for a new level on ``side``: near the top, inside the spread at most (never crossing)."""
        best_bid, best_ask = max(bids), min(asks)
        for _ in range(20):
            offset = int(rng.expovariate(1 / 8))
            price = best_ask - 1 - offset if is_bid else best_bid + 1 + offset
            if price > 0 and price not in side and price not in touched and (
                    price < best_ask if is_bid else price > best_bid):
                return price
        return None

    def state(self, position: int) -> tuple[dict[int, str], dict[int, str]]:
        """The book after ``position`` deltas from the start (any position: the cycle repeats)."""
        return self._replay(self.deltas[:position % len(self.deltas)])

    def _replay(self, deltas: list[Delta]) -> tuple[dict[int, str], dict[int, str]]:
        bids, asks = dict(self.bids0), dict(self.asks0)
        for delta_bids, delta_asks in deltas:
            for side, levels in ((bids, delta_bids), (asks, delta_asks)):
                for price, size in levels:
                    if size == "0":
                        del side[price]
                    else:
                        side[price] = size
        return bids, asks

    def top(self, position: int, levels: int) -> dict[str, list[list[str]]]:
        """Best ``levels`` per side after ``position`` deltas, as ``[price text, size text]``, best first."""
        bids, asks = self.state(position)
        price = self.market.price
        return {"bids": [[price(p), bids[p]] for p in sorted(bids, reverse=True)[:levels]],
                "asks": [[price(p), asks[p]] for p in sorted(asks)[:levels]]}


# --- templates ---------------------------------------------------------------------------------


@dataclass
class Template:
    """A WebSocket text frame with fixed-width slots: ``pieces[0] + slot0 + pieces[1] + ...``.

    A slot is ``None`` (the send time, ms) or ``(multiplier, offset)``: the
    decimal text of ``offset + multiplier × n`` for the topic's frame number ``n``.
    """

    pieces: tuple[bytes, ...]
    slots: tuple[tuple[int, int] | None, ...]
    size: int = 0  # bytes on the wire

    def render(self, ts: bytes, n: int) -> bytes:
        pieces = self.pieces
        out = [pieces[0]]
        for i, slot in enumerate(self.slots):
            out.append(ts if slot is None else str(slot[1] + slot[0] * n).encode())
            out.append(pieces[i + 1])
        return b"".join(out)


@dataclass
class _Slots:
    """Sentinel numbers that mark slots in a message before it is cut into a :class:`Template`."""

    found: dict[str, tuple[int, int] | None] = field(default_factory=dict)

    def ts(self) -> int:
        return self._mark(None, TS_WIDTH)

    def n(self, multiplier: int, offset: int) -> int:
        return self._mark((multiplier, offset), len(str(offset)))

    def _mark(self, slot: tuple[int, int] | None, width: int) -> int:
        sentinel = int("9" + "7" * (width - 4) + f"{len(self.found):03d}")
        self.found[str(sentinel)] = slot
        return sentinel

    def template(self, message: dict[str, Any]) -> Template:
        payload = json.dumps(message, separators=(",", ":")).encode()
        frame = encode_frame(Opcode.TEXT, payload)
        pattern = re.compile(b"|".join(re.escape(s.encode()) for s in self.found))
        pieces, slots, at = [], [], 0
        for match in pattern.finditer(frame):
            pieces.append(frame[at:match.start()])
            slots.append(self.found[match.group().decode()])
            at = match.end()
        pieces.append(frame[at:])
        return Template(tuple(pieces), tuple(slots), len(frame))


def _topic(kind: TopicKind, symbol: str, depth: int | None = None) -> Topic:
    return Topic(kind, symbol, depth=depth)


def _levels(market: Market, levels: tuple[Level, ...]) -> list[list[str]]:
    return [[market.price(p), s] for p, s in levels]


def book_snapshot(cycle: BookCycle, category: Category, depth: int, position: int, ts_ms: int) -> bytes:
    """The snapshot frame of ``orderbook.{depth}.{symbol}`` after ``position`` deltas (sent on subscribe)."""
    market = cycle.market
    top = cycle.top(position, min(depth, MAX_LEVELS))
    message = orderbook_message(category, _topic(TopicKind.ORDERBOOK, market.symbol, depth), "snapshot",
                                top["bids"], top["asks"], U0 + position, SEQ0 + position, ts_ms, ts_ms)
    return encode_frame(Opcode.TEXT, json.dumps(message, separators=(",", ":")).encode())


def book_templates(cycle: BookCycle, category: Category, depth: int) -> list[Template]:
    """One delta template per step of the cycle; frame ``n`` (0-based count of deltas sent before it)
    carries ``u = U0 + n + 1``."""
    market = cycle.market
    topic = _topic(TopicKind.ORDERBOOK, market.symbol, depth)
    out = []
    for bids, asks in cycle.deltas:
        slots = _Slots()
        ts = slots.ts()
        message = orderbook_message(category, topic, "delta", _levels(market, bids), _levels(market, asks),
                                    slots.n(1, U0 + 1), slots.n(1, SEQ0 + 1), ts, ts)
        out.append(slots.template(message))
    return out


def trade_templates(market: Market, category: Category, seed: int, count: int) -> list[Template]:
    """A cycle of publicTrade frames of 1–3 trades each near the mid price."""
    rng = random.Random(f"{seed}:{market.symbol}:trades")
    out = []
    for _ in range(count):
        slots = _Slots()
        ts = slots.ts()
        trades = []
        for k in range(rng.choice((1, 1, 1, 2, 2, 3))):
            side = rng.choice(("Buy", "Sell"))
            price = market.mid + (1 if side == "Buy" else -1) * rng.randint(1, 4)
            trade: dict[str, Any] = {"T": ts, "s": market.symbol, "S": side, "v": market.size(rng),
                                     "p": market.price(price)}
            if category is Category.LINEAR:
                trade["L"] = rng.choice(("PlusTick", "ZeroPlusTick", "MinusTick", "ZeroMinusTick"))
                trade["i"] = f"{rng.getrandbits(32):08x}-d8dd-5b31-9112-{rng.getrandbits(48):012x}"
            else:
                trade["i"] = str(slots.n(4, SPOT_TRADE_ID0 + k))
            trade["BT"] = False
            trade["seq"] = slots.n(1, TRADE_SEQ0)
            trades.append(trade)
        out.append(slots.template(trade_message(category, f"publicTrade.{market.symbol}", trades, ts)))
    return out


def _spot_ticker_data(market: Market, rng: random.Random) -> dict[str, str]:
    last = market.mid + rng.randint(-40, 40)
    return {"symbol": market.symbol, "lastPrice": market.price(last),
            "highPrice24h": market.price(market.mid + 900), "lowPrice24h": market.price(market.mid - 900),
            "prevPrice24h": market.price(market.mid - 120), "volume24h": f"{rng.randint(6000, 9000)}.866843",
            "turnover24h": f"{rng.randint(100_000_000, 200_000_000)}.22907118",
            "price24hPcnt": f"0.0{rng.randint(100, 999)}", "usdIndexPrice": market.price(market.mid + 3) + "4"}


def _linear_ticker_full(market: Market, rng: random.Random) -> dict[str, str]:
    last = market.mid + rng.randint(-40, 40)
    return {"symbol": market.symbol, "tickDirection": "PlusTick", "price24hPcnt": "0.017103",
            "lastPrice": market.price(last), "prevPrice24h": market.price(market.mid - 120),
            "highPrice24h": market.price(market.mid + 900), "lowPrice24h": market.price(market.mid - 900),
            "prevPrice1h": market.price(market.mid - 20), "markPrice": market.price(last + 1),
            "indexPrice": market.price(last + 2), "openInterest": "68744.761", "openInterestValue": "1183601235.91",
            "turnover24h": "1570383121.943499", "volume24h": "91705.276", "fundingIntervalHour": "8",
            "fundingCap": "0.005", "nextFundingTime": "1673280000000", "fundingRate": "-0.000212",
            "bid1Price": market.price(last - 1), "bid1Size": market.size(rng), "ask1Price": market.price(last),
            "ask1Size": market.size(rng), "preOpenPrice": "", "preQty": "", "curPreListingPhase": ""}


def ticker_snapshot(market: Market, category: Category, seed: int, position: int, ts_ms: int) -> bytes:
    """The ticker frame sent on subscribe: spot's next snapshot; linear's full snapshot."""
    rng = random.Random(f"{seed}:{market.symbol}:ticker-snapshot")
    data = _spot_ticker_data(market, rng) if category is Category.SPOT else _linear_ticker_full(market, rng)
    message = ticker_message(category, f"tickers.{market.symbol}", "snapshot", data, CS0 + position, ts_ms)
    return encode_frame(Opcode.TEXT, json.dumps(message, separators=(",", ":")).encode())


def ticker_templates(market: Market, category: Category, seed: int, count: int) -> list[Template]:
    """Spot: full snapshots (Bybit spot tickers are snapshots only). Linear: deltas of what changed."""
    rng = random.Random(f"{seed}:{market.symbol}:tickers")
    out = []
    for _ in range(count):
        slots = _Slots()
        ts = slots.ts()
        if category is Category.SPOT:
            data, kind = _spot_ticker_data(market, rng), "snapshot"
        else:
            last = market.mid + rng.randint(-40, 40)
            data = {"symbol": market.symbol, "lastPrice": market.price(last), "markPrice": market.price(last + 1),
                    "bid1Price": market.price(last - 1), "bid1Size": market.size(rng)}
            if rng.random() < 0.5:
                data.update({"ask1Price": market.price(last), "ask1Size": market.size(rng)})
            kind = "delta"
        out.append(slots.template(ticker_message(category, f"tickers.{market.symbol}", kind, data,
                                                 slots.n(1, CS0 + 1), ts)))
    return out


def instruments(names: list[str], category: str, seed: int) -> list[dict[str, Any]]:
    """``GET /v5/market/instruments-info`` list entries (the fields the peers read), Bybit's shapes."""
    out = []
    for i, name in enumerate(names):
        market = Market.of(name, i, seed)
        tick = price_text(1, market.decimals)
        step = price_text(1, market.size_decimals)
        base = name[:-4]
        if category == "spot":
            out.append({"symbol": name, "baseCoin": base, "quoteCoin": "USDT", "innovation": "0",
                        "status": "Trading", "marginTrading": "none", "stTag": "0",
                        "lotSizeFilter": {"basePrecision": step, "quotePrecision": "0.00000001",
                                          "minOrderQty": step, "maxOrderQty": "100000", "minOrderAmt": "1",
                                          "maxOrderAmt": "2000000"},
                        "priceFilter": {"tickSize": tick}, "riskParameters": {"priceLimitRatioX": "0.05",
                                                                              "priceLimitRatioY": "0.1"}})
        else:
            out.append({"symbol": name, "contractType": "LinearPerpetual", "status": "Trading", "baseCoin": base,
                        "quoteCoin": "USDT", "launchTime": "1585526400000", "deliveryTime": "0",
                        "deliveryFeeRate": "", "priceScale": str(market.decimals),
                        "leverageFilter": {"minLeverage": "1", "maxLeverage": "100.00", "leverageStep": "0.01"},
                        "priceFilter": {"minPrice": tick, "maxPrice": "1999999.80", "tickSize": tick},
                        "lotSizeFilter": {"maxOrderQty": "1190.000", "minOrderQty": step, "qtyStep": step,
                                          "postOnlyMaxOrderQty": "1190.000", "maxMktOrderQty": "500.000",
                                          "minNotionalValue": "5"},
                        "unifiedMarginTrade": True, "fundingInterval": 480, "settleCoin": "USDT",
                        "copyTrading": "both", "upperFundingRate": "0.005", "lowerFundingRate": "-0.005",
                        "isPreListing": False, "preListingInfo": None})
    return out


# --- the check ---------------------------------------------------------------------------------


def _numbers(raw: Any) -> list[tuple[Decimal, Decimal]]:
    return [(Decimal(str(level[0])), Decimal(str(level[1]))) for level in raw]


def compare_top(have: dict[str, Any], truth: dict[str, Any], levels: int) -> str | None:
    """``None`` when the best ``levels`` per side of ``have`` equal the truth's, else what differs.

    Levels are ``[price, size]`` in any numeric form (Bybit's text, a float,
    a Decimal), compared as numbers: ``"16578.50"`` equals ``16578.5``.
    """
    for side in ("bids", "asks"):
        mine, want = _numbers(have.get(side) or [])[:levels], _numbers(truth[side])[:levels]
        if mine != want:
            at = next((k for k, (x, y) in enumerate(zip(mine, want, strict=False)) if x != y),
                      min(len(mine), len(want)))
            got = [str(x) for x in mine[at]] if at < len(mine) else None
            wanted = [str(x) for x in want[at]] if at < len(want) else None
            return f"{side} differ at level {at}: have {got}, want {wanted} ({len(mine)} vs {len(want)} levels)"
    return None
