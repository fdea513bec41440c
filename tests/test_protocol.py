"""The client protocol without sockets: text in, typed messages out."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.channels import Channel, MarketParams, keys_for
from protocol.close_codes import CLOSE_CODES, ClientAction, CloseCode
from protocol.errors import ERROR_MEANINGS, ErrorCode, ProtocolError
from protocol.messages import (
    BotCommand,
    BotCommandReport,
    BotCommandStatus,
    Ping,
    Refresh,
    Subscribe,
    Unsubscribe,
    data_message,
    error_message,
    parse,
)

pytestmark = pytest.mark.unit  # pure: no sockets, no processes (make check)


def test_subscribe_market_data():
    msg = parse('{"type":"subscribe","channel":"market-data","data":{"symbol":"BTCUSDT"}}')
    assert msg == Subscribe(Channel.MARKET_DATA, MarketParams("BTCUSDT"))


def test_market_params_are_normalized():
    msg = parse(json.dumps({"type": "subscribe", "channel": "market-data", "id": "a",
                            "data": {"symbol": "ethusdt", "category": "linear",
                                     "streams": ["ticker", "orderbook", "kline.1", "ticker"]}}))
    assert msg == Subscribe(Channel.MARKET_DATA, MarketParams("ETHUSDT", "bybit", "linear",
                                                              ("ticker", "orderbook.50", "kline.1")), "a")


def test_other_messages():
    assert parse('{"type":"unsubscribe","channel":"trades"}') == Unsubscribe(Channel.TRADES)
    assert parse('{"type":"ping","data":[1],"id":5}') == Ping([1], "5")
    assert parse('{"type":"refresh","token":"a.b.c"}') == Refresh("a.b.c")
    assert parse('{"type":"bot_command","data":{"botId":"b","command":"start"}}') == BotCommand("b", "start", {})


@pytest.mark.parametrize(("text", "code"), [
    ("{", ErrorCode.INVALID_JSON),
    ('{"type":"ping","data":Infinity}', ErrorCode.INVALID_JSON),
    ("[" * 100000, ErrorCode.INVALID_JSON),
    ('"hi"', ErrorCode.INVALID_MESSAGE),
    ('{"type":1}', ErrorCode.INVALID_MESSAGE),
    ('{"type":"ping","id":{"x":1}}', ErrorCode.INVALID_MESSAGE),
    ('{"type":"ping","id":true}', ErrorCode.INVALID_MESSAGE),
    ('{"type":"subscrib"}', ErrorCode.UNKNOWN_TYPE),
    ('{"type":"subscribe","channel":"x"}', ErrorCode.UNKNOWN_CHANNEL),
    ('{"type":"subscribe","channel":"market-data","data":{"symbol":"BTCUSDT","category":"option"}}',
     ErrorCode.INVALID_PARAMS),
    ('{"type":"subscribe","channel":"market-data","data":{"symbol":"BTCUSDT","streams":["depth"]}}',
     ErrorCode.INVALID_PARAMS),
    ('{"type":"subscribe","channel":"market-data","data":{"symbol":"BTCUSDT","streams":[]}}',
     ErrorCode.INVALID_PARAMS),
    ('{"type":"subscribe","channel":"positions","data":{"userId":"bob"}}', ErrorCode.FORBIDDEN),
    ('{"type":"subscribe","channel":"positions","data":{"sub":"bob"}}', ErrorCode.INVALID_PARAMS),
    ('{"type":"unsubscribe","channel":"trades","data":{"owner":"bob"}}', ErrorCode.INVALID_PARAMS),
    ('{"type":"subscribe","channel":"time-sync","data":{"every":1}}', ErrorCode.INVALID_PARAMS),
    ('{"type":"ping","data":' + "9" * 5000 + "}", ErrorCode.INVALID_MESSAGE),
    ('{"type":"refresh"}', ErrorCode.INVALID_MESSAGE),
    ('{"type":"bot_command","data":{"botId":"b"}}', ErrorCode.INVALID_MESSAGE),
    ('{"type":"bot_command","data":{"botId":"b","command":"x","userId":"bob"}}', ErrorCode.FORBIDDEN),
])
def test_bad_messages_raise_one_error_type_with_a_stable_code(text, code):
    with pytest.raises(ProtocolError) as info:
        parse(text)
    assert info.value.code is code


def test_error_keeps_the_request_id():
    with pytest.raises(ProtocolError) as info:
        parse('{"type":"subscribe","channel":"nope","id":"r9"}')
    err = info.value
    assert json.loads(error_message(err.code, err.message, request_id=err.request_id)) == {
        "type": "error", "code": "unknown_channel", "message": "unknown channel 'nope'", "id": "r9"}


def test_private_keys_come_from_the_user_not_the_client():
    assert keys_for(Channel.TRADES, None, "alice") == ["trades#alice"]
    assert keys_for(Channel.SYSTEM_HEALTH, None, "alice") == ["system-health"]
    params = MarketParams("BTCUSDT", streams=("ticker", "trades"))
    assert keys_for(Channel.MARKET_DATA, params, "alice") == [
        "market-data.bybit.spot.BTCUSDT.ticker", "market-data.bybit.spot.BTCUSDT.trades"]


def test_data_message_shape():
    assert json.loads(data_message("market-data", 3, 17, {"p": "1.5"}, {"symbol": "BTCUSDT"})) == {
        "type": "data", "channel": "market-data", "symbol": "BTCUSDT", "seq": 3, "ts": 17, "data": {"p": "1.5"}}


def test_close_code_table_is_complete_and_split_by_range():
    assert set(CLOSE_CODES) == set(CloseCode)
    for code, info in CLOSE_CODES.items():
        assert info.reason and info.meaning
        if 4000 <= code < 4500:
            assert info.action is not ClientAction.DO_NOT_RECONNECT
        if code >= 4500:
            assert info.action in (ClientAction.DO_NOT_RECONNECT, ClientAction.BACK_OFF)
    assert set(ERROR_MEANINGS) == set(ErrorCode)


# -- bot commands: any JSON in, a typed message or one ProtocolError out -------------------------

_JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.text(max_size=70),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                 max_size=4), max_leaves=12)
_FIELDS = st.fixed_dictionaries({}, optional={
    "botId": _JSON | st.just("bot-1"), "command": _JSON | st.just("stop"), "params": _JSON | st.just({}),
    "commandId": _JSON | st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True),
    "timeoutMs": _JSON | st.integers(0, 700_000), "userId": _JSON | st.just("ann"),
    "state": _JSON | st.sampled_from(["sent", "accepted", "succeeded", "failed", "timed_out"]),
    "result": _JSON})


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["bot_command", "bot_command_status", "bot_command_report"]), data=_FIELDS)
def test_command_messages_parse_to_their_type_or_one_protocol_error(kind, data):
    try:
        msg = parse(json.dumps({"type": kind, "id": "x", "data": data}))
    except ProtocolError as exc:
        assert exc.code in (ErrorCode.INVALID_MESSAGE, ErrorCode.FORBIDDEN) and exc.request_id == "x"
        return
    if kind == "bot_command_report":
        assert isinstance(msg, BotCommandReport) and msg.state.value in ("accepted", "succeeded", "failed")
        assert msg.result == data.get("result")
    elif kind == "bot_command_status":
        assert isinstance(msg, BotCommandStatus) and msg.command_id == data["commandId"]
    else:
        assert msg.params == data.get("params", {}) and msg.command_id == data.get("commandId")
        assert msg.timeout_ms is None or 1000 <= msg.timeout_ms <= 600_000


def test_what_clients_may_ask_for_is_what_the_exchange_serves():
    # Two tables with two jobs: the client vocabulary (protocol/channels.py: what the gateway offers; books
    # of 1000 levels are not, since clients get 25) and the exchange's (market/bybit.py). Every depth and
    # interval a client may name must be one the exchange module subscribes; the bridge does no mapping.
    from market.bybit import KLINE_INTERVALS as EXCHANGE_INTERVALS
    from market.bybit import ORDERBOOK_DEPTHS as EXCHANGE_DEPTHS
    from market.model import Category
    from protocol.channels import CATEGORIES, KLINE_INTERVALS, ORDERBOOK_DEPTHS

    for category in CATEGORIES:
        assert ORDERBOOK_DEPTHS[category] <= EXCHANGE_DEPTHS[Category(category)], category
    assert KLINE_INTERVALS == frozenset(EXCHANGE_INTERVALS)
