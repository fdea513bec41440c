"""Seeded fake markets: instrument specs, random-walk prices, trades and order books. Pure.

Prices and sizes are integers in units of the instrument's last printed
decimal (``price_units``, ``qty_units``) and become exact decimal strings
only at the edge (:meth:`InstrumentSpec.price`, :meth:`InstrumentSpec.qty`):
never floats on the wire. Spot prints without trailing zeros (``"20575"``,
``"75845.4"``), linear with fixed decimals (``"66666.60"``), as in the
recorded frames.

Start prices, ticks and size steps come from the built-in (made-up) table
in :mod:`simulator.instruments`; a symbol not in it (``any`` symbol policy
only) gets a price derived from a hash of its name. Each step moves the
price by a relative amount in whole ticks, pulled gently back towards the
start price, so BTCUSDT stays near 95,000 and DOGEUSDT near 0.2.

Nothing here reads a clock or a global random source: each
:class:`Instrument` owns a ``random.Random`` derived from the server seed,
the category and the symbol, and every method that stamps time takes
``now_ms``. The same seed gives the same price path per instrument,
whatever order clients subscribe in.
"""

from __future__ import annotations

import hashlib
import math
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from simulator.instruments import DEFAULT_STEP_VOL, QUOTE_USD, base_usd, listing, quote_of
from simulator.protocol import Category

__all__ = [
    "Book",
    "Instrument",
    "InstrumentSpec",
    "Trade",
    "instrument_spec",
    "interval_bounds",
    "plain_decimal",
]


@dataclass(frozen=True, slots=True)
class InstrumentSpec:
    """How one symbol of one category is priced and printed.

    ``price_decimals`` digits are printed; a tick is ``tick_units`` units of
    ``10**-price_decimals`` (linear BTCUSDT: 2 decimals, tick 0.10). The
    quantity step is one unit of ``10**-qty_decimals``. ``step_vol`` is the
    relative volatility of one price step.
    """

    category: Category
    symbol: str
    price_decimals: int
    tick_units: int
    qty_decimals: int
    start_units: int
    step_vol: float = DEFAULT_STEP_VOL

    def price(self, units: int) -> str:
        """Exact price string for ``units``."""
        return self._format(units, self.price_decimals)

    def qty(self, units: int) -> str:
        """Exact size string for ``units``."""
        return self._format(units, self.qty_decimals)

    def _format(self, units: int, decimals: int) -> str:
        value = Decimal(units).scaleb(-decimals)
        if self.category is Category.LINEAR:
            return f"{value:.{decimals}f}"
        return plain_decimal(value)


def plain_decimal(value: Decimal) -> str:
    """Decimal without trailing zeros or exponent: 20575, 75845.4, 0.00039."""
    text = f"{value:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _stable_fraction(text: str) -> float:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def instrument_spec(category: Category, symbol: str) -> InstrumentSpec:
    """Spec of ``symbol`` on ``category``: from the table when it is listed there, else derived.

    Listed (:data:`~simulator.instruments.LISTINGS`): the table's start
    price, tick and quantity step. Otherwise (only reachable with the
    ``any`` symbol policy): the base coin's USD value from the table when it
    has one (``ETHEUR``, linear ``PEPEUSDT``), else 0.01 to 1000 USD from a
    hash of the name, over the quote coin's USD value; ticks give five
    significant digits; size steps shrink as the base coin's value grows.
    """
    row = listing(symbol)
    rules = row.rules(category) if row is not None else None
    if row is not None and rules is not None:
        units = int(Decimal(row.price).scaleb(rules.price_decimals))
        return InstrumentSpec(
            category,
            symbol,
            rules.price_decimals,
            rules.tick_units,
            rules.qty_decimals,
            units,
            row.step_vol,
        )
    quote = quote_of(symbol)
    base = symbol[: len(symbol) - len(quote)] if quote else symbol
    usd = base_usd(base) or 10 ** (-2 + 5 * _stable_fraction(base))
    price = usd / QUOTE_USD.get(quote, 1.0)
    price_decimals = max(0, 4 - math.floor(math.log10(price)))
    # size steps follow the base coin's value, as in the table: BTC spot 0.000001, linear 0.001
    qty_decimals = max(0, math.floor(math.log10(usd)) + (2 if category is Category.SPOT else -1))
    units = round(price * 10**price_decimals)
    return InstrumentSpec(category, symbol, price_decimals, 1, qty_decimals, max(units, 100))


@dataclass(frozen=True, slots=True)
class Trade:
    """One fill: ``side`` is the taker side, ``tick_direction`` linear only."""

    time_ms: int
    side: str
    price_units: int
    qty_units: int
    tick_direction: str
    trade_id: str
    seq: int


#: Pull towards the start price per step, as a fraction of the distance: a half-life of about
#: 14,000 steps (23 minutes at 10 Hz), which keeps the price within about 1 % of the table's.
_REVERSION = 0.00005
_MINUTE_MS = 60_000
_DAY_MS = 86_400_000


