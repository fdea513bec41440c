"""The instruments the simulator lists, and which symbols exist (:class:`SymbolPolicy`). Pure.

:data:`LISTINGS` is a small built-in table of common pairs: on which
markets each one is listed (spot, linear or both), a start price, and the
tick size and quantity step of each market.

**Every number in it is made up.** The start prices are round figures near
the public prices of these coins as quoted in 2025–2026 (BTC about
95,000 USD, ETH about 3,500, SOL about 180, BNB about 750, XRP about 2,
DOGE about 0.2, ADA about 0.75…), written down by hand: they are not live
data, nothing is fetched at run time, and they will drift from the real
market. They only need to look believable on a trader's screen. Tick sizes
and quantity steps are chosen in the style of Bybit's instruments-info
(spot BTCUSDT 0.01 / 0.000001, linear BTCUSDT 0.10 / 0.001, linear
``priceScale`` kept in the tick's trailing zero), so prices print with
the decimals a Bybit client expects; they are not copied from Bybit and
may differ from its current values. The availability follows Bybit's
naming: ``PEPEUSDT`` is spot only and its perpetual is ``1000PEPEUSDT``;
the pairs quoted in BTC, USDC and EUR are spot only.

Which symbols exist is the :class:`SymbolPolicy`'s call:

* ``mode="known"`` (the default, and what ``make run`` gets): exactly the
  table, each symbol on the markets it is listed on. Anything else is
  answered the way Bybit answers an unknown symbol (``NOPEUSDT`` is refused).
* ``mode="any"``: every well-formed symbol ending in a quote coin exists on
  both markets, for benchmarks and tests that subscribe made-up symbols
  (``SYM0001USDT``). Symbols not in the table get a price derived from a
  hash of their name (see :func:`simulator.market.instrument_spec`).

Select it with ``python -m simulator --symbols any``, ``POST
/control/symbols {"mode": "any"}`` or ``SimulatorServer(symbols=SymbolPolicy("any"))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from simulator.protocol import Category

__all__ = [
    "LISTINGS",
    "QUOTES",
    "QUOTE_USD",
    "SYMBOL_MODES",
    "Listing",
    "MarketRules",
    "SymbolPolicy",
    "base_usd",
    "listing",
    "listings_state",
    "quote_of",
]

#: Quote coins, longest match first when a symbol is split into base and quote.
QUOTES = ("USDT", "USDC", "BTC", "ETH", "EUR")
#: ``known``: the table only; ``any``: every well-formed symbol.
SYMBOL_MODES = ("known", "any")
#: Default volatility of one price step, relative (0.3 basis points).
DEFAULT_STEP_VOL = 0.00003


@dataclass(frozen=True, slots=True)
class MarketRules:
    """Tick size and quantity step of one symbol on one market, as decimal strings.

    The tick's digits set the printed decimals (``"0.10"``: two decimals, a
    tick of 10 units); the quantity step is a power of ten (``"0.001"``, ``"1"``).
    """

    tick: str
    qty_step: str

    @property
    def price_decimals(self) -> int:
        return max(0, -int(Decimal(self.tick).as_tuple().exponent))

    @property
    def tick_units(self) -> int:
        return int(Decimal(self.tick).scaleb(self.price_decimals))

    @property
    def qty_decimals(self) -> int:
        return max(0, -int(Decimal(self.qty_step).as_tuple().exponent))


@dataclass(frozen=True, slots=True)
class Listing:
    """One row of the table. ``spot`` / ``linear`` are ``None`` where the symbol is not listed.

    ``step_vol`` is the relative volatility of one price step (a stable coin
    moves far less than the rest).
    """

    symbol: str
    price: str
    spot: MarketRules | None = None
    linear: MarketRules | None = None
    step_vol: float = DEFAULT_STEP_VOL
    base: str = field(init=False)
    quote: str = field(init=False)

    def __post_init__(self) -> None:
        quote = quote_of(self.symbol)
        object.__setattr__(self, "quote", quote)
        object.__setattr__(self, "base", self.symbol[: len(self.symbol) - len(quote)])

    def rules(self, category: Category) -> MarketRules | None:
        """This symbol's rules on ``category``, or ``None`` if it is not listed there."""
        return self.spot if category is Category.SPOT else self.linear


def quote_of(symbol: str) -> str:
    """The quote coin a symbol ends with (the longest of :data:`QUOTES`), or ``""``."""
    return next((q for q in sorted(QUOTES, key=len, reverse=True) if symbol.endswith(q) and len(symbol) > len(q)), "")


def _rules(tick: str, qty_step: str) -> MarketRules:
    return MarketRules(tick, qty_step)


