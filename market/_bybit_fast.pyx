# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Bybit data frames, from the frame's bytes to what the stream needs, in C.

The ingest path's common frames, compiled (docs/performance.md, (f)):
:func:`decode_frame` reads a frame's JSON itself and makes the checks of
:func:`market.bybit.parse` + :func:`market.bybit.decode` without making the
objects they make (the JSON's dicts and lists, a tuple per level, a dict per
trade):

* an ``orderbook.{depth}.{symbol}`` delta for a book the stream holds and
  keeps in sync goes straight into the book, as
  :meth:`market.orderbook.OrderBook.apply_levels` changes it;
* a ``tickers.{symbol}`` frame becomes its :class:`~market.exchange.TickerFields`;
* a ``publicTrade.{symbol}`` frame becomes its trades' JSON text, as the
  stream writes them for clients (``Trade.to_json_dict``'s shape).

It only ever says yes to what it fully understands. Anything else (a
snapshot, a frame with a key it does not know, an escape or non-ASCII byte
in a string, an integer of more than 18 digits, a bad value, a book that is
not synced, ``u`` not the next one, ...) is *declined*: it returns ``None``
before changing anything, and the caller takes the reference path
(``market/bybit.py`` and ``market/orderbook.py``), which gives the precise
answer (an error, a gap, a resync). ``tests/test_fast_path.py`` checks that
for any frame the two paths end in the same answer and the same book.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem, PyDict_DelItem
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_FromDouble
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.string cimport memcmp, memcpy

from decimal import Decimal

from market.exchange import TickerFields
from market.orderbook import GapReason

cdef extern from "Python.h":
    double PyOS_string_to_double(const char *s, char **endptr, PyObject *overflow_exception) except? -1.0
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    str PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    void *PyUnicode_DATA(object o)
    const char *PyUnicode_AsUTF8AndSize(object o, Py_ssize_t *size) except NULL

DEF MAX_LEVELS = 1024  # per frame (bids + asks); a delta with more is declined
DEF MAX_TRADES = 1024  # per frame; more is declined
DEF MAX_DEPTH = 32  # nesting of the values skipped (keys the exchange adds); deeper is declined

cdef struct Level:
    Py_ssize_t price      # offset of the price text in the frame
    Py_ssize_t price_len
    Py_ssize_t size
    Py_ssize_t size_len
    double key           # float(price)
    bint zero            # the size is zero: delete

cdef Level _levels[MAX_LEVELS]  # filled and used within one call (no yield inside: one at a time)

cdef struct Frame:
    const unsigned char *p
    Py_ssize_t n
    Py_ssize_t i


cdef inline void _ws(Frame *f) noexcept:
    cdef unsigned char c
    while f.i < f.n:
        c = f.p[f.i]
        if c == 32 or c == 10 or c == 13 or c == 9:
            f.i += 1
        else:
            return


cdef inline bint _eat(Frame *f, unsigned char c) noexcept:
    _ws(f)
    if f.i < f.n and f.p[f.i] == c:
        f.i += 1
        return True
    return False


cdef inline Py_ssize_t _string(Frame *f, Py_ssize_t *length) noexcept:
    """A JSON string of printable ASCII without escapes: its offset (length in ``length``), or -1."""
    cdef Py_ssize_t start
    cdef unsigned char c
    _ws(f)
    if f.i >= f.n or f.p[f.i] != 34:  # "
        return -1
    f.i += 1
    start = f.i
    while f.i < f.n:
        c = f.p[f.i]
        if c == 34:
            length[0] = f.i - start
            f.i += 1
            return start
        if c < 32 or c >= 127 or c == 92:  # control, non-ASCII, backslash: declined
            return -1
        f.i += 1
    return -1


cdef inline bint _string_once(Frame *f, Py_ssize_t *at, Py_ssize_t *length) noexcept:
    """A key's string value into ``at``/``length``; False if the key came before (declined) or it
    is no string :func:`_string` takes."""
    if at[0] >= 0:
        return False
    at[0] = _string(f, length)
    return at[0] >= 0


cdef inline bint _int(Frame *f, long long *out) noexcept:
    """A non-negative JSON integer of at most 18 digits (no sign, no fraction, no exponent)."""
    cdef Py_ssize_t start
    cdef long long value = 0
    cdef unsigned char c
    _ws(f)
    start = f.i
    while f.i < f.n:
        c = f.p[f.i]
        if c < 48 or c > 57:
            break
        value = value * 10 + (c - 48)
        f.i += 1
    if f.i == start or f.i - start > 18 or (f.p[start] == 48 and f.i - start > 1):
        return False
    if f.i < f.n:  # a fraction or exponent: not an integer here
        c = f.p[f.i]
        if c == 46 or c == 101 or c == 69:
            return False
    out[0] = value
    return True


cdef inline bint _key_is(const unsigned char *p, Py_ssize_t at, Py_ssize_t n, const char *name, Py_ssize_t name_len) noexcept:
    return n == name_len and memcmp(p + at, name, n) == 0


cdef inline int _decimal(const unsigned char *p, Py_ssize_t at, Py_ssize_t n) noexcept:
    """Plain decimal text as market.bybit accepts it, without a sign: ``(0|[1-9][0-9]{0,31})(\\.[0-9]{1,32})?``.
    Returns 2 if it is zero, 1 if it is not, 0 if it is no such text."""
    cdef Py_ssize_t i = 0, digits = 0, fraction = 0
    cdef bint nonzero = False
    cdef unsigned char c
    if n == 0:
        return 0
    if p[at] == 48:  # "0"
        i = 1
    else:
        while i < n:
            c = p[at + i]
            if c < 48 or c > 57:
                break
            if c != 48:
                nonzero = True
            i += 1
        if i == 0 or i > 32:
            return 0
    if i < n:
        if p[at + i] != 46:  # "."
            return 0
        i += 1
        while i < n:
            c = p[at + i]
            if c < 48 or c > 57:
                return 0
            if c != 48:
                nonzero = True
            i += 1
            fraction += 1
        if fraction == 0 or fraction > 32:
            return 0
    return 1 if nonzero else 2


cdef double _POWERS[23]
for _k in range(23):
    _POWERS[_k] = 10.0 ** _k


cdef inline double _exact_double(const unsigned char *p, Py_ssize_t n) noexcept:
    """Checked decimal text with at most 15 digits, as a double by one exact division (the value
    is the nearest double, as float() gives: both operands are exact and IEEE division rounds
    once); -1 for longer text (the caller asks Python)."""
    cdef unsigned long long mantissa = 0
    cdef int digits = 0, scale = 0
    cdef bint fraction = False
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(n):
        c = p[i]
        if c == 46:
            fraction = True
            continue
        mantissa = mantissa * 10 + (c - 48)
        digits += 1
        if fraction:
            scale += 1
    if digits > 15:
        return -1.0
    return <double>mantissa / _POWERS[scale]


cdef Py_ssize_t _side(Frame *f, Py_ssize_t count):
    """One side's levels, ``[["p","s"],...]``, appended to ``_levels`` from ``count``: the new count, or -1."""
    cdef Py_ssize_t price, price_len, size, size_len, i
    cdef int kind
    cdef char *end
    cdef char buffer[72]
    cdef double key
    if not _eat(f, 91):  # [
        return -1
    if _eat(f, 93):  # ]
        return count
    while True:
        if count >= MAX_LEVELS or not _eat(f, 91):
            return -1
        price = _string(f, &price_len)
        if price < 0 or not _eat(f, 44):
            return -1
        size = _string(f, &size_len)
        if size < 0 or not _eat(f, 93):  # (a third item: declined)
            return -1
        if _decimal(f.p, price, price_len) != 1:  # a price is > 0
            return -1
        kind = _decimal(f.p, size, size_len)
        if kind == 0:
            return -1
        key = _exact_double(f.p + price, price_len)
        if key < 0:  # float(price) as Python reads it (the text is at most 65 characters: checked above)
            for i in range(price_len):
                buffer[i] = <char>f.p[price + i]
            buffer[price_len] = 0
            key = PyOS_string_to_double(buffer, &end, NULL)
            if end != buffer + price_len:
                return -1
        _levels[count].key = key
        _levels[count].price = price
        _levels[count].price_len = price_len
        _levels[count].size = size
        _levels[count].size_len = size_len
        _levels[count].zero = kind == 2
        count += 1
        if _eat(f, 93):
            return count
        if not _eat(f, 44):
            return -1


cdef inline Py_ssize_t _bisect(list keys, double key) noexcept:
    cdef Py_ssize_t lo = 0, hi = PyList_GET_SIZE(keys), mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if PyFloat_AS_DOUBLE(<object>PyList_GET_ITEM(keys, mid)) < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline str _text(const unsigned char *p, Py_ssize_t at, Py_ssize_t n):
    return PyUnicode_DecodeASCII(<const char *>(p + at), n, NULL)


cdef str _pair(const unsigned char *p, Level *level):
    """``["<price>","<size>"]``, the level's JSON text (as ``_Side`` keeps it)."""
    cdef Py_ssize_t k = level.price_len + level.size_len + 7
    cdef str out = PyUnicode_New(k, 127)
    cdef char *o = <char *>PyUnicode_DATA(out)
    memcpy(o, b'["', 2)
    memcpy(o + 2, p + level.price, level.price_len)
    k = 2 + level.price_len
    memcpy(o + k, b'","', 3)
    memcpy(o + k + 3, p + level.size, level.size_len)
    memcpy(o + k + 3 + level.size_len, b'"]', 2)
    return out


cdef object _apply_side(object book, object side, const unsigned char *p, Py_ssize_t first, Py_ssize_t last,
                        object update_id):
    """OrderBook.apply_levels' loop over one side: None, or the gap (the book is then invalidated)."""
    cdef dict prices = side._prices
    cdef list pairs = side._pairs
    cdef list keys = side._keys
    cdef Py_ssize_t n = side.view_n, j, i, held_len, size
    cdef bint is_bids = side._bids
    cdef bint view = side.view is not None  # (set to None once, when a level reaches it)
    cdef Level *level
    cdef PyObject *held
    cdef const char *held_data
    cdef double key
    cdef object key_obj
    for j in range(first, last):
        level = &_levels[j]
        key = level.key
        if view:
            size = PyList_GET_SIZE(keys)
            if size <= n or (key >= PyFloat_AS_DOUBLE(<object>PyList_GET_ITEM(keys, size - n)) if is_bids
                             else key <= PyFloat_AS_DOUBLE(<object>PyList_GET_ITEM(keys, n - 1))):
                side.view = None
                view = False
        key_obj = PyFloat_FromDouble(key)
        held = PyDict_GetItem(prices, key_obj)
        if held is not NULL:
            held_data = PyUnicode_AsUTF8AndSize(<object>held, &held_len)
            if held_len != level.price_len or memcmp(held_data, p + level.price, held_len) != 0:
                # the same float from other text: the same price written another way, or a collision
                if Decimal(<object>held) != Decimal(_text(p, level.price, level.price_len)):
                    return book._gap(GapReason.UNKNOWN_LEVEL, None, update_id)
        if level.zero:
            if held is NULL:
                return book._gap(GapReason.UNKNOWN_LEVEL, None, update_id)
            i = _bisect(keys, key)
            PyDict_DelItem(prices, key_obj)
            del keys[i]
            del pairs[i]
        elif held is NULL:
            i = _bisect(keys, key)
            keys.insert(i, key_obj)
            pairs.insert(i, _pair(p, level))
            PyDict_SetItem(prices, key_obj, _text(p, level.price, level.price_len))
        else:
            pairs[_bisect(keys, key)] = _pair(p, level)
    return None



# --- values this module does not use: skipped, but checked as JSON ------------------------

cdef bint _skip(Frame *f, int depth) noexcept:
    """Any JSON value (strings without escapes, ASCII only); False if it is not one."""
    cdef unsigned char c
    cdef Py_ssize_t n
    cdef long long ignored
    _ws(f)
    if f.i >= f.n or depth > MAX_DEPTH:
        return False
    c = f.p[f.i]
    if c == 34:
        return _string(f, &n) >= 0
    if c == 123:  # {
        f.i += 1
        if _eat(f, 125):
            return True
        while True:
            if _string(f, &n) < 0 or not _eat(f, 58) or not _skip(f, depth + 1):
                return False
            if _eat(f, 125):
                return True
            if not _eat(f, 44):
                return False
    if c == 91:  # [
        f.i += 1
        if _eat(f, 93):
            return True
        while True:
            if not _skip(f, depth + 1):
                return False
            if _eat(f, 93):
                return True
            if not _eat(f, 44):
                return False
    if c == 116:
        return _word(f, b"true", 4)
    if c == 102:
        return _word(f, b"false", 5)
    if c == 110:
        return _word(f, b"null", 4)
    return _number(f)


cdef inline bint _word(Frame *f, const char *word, Py_ssize_t n) noexcept:
    if f.n - f.i >= n and memcmp(f.p + f.i, word, n) == 0:
        f.i += n
        return True
    return False


cdef inline Py_ssize_t _digits(Frame *f) noexcept:
    """Skip ``[0-9]*``: how many."""
    cdef Py_ssize_t start = f.i
    while f.i < f.n and 48 <= f.p[f.i] <= 57:
        f.i += 1
    return f.i - start


cdef bint _number(Frame *f) noexcept:
    """A JSON number: ``-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)?``."""
    if f.i < f.n and f.p[f.i] == 45:
        f.i += 1
    if f.i >= f.n:
        return False
    if f.p[f.i] == 48:
        f.i += 1
    elif not (49 <= f.p[f.i] <= 57) or not _digits(f):
        return False
    if f.i < f.n and f.p[f.i] == 46:
        f.i += 1
        if not _digits(f):
            return False
    if f.i < f.n and (f.p[f.i] == 101 or f.p[f.i] == 69):
        f.i += 1
        if f.i < f.n and (f.p[f.i] == 43 or f.p[f.i] == 45):
            f.i += 1
        if not _digits(f):
            return False
    return True


cdef inline bint _null(Frame *f) noexcept:
    _ws(f)
    return _word(f, b"null", 4)


# --- order-book data ----------------------------------------------------------------------

cdef struct Book:
    Py_ssize_t symbol, symbol_len, bids_end, asks_start, asks_end
    long long u, seq
    bint has_u, has_seq


cdef bint _book_data(Frame *f, Book *b) noexcept:
    """``{"s":…,"b":[…],"a":[…],"u":…,"seq":…}`` (bids before asks: the order they are applied)."""
    cdef Py_ssize_t at, n, count
    b.symbol = b.bids_end = b.asks_start = b.asks_end = -1
    b.has_u = b.has_seq = False
    if not _eat(f, 123):
        return False
    while True:
        at = _string(f, &n)
        if at < 0 or not _eat(f, 58):
            return False
        if _key_is(f.p, at, n, b"s", 1):
            if not _string_once(f, &b.symbol, &b.symbol_len):
                return False
        elif _key_is(f.p, at, n, b"b", 1):
            if b.bids_end >= 0 or b.asks_start >= 0:
                return False
            count = _side(f, 0)
            if count < 0:
                return False
            b.bids_end = count
        elif _key_is(f.p, at, n, b"a", 1):
            if b.asks_start >= 0 or b.bids_end < 0:
                return False
            b.asks_start = b.bids_end
            count = _side(f, b.bids_end)
            if count < 0:
                return False
            b.asks_end = count
        elif _key_is(f.p, at, n, b"u", 1):
            if b.has_u or not _int(f, &b.u):
                return False
            b.has_u = True
        elif _key_is(f.p, at, n, b"seq", 3):
            if b.has_seq or not _int(f, &b.seq):
                return False
            b.has_seq = True
        else:
            return False
        if _eat(f, 125):
            return b.symbol >= 0 and b.has_u and b.asks_end >= 0
        if not _eat(f, 44):
            return False


cdef object _book_apply(const unsigned char *p, str topic, Book *b, dict books, long long ts):
    """The checked delta into its book: None (declined, nothing changed), or ``(topic, gap)``."""
    cdef Py_ssize_t n
    book = books.get(topic)
    if book is None or not book._synced or not book._strict or book._update_id is None:
        return None
    if b.u != book._update_id + 1:
        return None
    symbol = book.symbol
    if b.symbol_len != PyUnicode_GET_LENGTH(symbol) or memcmp(PyUnicode_AsUTF8AndSize(symbol, &n), p + b.symbol,
                                                               b.symbol_len) != 0:
        return None
    bids, asks = book._bids, book._asks
    if (bids.view is not None and bids.view_n < 1) or (asks.view is not None and asks.view_n < 1):
        return None  # (a kept view of no levels: left to the reference's indexing)
    # Checked: from here the book changes as apply_levels changes it.
    update_id = b.u
    gap = _apply_side(book, bids, p, 0, b.bids_end, update_id)
    if gap is None:
        gap = _apply_side(book, asks, p, b.asks_start, b.asks_end, update_id)
    if gap is not None:
        return topic, gap
    bid_keys, ask_keys = bids._keys, asks._keys
    if PyList_GET_SIZE(bid_keys) and PyList_GET_SIZE(ask_keys) and PyFloat_AS_DOUBLE(
            <object>PyList_GET_ITEM(bid_keys, PyList_GET_SIZE(bid_keys) - 1)) >= PyFloat_AS_DOUBLE(
            <object>PyList_GET_ITEM(ask_keys, 0)):
        return topic, book._gap(GapReason.CROSSED, None, update_id)
    book._synced = True
    book._update_id = update_id
    book._seq = b.seq if b.has_seq else None
    book._ts = ts
    book._reset = False
    return topic, None


# --- ticker data --------------------------------------------------------------------------

DEF MAX_TICKER_KEYS = 32
DEF AMOUNT = 0
DEF PRICE = 1
DEF SIGNED = 2

cdef int _ticker_count = 0  # market.bybit's table (use_ticker_table): Bybit key -> client key, kind
cdef object _ticker_keys = []  # bytes, for the C side
cdef object _ticker_names = []  # the client's keys (str)
cdef int _ticker_kinds[MAX_TICKER_KEYS]
cdef const char *_ticker_key_ptr[MAX_TICKER_KEYS]
cdef Py_ssize_t _ticker_key_len[MAX_TICKER_KEYS]


def use_ticker_table(table):
    """``market.bybit``'s ticker table, ``(bybit key, client key, kind)`` in its order (one table:
    given, not copied)."""
    global _ticker_count, _ticker_keys, _ticker_names
    kinds = {"amount": AMOUNT, "price": PRICE, "signed": SIGNED}
    if len(table) > MAX_TICKER_KEYS:
        raise ValueError("ticker table too long")
    _ticker_keys = [key.encode("ascii") for key, _, _ in table]
    _ticker_names = [name for _, name, _ in table]
    for index, (key, name, kind) in enumerate(table):
        _ticker_key_ptr[index] = <const char *>_ticker_keys[index]
        _ticker_key_len[index] = len(key)
        _ticker_kinds[index] = kinds[str(kind)]
    _ticker_count = len(table)


cdef struct Ticker:
    Py_ssize_t symbol, symbol_len
    Py_ssize_t at[MAX_TICKER_KEYS]  # offset of each table key's text (-1: absent)
    Py_ssize_t length[MAX_TICKER_KEYS]
    int funding  # nextFundingTime: 0 absent, 1 "", 2 a value
    long long funding_ms


cdef inline bint _ticker_value(const unsigned char *p, Py_ssize_t at, Py_ssize_t n, int kind) noexcept:
    """A ticker decimal as market.bybit's _checked_text takes it (``""`` is no value)."""
    if n == 0:
        return True
    if kind == SIGNED:
        if p[at] == 45:  # "-": the regex allows it here ("-0" too)
            return n > 1 and _decimal(p, at + 1, n - 1) != 0
        return _decimal(p, at, n) != 0
    if kind == PRICE:
        return _decimal(p, at, n) == 1
    return _decimal(p, at, n) != 0


cdef bint _ticker_data(Frame *f, Ticker *t) noexcept:
    cdef Py_ssize_t at, n, value, value_len, k
    cdef int index
    cdef unsigned char c
    cdef long long ms
    t.symbol = -1
    t.funding = 0
    for index in range(_ticker_count):
        t.at[index] = -1
    if not _eat(f, 123):
        return False
    if _eat(f, 125):
        return True
    while True:
        at = _string(f, &n)
        if at < 0 or not _eat(f, 58):
            return False
        for index in range(_ticker_count):
            if _key_is(f.p, at, n, _ticker_key_ptr[index], _ticker_key_len[index]):
                break
        else:
            index = -1
        if index >= 0:
            if t.at[index] >= 0:
                return False  # twice: declined
            value = _string(f, &value_len)
            if value < 0 or not _ticker_value(f.p, value, value_len, _ticker_kinds[index]):
                return False
            t.at[index] = value
            t.length[index] = value_len
        elif _key_is(f.p, at, n, b"symbol", 6):
            if not _string_once(f, &t.symbol, &t.symbol_len):
                return False
        elif _key_is(f.p, at, n, b"nextFundingTime", 15):
            if t.funding:
                return False
            _ws(f)
            if f.i < f.n and f.p[f.i] == 34:
                value = _string(f, &value_len)
                if value < 0 or value_len > 18:
                    return False
                ms = 0
                for k in range(value_len):
                    c = f.p[value + k]
                    if c < 48 or c > 57:
                        return False
                    ms = ms * 10 + (c - 48)
                t.funding = 1 if value_len == 0 else 2
                t.funding_ms = ms
            else:
                if not _int(f, &t.funding_ms):
                    return False
                t.funding = 2
        elif not _skip(f, 1):
            return False
        if _eat(f, 125):
            return True
        if not _eat(f, 44):
            return False


cdef object _ticker_fields(const unsigned char *p, str topic, Ticker *t, bint snapshot, long long ts):
    cdef Py_ssize_t n
    cdef int index, last = -1
    symbol = topic[8:]  # "tickers."
    if t.symbol < 0 or t.symbol_len != PyUnicode_GET_LENGTH(symbol) or memcmp(
            PyUnicode_AsUTF8AndSize(symbol, &n), p + t.symbol, t.symbol_len) != 0:
        return None
    fields = {}
    for index in range(_ticker_count):
        if t.at[index] >= 0:
            fields[_ticker_names[index]] = None if t.length[index] == 0 else _text(p, t.at[index], t.length[index])
    if t.funding:
        fields["nextFundingTime"] = t.funding_ms if t.funding == 2 else None
    last_price = fields.get("lastPrice", 0)
    if last_price is None or (snapshot and "lastPrice" not in fields):
        return None
    return TickerFields(symbol, snapshot, ts, fields)


# --- trade data ---------------------------------------------------------------------------

cdef struct Trade:
    Py_ssize_t symbol, symbol_len, id, id_len, price, price_len, size, size_len
    long long ts, seq
    int side  # 0 absent, 1 buy, 2 sell
    int block  # -1 absent, 0 false, 1 true
    int has_seq  # 0 absent, 1 null, 2 a value
    bint has_ts

cdef Trade _trades[MAX_TRADES]


cdef inline bint _symbol(const unsigned char *p, Py_ssize_t at, Py_ssize_t n) noexcept:
    """``[A-Za-z0-9][A-Za-z0-9_-]{0,63}``"""
    cdef Py_ssize_t i
    cdef unsigned char c
    if n < 1 or n > 64:
        return False
    for i in range(n):
        c = p[at + i]
        if not ((48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or (i and (c == 95 or c == 45))):
            return False
    return True


cdef Py_ssize_t _trade_data(Frame *f) noexcept:
    """``[{…},…]``: the number of trades, or -1."""
    cdef Py_ssize_t count = 0, at, n, value, value_len
    cdef unsigned char c
    cdef Trade *t
    if not _eat(f, 91):
        return -1
    if _eat(f, 93):
        return 0
    while True:
        if count >= MAX_TRADES or not _eat(f, 123):
            return -1
        t = &_trades[count]
        t.symbol = t.id = t.price = t.size = -1
        t.side = t.has_seq = 0
        t.block = -1
        t.has_ts = False
        if not _eat(f, 125):
            while True:
                at = _string(f, &n)
                if at < 0 or not _eat(f, 58):
                    return -1
                if n == 1:
                    c = f.p[at]
                    if c == 84:  # T
                        if t.has_ts or not _int(f, &t.ts):
                            return -1
                        t.has_ts = True
                    elif c == 115:  # s
                        if not _string_once(f, &t.symbol, &t.symbol_len) or not _symbol(f.p, t.symbol,
                                                                                         t.symbol_len):
                            return -1
                    elif c == 83:  # S
                        if t.side:
                            return -1
                        value = _string(f, &value_len)
                        if value >= 0 and _key_is(f.p, value, value_len, b"Buy", 3):
                            t.side = 1
                        elif value >= 0 and _key_is(f.p, value, value_len, b"Sell", 4):
                            t.side = 2
                        else:
                            return -1
                    elif c == 118:  # v
                        if not _string_once(f, &t.size, &t.size_len) or _decimal(f.p, t.size, t.size_len) == 0:
                            return -1
                    elif c == 112:  # p
                        if not _string_once(f, &t.price, &t.price_len) or _decimal(f.p, t.price,
                                                                                     t.price_len) != 1:
                            return -1
                    elif c == 105:  # i
                        if not _string_once(f, &t.id, &t.id_len) or t.id_len == 0:
                            return -1
                    elif not _skip(f, 2):
                        return -1
                elif _key_is(f.p, at, n, b"BT", 2):
                    if t.block >= 0:
                        return -1
                    _ws(f)
                    if _word(f, b"true", 4):
                        t.block = 1
                    elif _word(f, b"false", 5):
                        t.block = 0
                    else:
                        return -1
                elif _key_is(f.p, at, n, b"seq", 3):
                    if t.has_seq:
                        return -1
                    if _null(f):
                        t.has_seq = 1
                    elif _int(f, &t.seq):
                        t.has_seq = 2
                    else:
                        return -1
                elif not _skip(f, 2):
                    return -1
                if _eat(f, 125):
                    break
                if not _eat(f, 44):
                    return -1
            if t.symbol < 0 or t.id < 0 or t.price < 0 or t.size < 0 or not t.side or not t.has_ts:
                return -1
        else:
            return -1  # {}: no side
        count += 1
        if _eat(f, 93):
            return count
        if not _eat(f, 44):
            return -1


cdef inline Py_ssize_t _put(char *o, Py_ssize_t k, const char *text, Py_ssize_t n) noexcept:
    memcpy(o + k, text, n)
    return k + n


cdef inline Py_ssize_t _put_int(char *o, Py_ssize_t k, long long value) noexcept:
    cdef char digits[24]
    cdef int n = 0
    if value == 0:
        o[k] = 48
        return k + 1
    while value:
        digits[n] = <char>(48 + value % 10)
        value //= 10
        n += 1
    while n:
        n -= 1
        o[k] = digits[n]
        k += 1
    return k


cdef object _trades_json(const unsigned char *p, Py_ssize_t count, str category):
    """``[{"symbol":…,"category":…,"id":…,"side":"buy",…},…]`` as orjson writes the reference's dicts."""
    cdef Py_ssize_t category_len, total = 2, j, k = 0
    cdef const char *category_text = PyUnicode_AsUTF8AndSize(category, &category_len)
    cdef Trade *t
    cdef char *o
    for j in range(count):
        t = &_trades[j]
        total += 160 + category_len + t.symbol_len + t.id_len + t.price_len + t.size_len
    buffer = bytearray(total)
    o = buffer
    o[k] = 91
    k += 1
    for j in range(count):
        t = &_trades[j]
        if j:
            o[k] = 44
            k += 1
        k = _put(o, k, b'{"symbol":"', 11)
        k = _put(o, k, <const char *>(p + t.symbol), t.symbol_len)
        k = _put(o, k, b'","category":"', 14)
        k = _put(o, k, category_text, category_len)
        k = _put(o, k, b'","id":"', 8)
        k = _put(o, k, <const char *>(p + t.id), t.id_len)
        k = _put(o, k, b'","side":"buy","price":"', 24) if t.side == 1 else _put(o, k, b'","side":"sell","price":"', 25)
        k = _put(o, k, <const char *>(p + t.price), t.price_len)
        k = _put(o, k, b'","size":"', 10)
        k = _put(o, k, <const char *>(p + t.size), t.size_len)
        k = _put(o, k, b'","ts":', 7)
        k = _put_int(o, k, t.ts)
        k = _put(o, k, b',"blockTrade":true,"seq":', 25) if t.block == 1 else _put(o, k, b',"blockTrade":false,"seq":', 26)
        k = _put_int(o, k, t.seq) if t.has_seq == 2 else _put(o, k, b"null", 4)
        o[k] = 125
        k += 1
    o[k] = 93
    k += 1
    return PyUnicode_DecodeASCII(o, k, NULL)


# --- frames -------------------------------------------------------------------------------

DEF BOOK = 0
DEF TICKER = 1
DEF TRADE = 2


def decode_frame(bytes frame, dict books, wanted, str category):
    """One Bybit data frame on the fast path, or ``None``: declined (nothing changed; take the
    reference path).

    ``books``: the stream's books by topic (a book is held only while its topic is wanted and
    not resyncing); ``wanted``: the topics it is subscribed to for clients; ``category``: its
    endpoint's. Answers, by the topic's kind:

    * ``(0, topic, gap)``: an order-book delta, applied to its book; ``gap`` ``None``, or the
      :class:`~market.orderbook.BookGap` the reference returns (the book then invalidated);
    * ``(1, topic, fields)``: a ticker, its :class:`~market.exchange.TickerFields`;
    * ``(2, topic, ts, symbol, trades)``: trades, as the JSON array the stream sends
      (``symbol`` the first trade's, ``""`` and ``"[]"`` when there are none).
    """
    cdef Frame frame_
    cdef Frame *f = &frame_
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(frame)
    cdef Py_ssize_t at, n, topic_at = -1, topic_len = 0, trades = -1
    cdef long long ts = 0, other = 0
    cdef int kind = -1, message = -1  # message: 0 delta, 1 snapshot
    cdef bint has_ts = False, has_data = False, has_cts = False, has_cs = False
    cdef Book book
    cdef Ticker ticker
    f.p = p
    f.n = PyBytes_GET_SIZE(frame)
    f.i = 0
    if not _eat(f, 123):  # {
        return None
    while True:
        at = _string(f, &n)
        if at < 0 or not _eat(f, 58):  # :
            return None
        if _key_is(p, at, n, b"topic", 5):
            if not _string_once(f, &topic_at, &topic_len):
                return None
            if topic_len > 10 and memcmp(p + topic_at, b"orderbook.", 10) == 0:
                kind = BOOK
            elif topic_len > 8 and memcmp(p + topic_at, b"tickers.", 8) == 0:
                kind = TICKER
            elif topic_len > 12 and memcmp(p + topic_at, b"publicTrade.", 12) == 0:
                kind = TRADE
            else:
                return None
        elif _key_is(p, at, n, b"type", 4):
            if message >= 0:
                return None
            at = _string(f, &n)
            if at >= 0 and _key_is(p, at, n, b"delta", 5):
                message = 0
            elif at >= 0 and _key_is(p, at, n, b"snapshot", 8):
                message = 1
            else:
                return None
        elif _key_is(p, at, n, b"ts", 2):
            if has_ts or not _int(f, &ts):
                return None
            has_ts = True
        elif _key_is(p, at, n, b"cts", 3):
            if has_cts or not _int(f, &other):
                return None
            has_cts = True
        elif _key_is(p, at, n, b"cs", 2):
            if has_cs or not _int(f, &other):
                return None
            has_cs = True
        elif _key_is(p, at, n, b"data", 4):
            if has_data or kind < 0:  # (the topic first, as Bybit sends it)
                return None
            has_data = True
            if kind == BOOK:
                if not _book_data(f, &book):
                    return None
            elif kind == TICKER:
                if _ticker_count == 0 or not _ticker_data(f, &ticker):
                    return None
            else:
                trades = _trade_data(f)
                if trades < 0:
                    return None
        else:
            return None
        if _eat(f, 125):
            break
        if not _eat(f, 44):
            return None
    _ws(f)
    if f.i != f.n or message < 0 or not has_ts or not has_data:
        return None
    topic = _text(p, topic_at, topic_len)
    if kind == BOOK:
        if message != 0:
            return None  # a snapshot: the reference path makes the book
        applied = _book_apply(p, topic, &book, books, ts)
        return None if applied is None else (0, *applied)
    if topic not in wanted:
        return None
    if kind == TICKER:
        fields = _ticker_fields(p, topic, &ticker, message == 1, ts)
        return None if fields is None else (1, topic, fields)
    if trades == 0:
        return 2, topic, ts, "", "[]"
    return 2, topic, ts, _text(p, _trades[0].symbol, _trades[0].symbol_len), _trades_json(p, trades, category)