def interval_bounds(interval: str, now_ms: int) -> tuple[int, int]:
    """``(start, end)`` of the candle holding ``now_ms``; ``end`` is ``next_start - 1`` (UTC).

    Weeks start on Monday, months on the 1st, as on Bybit.
    """
    if interval == "M":
        now = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
        month_start = datetime(now.year, now.month, 1, tzinfo=UTC)
        next_month = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
        return int(month_start.timestamp() * 1000), int(next_month.timestamp() * 1000) - 1
    if interval == "W":
        monday_offset = 4 * _DAY_MS  # 1970-01-01 was a Thursday; the first Monday is 1970-01-05
        length = 7 * _DAY_MS
        start = (now_ms - monday_offset) // length * length + monday_offset
        return start, start + length - 1
    length = _DAY_MS if interval == "D" else int(interval) * _MINUTE_MS
    start = now_ms // length * length
    return start, start + length - 1


class Instrument:
    """One symbol's market: price walk, top of book, trades and 24 h statistics.

    :meth:`step` advances it by one update; every feed of the symbol then
    reads the same state (so ``tickers``, ``orderbook`` and ``publicTrade``
    agree). ``last_price`` is the latest trade's price; ``cross_seq`` only
    rises, by a random amount per step, like Bybit's ``cs``/``seq``.
    """

    def __init__(self, spec: InstrumentSpec, seed: int | str) -> None:
        self.spec = spec
        self.rng = random.Random(f"{seed}:{spec.category}:{spec.symbol}")
        rng, tick = self.rng, spec.tick_units
        price = spec.start_units / 10**spec.price_decimals
        base_value = price * QUOTE_USD.get(quote_of(spec.symbol), 1.0)
        self._typical_qty = max(1, round(2000 / base_value * 10**spec.qty_decimals))
        self.price = spec.start_units
        self.last_price = self.price
        self.spread = tick
        self.bid = self.price
        self.ask = self.price + tick
        self.tick_direction = "ZeroPlusTick"
        self.cross_seq = rng.randint(10**9, 10**10)
        self.trade_seq = rng.randint(10**9, 10**10)
        self._trade_id = rng.randint(2 * 10**18, 3 * 10**18)
        self.trades: list[Trade] = []
        # a day's range of a few percent (far less for a stable coin's smaller step_vol)
        calm = spec.step_vol / DEFAULT_STEP_VOL
        self.prev_price_24h = self._round(self.price * (1 + calm * rng.uniform(-0.03, 0.03)))
        self.prev_price_1h = self._round(self.price * (1 + calm * rng.uniform(-0.005, 0.005)))
        self.high_24h = self._round(max(self.price, self.prev_price_24h) * (1 + calm * rng.uniform(0.002, 0.015)))
        self.low_24h = self._round(min(self.price, self.prev_price_24h) * (1 - calm * rng.uniform(0.002, 0.015)))
        self.volume_24h = self.typical_qty() * rng.randint(20_000, 60_000)
        self.turnover_24h = (
            Decimal(self.volume_24h) * Decimal(self.price) / 10 ** (spec.qty_decimals + spec.price_decimals)
        )
        self.open_interest = self.typical_qty() * rng.randint(50_000, 150_000)
        self.funding_rate = Decimal(rng.randint(-100, 300)) / 10**6
        self.mark_price = self.price
        self.index_price = self.price

    def _round(self, units: float) -> int:
        tick = self.spec.tick_units
        return max(tick, round(units / tick) * tick)

    def typical_qty(self) -> int:
        """A typical order size in qty units: about 2,000 USD worth of the base coin."""
        return self._typical_qty

    def random_qty(self) -> int:
        """A positive size, exponentially distributed around :meth:`typical_qty`."""
        return max(1, int(self.rng.expovariate(1 / self.typical_qty())))

    def step(self, now_ms: int) -> None:
        """Move the price one step and record this step's 1 to 3 trades in :attr:`trades`."""
        rng, spec, tick = self.rng, self.spec, self.spec.tick_units
        # Relative moves (spec.step_vol, 0.3 bp a step by default) in whole ticks, pulled back
        # gently towards the start price so that the price stays believable for hours.
        sigma = self.price * spec.step_vol / tick  # in ticks
        drift = (spec.start_units - self.price) / tick * _REVERSION
        if sigma >= 1:
            move = rng.gauss(drift, sigma)
        else:  # a tick wider than a step's move: one tick now and then, with the same variance
            move = drift + (rng.choice((-1, 1)) if rng.random() < sigma * sigma else 0)
        whole = math.floor(move)
        moved = self.price + (whole + (rng.random() < move - whole)) * tick
        self.price = max(moved, 10 * tick)
        self.spread = tick * rng.choice((1, 1, 1, 2))
        self.bid, self.ask = self.price, self.price + self.spread
        self.cross_seq += rng.randint(1, 40)
        self.trades = []
        last = self.last_price
        for _ in range(rng.randint(1, 3)):
            side = rng.choice(("Buy", "Sell"))
            price = self.ask if side == "Buy" else self.bid
            qty = max(1, self.random_qty() // 4)
            if price > last:
                self.tick_direction = "PlusTick"
            elif price < last:
                self.tick_direction = "MinusTick"
            elif self.tick_direction in ("PlusTick", "ZeroPlusTick"):
                self.tick_direction = "ZeroPlusTick"
            else:
                self.tick_direction = "ZeroMinusTick"
            last = price
            self.trade_seq += 1
            self._trade_id += rng.randint(1, 5)
            trade_id = (
                str(self._trade_id)
                if spec.category is Category.SPOT
                else str(uuid.UUID(int=rng.getrandbits(128), version=4))
            )
            self.trades.append(
                Trade(
                    now_ms,
                    side,
                    price,
                    qty,
                    self.tick_direction,
                    trade_id,
                    self.trade_seq,
                )
            )
            self.high_24h = max(self.high_24h, price)
            self.low_24h = min(self.low_24h, price)
            self.volume_24h += qty
            self.turnover_24h += Decimal(qty) * Decimal(price) / 10 ** (spec.qty_decimals + spec.price_decimals)
        self.last_price = last
        self.mark_price = self._round(self.price + rng.randint(-2, 2) * tick)
        self.index_price = self._round(self.price + rng.randint(-3, 3) * tick)
        if rng.random() < 0.3:
            self.open_interest = max(1, self.open_interest + rng.randint(-3, 3) * self.typical_qty())
        if rng.random() < 0.02:
            self.funding_rate += Decimal(rng.randint(-5, 5)) / 10**6


class Book:
    """A ``depth``-level order book that follows an :class:`Instrument`'s top of book.

    Invariants after every :meth:`evolve`: at most ``depth`` levels a side,
    every size positive, every price a multiple of the tick, best bid below
    best ask (never crossed). :meth:`evolve` returns exactly the changes
    (size 0 for a deleted level) that turn the previous book into the new
    one, so a client applying the deltas to the snapshot holds this book.
    """

    def __init__(self, instrument: Instrument, depth: int) -> None:
        self.instrument = instrument
        self.depth = depth
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.reset()

    def reset(self) -> None:
        """Rebuild a full book around the instrument's current top of book."""
        self.bids, self.asks = {}, {}
        self._reshape()

    def evolve(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Move the book to the instrument's current top; return ``(bid changes, ask changes)``.

        Bid changes are sorted high to low, ask changes low to high, as Bybit sends them.
        """
        old_bids, old_asks = dict(self.bids), dict(self.asks)
        self._mutate(self.bids)
        self._mutate(self.asks)
        self._reshape()
        return _diff(old_bids, self.bids, reverse=True), _diff(old_asks, self.asks, reverse=False)

    def sorted_bids(self) -> list[tuple[int, int]]:
        return sorted(self.bids.items(), reverse=True)

    def sorted_asks(self) -> list[tuple[int, int]]:
        return sorted(self.asks.items())

    def _mutate(self, side: dict[int, int]) -> None:
        rng = self.instrument.rng
        if not side:
            return
        prices = list(side)
        for _ in range(rng.randint(1, 3)):
            side[rng.choice(prices)] = self.instrument.random_qty()
        if len(prices) > 2 and rng.random() < 0.3:
            side.pop(rng.choice(prices), None)

    def _reshape(self) -> None:
        inst, rng, tick = (
            self.instrument,
            self.instrument.rng,
            self.instrument.spec.tick_units,
        )
        best_bid, best_ask = inst.bid, inst.ask
        for price in [p for p in self.bids if p > best_bid]:
            del self.bids[price]
        for price in [p for p in self.asks if p < best_ask]:
            del self.asks[price]
        self.bids.setdefault(best_bid, inst.random_qty())
        self.asks.setdefault(best_ask, inst.random_qty())
        if self.depth == 1:
            for side, best in ((self.bids, best_bid), (self.asks, best_ask)):
                for price in [p for p in side if p != best]:
                    del side[price]
            return
        # a new level inside the book now and then, so deltas insert as well as update
        if rng.random() < 0.5:
            self.bids.setdefault(best_bid - tick * rng.randint(1, 2 * self.depth), inst.random_qty())
            self.asks.setdefault(best_ask + tick * rng.randint(1, 2 * self.depth), inst.random_qty())
        _fill_and_trim(self.bids, self.depth, -tick, rng, inst)
        _fill_and_trim(self.asks, self.depth, tick, rng, inst)


def _fill_and_trim(side: dict[int, int], depth: int, step: int, rng: random.Random, inst: Instrument) -> None:
    ordered = sorted(side, reverse=step < 0)
    if len(ordered) > depth:
        for price in ordered[depth:]:
            del side[price]
        return
    price = ordered[-1]
    for _ in range(depth - len(ordered)):
        price += step * rng.randint(1, 3)
        if price <= 0:
            break
        side[price] = inst.random_qty()


def _diff(old: dict[int, int], new: dict[int, int], reverse: bool) -> list[tuple[int, int]]:
    changes = [(p, 0) for p in old if p not in new]
    changes += [(p, q) for p, q in new.items() if old.get(p) != q]
    changes.sort(reverse=reverse)
    return changes