# symbol, start price, spot (tick, qty step), linear (tick, qty step). Made up: see the module docstring.
LISTINGS: tuple[Listing, ...] = (
    Listing("BTCUSDT", "95000", _rules("0.01", "0.000001"), _rules("0.10", "0.001")),
    Listing("ETHUSDT", "3500", _rules("0.01", "0.00001"), _rules("0.01", "0.01")),
    Listing("SOLUSDT", "180", _rules("0.01", "0.001"), _rules("0.010", "0.1")),
    Listing("BNBUSDT", "750", _rules("0.1", "0.001"), _rules("0.10", "0.01")),
    Listing("XRPUSDT", "2.1", _rules("0.0001", "0.01"), _rules("0.0001", "1")),
    Listing("DOGEUSDT", "0.2", _rules("0.00001", "0.1"), _rules("0.00001", "1")),
    Listing("ADAUSDT", "0.75", _rules("0.0001", "0.01"), _rules("0.0001", "1")),
    Listing("LTCUSDT", "95", _rules("0.01", "0.00001"), _rules("0.01", "0.1")),
    Listing("LINKUSDT", "18", _rules("0.001", "0.01"), _rules("0.001", "0.1")),
    Listing("AVAXUSDT", "28", _rules("0.01", "0.001"), _rules("0.001", "0.1")),
    Listing("DOTUSDT", "4.5", _rules("0.001", "0.01"), _rules("0.001", "0.1")),
    Listing("TRXUSDT", "0.3", _rules("0.00001", "0.1"), _rules("0.00001", "1")),
    Listing("TONUSDT", "3", _rules("0.001", "0.01"), _rules("0.0001", "0.1")),
    Listing("SUIUSDT", "3.5", _rules("0.0001", "0.01"), _rules("0.00001", "1")),
    Listing("PEPEUSDT", "0.00001", spot=_rules("0.00000001", "1")),
    Listing("1000PEPEUSDT", "0.01", linear=_rules("0.0000001", "1")),
    Listing("ETHBTC", "0.0368", spot=_rules("0.00001", "0.0001")),
    Listing("BTCUSDC", "95000", spot=_rules("0.01", "0.000001")),
    Listing("ETHUSDC", "3500", spot=_rules("0.01", "0.00001")),
    Listing("BTCEUR", "82000", spot=_rules("0.01", "0.000001")),
    Listing("USDCUSDT", "1", spot=_rules("0.0001", "0.01"), step_vol=0.000002),
)

_BY_SYMBOL = {row.symbol: row for row in LISTINGS}


def listing(symbol: str) -> Listing | None:
    """The table row of ``symbol``, or ``None``."""
    return _BY_SYMBOL.get(symbol)


def _check_table() -> None:
    """A typo in the table fails at import, not as a wrong price on the wire."""
    for row in LISTINGS:
        if not row.quote or (row.spot is None and row.linear is None):
            raise ValueError(f"listing {row.symbol}: no quote coin or no market")
        for rules in (row.spot, row.linear):
            if rules is None:
                continue
            if Decimal(row.price) % Decimal(rules.tick) != 0:
                raise ValueError(f"listing {row.symbol}: price {row.price} is not a multiple of tick {rules.tick}")
            if Decimal(rules.qty_step).scaleb(rules.qty_decimals) != 1:
                raise ValueError(f"listing {row.symbol}: quantity step {rules.qty_step} is not a power of ten")


_check_table()

#: USD value of one base coin, from the USDT rows (``PEPE``: 0.00001, ``1000PEPE``: 0.01).
_BASE_USD = {row.base: float(row.price) for row in LISTINGS if row.quote == "USDT"}
#: USD value of one quote coin (EUR at a made-up 1.16).
QUOTE_USD = {"USDT": 1.0, "USDC": 1.0, "EUR": 1.16, "BTC": _BASE_USD["BTC"], "ETH": _BASE_USD["ETH"]}


def base_usd(base: str) -> float | None:
    """The table's USD value of a base coin, or ``None`` if no USDT pair lists it."""
    return _BASE_USD.get(base)


@dataclass(frozen=True, slots=True)
class SymbolPolicy:
    """Which symbols exist on which market (see the module docstring for the two modes).

    In both modes ``reject`` names symbols that never exist, and a symbol
    containing ``reject_substring`` never exists either. ``quotes`` are the
    quote coins a symbol must end with in ``any`` mode.
    """

    mode: str = "known"
    quotes: tuple[str, ...] = QUOTES
    reject: frozenset[str] = frozenset()
    reject_substring: str = "INVALID"

    def __post_init__(self) -> None:
        if self.mode not in SYMBOL_MODES:
            raise ValueError(f"symbol mode must be one of {', '.join(SYMBOL_MODES)}, not {self.mode!r}")

    def exists(self, category: Category, symbol: str) -> bool:
        """True if ``symbol`` is listed on ``category``."""
        if symbol in self.reject:
            return False
        if self.reject_substring and self.reject_substring in symbol:
            return False
        if self.mode == "any":
            return any(symbol.endswith(q) and len(symbol) > len(q) for q in self.quotes)
        row = listing(symbol)
        return row is not None and row.rules(category) is not None

    def describe(self) -> dict[str, Any]:
        """JSON-ready: the mode, the rejected symbols, and (``any``) the quote coins."""
        data: dict[str, Any] = {"mode": self.mode, "reject": sorted(self.reject)}
        if self.reject_substring:
            data["reject_substring"] = self.reject_substring
        if self.mode == "any":
            data["quotes"] = list(self.quotes)
        return data


def listings_state() -> list[dict[str, Any]]:
    """The table as JSON-ready rows (``GET /control/symbols``)."""
    out = []
    for row in LISTINGS:
        item: dict[str, Any] = {"symbol": row.symbol, "price": row.price}
        for category in Category:
            rules = row.rules(category)
            if rules is not None:
                item[str(category)] = {"tick": rules.tick, "qty_step": rules.qty_step}
        out.append(item)
    return out
