# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Bybit order-book deltas, from the frame's bytes into the book, in C.

The ingest path's hot case, compiled (docs/performance.md, (f)): a
well-formed ``orderbook.{depth}.{symbol}`` delta for a book the stream holds
and keeps in sync. :func:`apply_book_delta` reads the frame's JSON itself,
makes the same checks as :func:`market.bybit.parse` +
:func:`market.bybit.decode` + :meth:`market.orderbook.OrderBook.apply_levels`
and changes the book as they do, without making the objects they make (the
JSON's dicts and lists, a ``(price, size)`` tuple per level).

It only ever says yes to what it fully understands. Anything else (a
snapshot, a frame with a key it does not know, an escape or non-ASCII byte
in a string, an integer of more than 18 digits, a bad value, a book that is
not synced, ``u`` not the next one, ...) is *declined*: it returns ``None``
before changing anything, and the caller takes the reference path
(``market/bybit.py`` and ``market/orderbook.py``), which gives the precise
answer (an error, a gap, a resync). ``tests/test_fast_book.py`` checks that
for any frame the two paths end in the same book and the same answer.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem, PyDict_DelItem
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_FromDouble
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.string cimport memcmp, memcpy

from decimal import Decimal

from market.orderbook import GapReason

cdef extern from "Python.h":
    double PyOS_string_to_double(const char *s, char **endptr, PyObject *overflow_exception) except? -1.0
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    str PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    void *PyUnicode_DATA(object o)
    const char *PyUnicode_AsUTF8AndSize(object o, Py_ssize_t *size) except NULL

DEF MAX_LEVELS = 1024  # per frame (bids + asks); a delta with more is declined

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


def apply_book_delta(bytes frame, dict books):
    """Apply a Bybit order-book delta frame to its book in ``books`` (by topic).

    Returns ``None`` when declined (nothing changed: take the reference
    path), else ``(topic, gap)``: ``gap`` is ``None`` when applied, or the
    :class:`~market.orderbook.BookGap` the reference path would return (the
    book is then invalidated, as it does).
    """
    cdef Frame frame_
    cdef Frame *f = &frame_
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(frame)
    cdef Py_ssize_t at, n, topic_at = -1, topic_len = 0, symbol_at = -1, symbol_len = 0
    cdef Py_ssize_t bids_end = -1, asks_start = -1, asks_end = -1, count = 0
    cdef long long ts = 0, u = 0, seq = 0, other = 0
    cdef bint has_ts = False, has_u = False, has_seq = False, delta = False, has_data = False
    cdef bint has_type = False, has_cts = False, has_cs = False
    cdef Py_ssize_t first_asks
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
            if topic_at >= 0:
                return None
            topic_at = _string(f, &topic_len)
            if topic_at < 0:
                return None
        elif _key_is(p, at, n, b"type", 4):
            if has_type:
                return None
            has_type = True
            at = _string(f, &n)
            if at < 0 or not _key_is(p, at, n, b"delta", 5):  # a snapshot: declined
                return None
            delta = True
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
            if has_data or not _eat(f, 123):
                return None
            has_data = True
            while True:
                at = _string(f, &n)
                if at < 0 or not _eat(f, 58):
                    return None
                if _key_is(p, at, n, b"s", 1):
                    if symbol_at >= 0:
                        return None
                    symbol_at = _string(f, &symbol_len)
                    if symbol_at < 0:
                        return None
                elif _key_is(p, at, n, b"b", 1):
                    if bids_end >= 0 or asks_start >= 0:  # (bids first: the order the reference applies them)
                        return None
                    count = _side(f, 0)
                    if count < 0:
                        return None
                    bids_end = count
                elif _key_is(p, at, n, b"a", 1):
                    if asks_start >= 0 or bids_end < 0:
                        return None
                    asks_start = bids_end
                    count = _side(f, bids_end)
                    if count < 0:
                        return None
                    asks_end = count
                elif _key_is(p, at, n, b"u", 1):
                    if has_u or not _int(f, &u):
                        return None
                    has_u = True
                elif _key_is(p, at, n, b"seq", 3):
                    if has_seq or not _int(f, &seq):
                        return None
                    has_seq = True
                else:
                    return None
                if _eat(f, 125):  # }
                    break
                if not _eat(f, 44):
                    return None
        else:
            return None
        if _eat(f, 125):
            break
        if not _eat(f, 44):
            return None
    _ws(f)
    if f.i != f.n or topic_at < 0 or not delta or not has_ts or not has_data or not has_u or asks_end < 0 \
            or symbol_at < 0 or topic_len == 0:
        return None
    topic = _text(p, topic_at, topic_len)
    book = books.get(topic)
    if book is None or not book._synced or not book._strict or book._update_id is None:
        return None
    if u != book._update_id + 1:
        return None
    bids, asks = book._bids, book._asks
    if (bids.view is not None and bids.view_n < 1) or (asks.view is not None and asks.view_n < 1):
        return None  # (a kept view of no levels: left to the reference's indexing)
    symbol = book.symbol
    if symbol_len != len(symbol) or memcmp(PyUnicode_AsUTF8AndSize(symbol, &n), p + symbol_at, symbol_len) != 0:
        return None
    # Checked: from here the book changes as apply_levels changes it.
    update_id = u
    gap = _apply_side(book, bids, p, 0, bids_end, update_id)
    if gap is None:
        gap = _apply_side(book, asks, p, asks_start, asks_end, update_id)
    if gap is not None:
        return topic, gap
    bid_keys, ask_keys = bids._keys, asks._keys
    if PyList_GET_SIZE(bid_keys) and PyList_GET_SIZE(ask_keys) and PyFloat_AS_DOUBLE(
            <object>PyList_GET_ITEM(bid_keys, PyList_GET_SIZE(bid_keys) - 1)) >= PyFloat_AS_DOUBLE(
            <object>PyList_GET_ITEM(ask_keys, 0)):
        return topic, book._gap(GapReason.CROSSED, None, update_id)
    book._synced = True
    book._update_id = update_id
    book._seq = seq if has_seq else None
    book._ts = ts
    book._reset = False
    return topic, None
