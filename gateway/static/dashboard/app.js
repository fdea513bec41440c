// The gateway dashboard: one WebSocket to this gateway, no libraries, no build step.
//
// Prices and sizes stay the exchange's exact decimal strings: they are shown as
// received, and compared or subtracted (flash direction, spread, 24h percent)
// with the exact BigInt decimals below, never with floats.
(() => {
  'use strict';

  // The popular pairs: a ticker card each, always subscribed (the gateway keeps them warm too).
  const SYMBOLS = ['BTCUSDT', 'ETHUSDT', 'ADAUSDT', 'SOLUSDT'];
  const DEFAULT_SYMBOL = 'BTCUSDT';
  const SYMBOL_RE = /^[A-Z0-9]{2,24}$/; // as the gateway checks data.symbol (after upper-casing)
  const KLINE_INTERVALS = ['1', '5', '15', '60'];
  const BOOK_LEVELS = 10;
  const TAPE_LENGTH = 30;
  const LOG_LENGTH = 40;
  const CANDLES_KEPT = 60;
  const SIGNALS_KEPT = 50;
  const COMMANDS_KEPT = 50;
  // The token user's own channels (the gateway takes the user from the token).
  const PRIVATE_CHANNELS = ['positions', 'bot-status', 'signals'];
  // Latest-value streams: a seq that jumps forward is a newer value replacing older ones, not a loss.
  const LATEST_VALUE_STREAM = /^(ticker|orderbook(\.\d+)?)$/;

  // Reconnection: exponential backoff with full jitter (a uniform delay in
  // [0, min(cap, base * 2^attempt))), except 1001, whose close reason carries the
  // gateway's own hint ("...; reconnect in 2345ms"), else a uniform 0–5 s.
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 10000;
  const GOING_AWAY_MAX_MS = 5000;
  const HINT_MAX_MS = 60000;
  const LIMIT_WAIT_MS = 30000; // 4503: 30–60 s before trying again
  const STABLE_AFTER_MS = 10000; // a connection up this long resets the backoff

  // docs/protocol.md, "Close codes": what the client should do.
  const CLOSE_POLICY = {
    1000: ['stop', 'the gateway ended the session'],
    1001: ['hint', 'the gateway is restarting'],
    1002: ['stop', 'protocol error (a client bug)'],
    1003: ['stop', 'binary frames are not accepted (a client bug)'],
    1007: ['stop', 'invalid UTF-8 (a client bug)'],
    1008: ['backoff', 'policy violation: a ping flood or an unfinished message (a client bug)'],
    1009: ['stop', 'message too big'],
    1011: ['backoff', 'the gateway failed serving this connection'],
    4000: ['backoff', 'token expired: get a new token'],
    4001: ['backoff', 'slow consumer'],
    4002: ['backoff', 'heartbeat timeout'],
    4003: ['backoff', 'rate limited'],
    4503: ['wait', 'too many connections for this user: close another one, or wait'],
  };

  function backoffDelay(attempt) {
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 30));
    return Math.floor(Math.random() * ceiling);
  }

  /** What to do after a close: {reconnect, delayMs, note, hinted}. */
  function closePolicy(code, reason, attempt) {
    const row = CLOSE_POLICY[code];
    let kind;
    let note;
    if (row) {
      [kind, note] = row;
    } else if (code >= 4500 && code <= 4999) {
      [kind, note] = ['stop', 'refused with these credentials'];
    } else if (code === 1006) {
      [kind, note] = ['backoff', 'connection lost or refused'];
    } else {
      [kind, note] = ['backoff', 'connection closed'];
    }
    if (kind === 'stop') return { reconnect: false, delayMs: null, note, hinted: false };
    // Temporary (4503): a slot frees when another connection of the user ends; retry slowly.
    if (kind === 'wait') return { reconnect: true, delayMs: LIMIT_WAIT_MS + Math.floor(Math.random() * LIMIT_WAIT_MS), note, hinted: false };
    if (kind === 'hint') {
      const match = /reconnect in (\d+)\s*ms/i.exec(reason || '');
      if (match) return { reconnect: true, delayMs: Math.min(Number(match[1]), HINT_MAX_MS), note, hinted: true };
      return { reconnect: true, delayMs: Math.floor(Math.random() * GOING_AWAY_MAX_MS), note, hinted: false };
    }
    return { reconnect: true, delayMs: backoffDelay(attempt), note, hinted: false };
  }

  // -- exact decimals ------------------------------------------------------------

  function parseDec(text) {
    if (typeof text !== 'string') return null;
    const m = /^([+-])?(\d*)(?:\.(\d*))?$/.exec(text.trim());
    if (!m || (!m[2] && !m[3])) return null;
    const frac = m[3] || '';
    const abs = BigInt((m[2] || '0') + frac);
    return { v: m[1] === '-' ? -abs : abs, scale: frac.length };
  }

  function align(a, b) {
    const scale = Math.max(a.scale, b.scale);
    return [a.v * 10n ** BigInt(scale - a.scale), b.v * 10n ** BigInt(scale - b.scale), scale];
  }

  function formatScaled(v, scale) {
    const neg = v < 0n;
    let digits = (neg ? -v : v).toString();
    if (scale > 0) {
      digits = digits.padStart(scale + 1, '0');
      digits = `${digits.slice(0, -scale)}.${digits.slice(-scale)}`;
    }
    return (neg ? '-' : '') + digits;
  }

  /** -1, 0 or 1; 0 when either is not a decimal. */
  function cmpDec(x, y) {
    const a = parseDec(x);
    const b = parseDec(y);
    if (!a || !b) return 0;
    const [p, q] = align(a, b);
    return p < q ? -1 : p > q ? 1 : 0;
  }

  function subDec(x, y) {
    const a = parseDec(x);
    const b = parseDec(y);
    if (!a || !b) return null;
    const [p, q, scale] = align(a, b);
    return formatScaled(p - q, scale);
  }

  /** "0.0196" → "+1.96 %", "-0.158315" → "-15.83 %" (half away from zero). */
  function percentFromFraction(text, places = 2) {
    const a = parseDec(text);
    if (!a) return null;
    let v = a.v * 100n;
    if (a.scale > places) {
      const div = 10n ** BigInt(a.scale - places);
      const rest = v % div;
      v /= div;
      if ((rest < 0n ? -rest : rest) * 2n >= div) v += a.v < 0n ? -1n : 1n;
    } else {
      v *= 10n ** BigInt(places - a.scale);
    }
    return `${v > 0n ? '+' : ''}${formatScaled(v, places)} %`;
  }

  // -- small DOM helpers ---------------------------------------------------------

  const $ = (selector, root = document) => root.querySelector(selector);

  function cell(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const pad = (n, w = 2) => String(n).padStart(w, '0');

  function clock(ms) {
    if (typeof ms !== 'number') return '—';
    const d = new Date(ms);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  const show = (value) => (value === null || value === undefined ? '—' : String(value));

  function log(text, level = 'info') {
    const list = $('#log');
    const item = cell('li', level);
    item.append(cell('span', 'time', clock(Date.now())), document.createTextNode(` ${text}`));
    list.prepend(item);
    while (list.children.length > LOG_LENGTH) list.lastElementChild.remove();
  }

  // -- connection ----------------------------------------------------------------

  const conn = {
    ws: null,
    gen: 0, // events of a superseded socket are ignored
    token: '',
    tokenSource: '',
    attempt: 0,
    welcomed: false,
    retryTimer: null,
    tickTimer: null,
    stableTimer: null,
    refreshTimer: null,
    retryAt: 0,
    messages: 0,
    gaps: 0,
    seqs: new Map(),
    userId: null,
    closes: [], // the last closes and what was decided: {code, reason, reconnect, delayMs, at}
  };

  function wsUrl() {
    return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/ws`;
  }

  function setState(state, text, detail = '') {
    const pill = $('#conn-state');
    pill.dataset.state = state;
    pill.textContent = text;
    $('#conn-detail').textContent = detail;
    $('#disconnect').disabled = state === 'idle' || state === 'closed';
    document.body.dataset.conn = state;
  }

  function clearTimers() {
    for (const name of ['retryTimer', 'stableTimer', 'refreshTimer']) {
      clearTimeout(conn[name]);
      conn[name] = null;
    }
    clearInterval(conn.tickTimer);
    conn.tickTimer = null;
  }

  function connect() {
    clearTimers();
    if (!conn.token) {
      setState('idle', 'no token', 'paste a token or get a demo token');
      return;
    }
    const gen = ++conn.gen;
    conn.welcomed = false;
    let ws;
    try {
      ws = new WebSocket(wsUrl(), ['trading.v1', `bearer.${conn.token}`]);
    } catch (err) {
      setState('closed', 'closed', `cannot open the WebSocket: ${err.message} (is the token a JWT?)`);
      return;
    }
    conn.ws = ws;
    setState('connecting', 'connecting', conn.attempt ? `attempt ${conn.attempt + 1} · ${wsUrl()}` : wsUrl());
    ws.onopen = () => {
      if (gen === conn.gen) setState('connecting', 'connecting', 'upgraded, waiting for the welcome');
    };
    ws.onmessage = (event) => {
      if (gen === conn.gen) onMessage(event.data);
    };
    ws.onclose = (event) => {
      if (gen === conn.gen) onClose(event);
    };
  }

  function disconnect(text) {
    conn.gen += 1;
    clearTimers();
    if (conn.ws) conn.ws.close(1000, 'bye');
    conn.ws = null;
    markStale(true);
    setState('closed', 'closed', text);
  }

  function send(message) {
    if (conn.ws && conn.ws.readyState === WebSocket.OPEN) conn.ws.send(JSON.stringify(message));
  }

  function onClose(event) {
    const wasWelcomed = conn.welcomed;
    conn.ws = null;
    conn.welcomed = false;
    clearTimers();
    markStale(true);
    const code = event.code;
    const reason = event.reason || '';
    const closed = `closed ${code}${reason ? `: ${reason}` : ''}`;
    const policy = closePolicy(code, reason, conn.attempt);
    conn.closes.push({ code, reason, reconnect: policy.reconnect, delayMs: policy.delayMs, at: Date.now() });
    if (conn.closes.length > 20) conn.closes.shift();
    log(`${closed} (${policy.reconnect ? 'will reconnect' : 'will not reconnect'})`, policy.reconnect ? 'warn' : 'error');
    $('#conn-state').dataset.closeCode = String(code);
    if (!policy.reconnect) {
      setState('closed', `closed ${code}`, `${reason || 'no reason'} — ${policy.note}`);
      return;
    }
    let note = policy.note;
    if (code === 1006 && !wasWelcomed) note = 'gateway unreachable, or the handshake was refused: check the token';
    conn.attempt += 1;
    scheduleRetry(policy.delayMs, `${closed} — ${note}`, code === 4000);
  }

  function scheduleRetry(delayMs, why, tokenExpired) {
    conn.retryAt = Date.now() + delayMs;
    const render = () => {
      const left = Math.max(0, conn.retryAt - Date.now());
      setState('reconnecting', `reconnecting in ${(left / 1000).toFixed(1)}s`, why);
      $('#conn-state').dataset.retryMs = String(left);
    };
    render();
    conn.tickTimer = setInterval(render, 100);
    conn.retryTimer = setTimeout(async () => {
      if (tokenExpired && conn.tokenSource === 'demo') {
        const fresh = await fetchDemoToken().catch(() => null);
        if (fresh) {
          conn.token = fresh;
          $('#token').value = fresh;
        }
      }
      connect();
    }, delayMs);
  }

  // -- messages ------------------------------------------------------------------

  function onMessage(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch (err) {
      log(`not JSON: ${err.message}`, 'error');
      return;
    }
    conn.messages += 1;
    $('#msg-count').textContent = String(conn.messages);
    switch (message.type) {
      case 'connection':
        onWelcome(message);
        break;
      case 'data':
        onData(message);
        break;
      case 'subscribed': {
        const what = message.data ? `${message.data.symbol} ${message.data.streams.join(', ')}` : '';
        const recovered = message.recovered === undefined ? '' : ` (recovered: ${message.recovered})`;
        log(`subscribed ${message.channel} ${what}${recovered}`);
        onSubscribed(message);
        break;
      }
      case 'unsubscribed':
        onUnsubscribed(message);
        break;
      case 'resync':
        onResync(message);
        break;
      case 'refreshed':
        log('token refreshed');
        scheduleRefresh(message.expiresAt);
        break;
      case 'bot_command_ack':
        onCommandAck(message);
        break;
      case 'bot_command_result':
        onCommandResult(message);
        break;
      case 'error':
        log(`error ${message.code}: ${message.message}`, 'error');
        onError(message);
        break;
      default:
        break;
    }
  }

  /** The request's `id`, which the gateway echoes in its answer (always as a string). */
  const replyId = (message) => (message.id !== undefined ? String(message.id) : null);

  function onSubscribed(message) {
    if (message.channel === 'market-data' && message.data) {
      // A new baseline for gap tracking on every stream this confirms (docs/protocol.md, `seq`).
      for (const stream of message.data.streams || []) conn.seqs.delete(`market-data|${message.data.symbol}|${stream}`);
      if (message.data.symbol === focus.symbol) onFocusSubscribed(message);
    } else if (PRIVATE_CHANNELS.includes(message.channel)) {
      onPrivateSubscribed(message);
    }
  }

  function onUnsubscribed(message) {
    if (message.channel === 'market-data' && message.data) {
      for (const stream of message.data.streams || []) conn.seqs.delete(`market-data|${message.data.symbol}|${stream}`);
    } else if (PRIVATE_CHANNELS.includes(message.channel)) {
      onPrivateUnsubscribed(message);
    }
  }

  function onError(message) {
    const rid = replyId(message);
    if (rid && commandRequests.has(rid)) {
      onCommandError(message, commandRequests.get(rid));
      return;
    }
    if (message.channel === 'market-data' || (rid && rid.startsWith('focus-'))) onMarketError(message, rid);
  }

  function onWelcome(message) {
    conn.welcomed = true;
    conn.seqs.clear();
    if (conn.userId !== null && conn.userId !== message.userId) {
      // Another user's token: nothing of the previous user's private state may stay on screen.
      resetPrivate();
      resetCommands();
    }
    conn.userId = message.userId;
    const pill = $('#conn-state');
    pill.dataset.session = message.sessionId;
    setState('connected', 'connected', `${message.userId} · session ${message.sessionId}`);
    log(`connected as ${message.userId} (session ${message.sessionId})`);
    conn.stableTimer = setTimeout(() => { conn.attempt = 0; }, STABLE_AFTER_MS);
    scheduleRefresh(message.expiresAt);
    for (const symbol of SYMBOLS) {
      send({ type: 'subscribe', channel: 'market-data', id: `md-${symbol}`, data: { symbol, streams: ['ticker'] } });
    }
    subscribeFocus();
    send({ type: 'subscribe', channel: 'system-health', id: 'health' });
    send({ type: 'subscribe', channel: 'time-sync', id: 'time' });
    subscribePrivate();
    resumeCommands();
  }

  function scheduleRefresh(expiresAt) {
    clearTimeout(conn.refreshTimer);
    conn.refreshTimer = null;
    if (typeof expiresAt !== 'number') return;
    $('#token-info').textContent = `token expires ${new Date(expiresAt).toLocaleString()}`
      + (conn.tokenSource === 'demo' ? ' (demo tokens are refreshed automatically)' : '');
    if (conn.tokenSource !== 'demo') return;
    const inMs = Math.max(1000, expiresAt - Date.now() - 60000);
    conn.refreshTimer = setTimeout(async () => {
      const fresh = await fetchDemoToken().catch(() => null);
      if (!fresh) return;
      conn.token = fresh;
      $('#token').value = fresh;
      send({ type: 'refresh', token: fresh });
    }, Math.min(inMs, 2 ** 31 - 1));
  }

  function checkSeq(message) {
    if (typeof message.seq !== 'number') return;
    const key = `${message.channel}|${message.symbol || ''}|${message.stream || ''}`;
    const last = conn.seqs.get(key);
    const latestValue = message.channel === 'market-data' && LATEST_VALUE_STREAM.test(message.stream || '');
    if (last !== undefined && message.seq > last + 1 && !latestValue) {
      conn.gaps += 1;
      $('#seq-gaps').textContent = String(conn.gaps);
      log(`seq gap on ${key.replaceAll('|', ' ').trim()}: ${last} → ${message.seq}`, 'warn');
    }
    conn.seqs.set(key, message.seq);
  }

  function onData(message) {
    if (PRIVATE_CHANNELS.includes(message.channel)) {
      onPrivateData(message);
      return;
    }
    checkSeq(message);
    if (message.channel === 'market-data') {
      const stream = message.stream || '';
      const countKey = `${message.symbol}|${stream}`;
      marketCounts.set(countKey, (marketCounts.get(countKey) || 0) + 1);
      const focused = message.symbol === focus.symbol;
      if (focused && focus.state !== 'live' && stream !== 'ticker') setFocusState('live');
      if (stream === 'ticker') onTicker(message);
      else if (!focused) return;
      else if (stream.startsWith('orderbook')) onBook(message.data);
      else if (stream === 'trades') onTrades(message.data);
      else if (stream === `kline.${focus.interval}`) onKline(message.data);
    } else if (message.channel === 'system-health') {
      onHealth(message.data, message.ts);
    } else if (message.channel === 'time-sync') {
      onTime(message.data);
    }
  }

  function markStale(stale) {
    document.body.classList.toggle('stale', stale);
  }

  function restartAnimation(node, className) {
    node.classList.remove('flash-up', 'flash-down');
    void node.offsetWidth; // restart the CSS animation
    node.classList.add(className);
  }

  function onTicker(message) {
    lastTickers.set(message.symbol, message.data || {});
    if (message.symbol === focus.symbol) renderFocusTicker(message.data || {});
    const card = $(`.ticker[data-symbol="${message.symbol}"]`);
    if (!card) return;
    renderTicker(card, message.data || {});
    card.dataset.seq = String(message.seq);
    card.dataset.updated = String(Date.now());
  }

  /** A ticker card or the focus line: the price exactly as received, flashing on change. */
  function renderTicker(card, data) {
    markStale(false);
    const price = $('.price', card);
    const previous = price.dataset.value;
    const next = data.lastPrice;
    if (typeof next === 'string') {
      price.textContent = next; // exactly as received
      price.dataset.value = next;
      if (previous && previous !== next) {
        const dir = cmpDec(next, previous) > 0 ? 'up' : 'down';
        price.dataset.dir = dir;
        restartAnimation(price, `flash-${dir}`);
      }
    }
    const change = $('.change', card);
    const percent = percentFromFraction(data.change24h);
    change.textContent = percent || '—';
    change.dataset.sign = percent ? (percent.startsWith('-') ? 'down' : percent.startsWith('+') ? 'up' : 'flat') : '';
    $('.high', card).textContent = show(data.high24h);
    $('.low', card).textContent = show(data.low24h);
    $('.volume', card).textContent = show(data.volume24h);
  }

  function renderLevels(tbody, levels, side, maxSize) {
    while (tbody.children.length > levels.length) tbody.lastElementChild.remove();
    levels.forEach(([price, size], rank) => {
      let row = tbody.children[rank];
      if (!row) {
        row = cell('tr', 'level');
        row.dataset.side = side;
        row.dataset.rank = String(rank);
        const priceCell = cell('td', 'price');
        const sizeCell = cell('td', 'size');
        if (side === 'bid') row.append(sizeCell, priceCell);
        else row.append(priceCell, sizeCell);
        tbody.append(row);
      }
      $('.price', row).textContent = price;
      $('.size', row).textContent = size;
      // The depth bar is the only place a size becomes a number: its width.
      const share = maxSize > 0 ? Math.min(1, Number(size) / maxSize) : 0;
      row.style.setProperty('--depth', `${(share * 100).toFixed(1)}%`);
    });
  }

  function onBook(data) {
    const status = $('#book-status');
    const bids = $('#book-bids');
    const asks = $('#book-asks');
    if (data.resync) {
      const panel = $('#orderbook');
      panel.dataset.resyncs = String(Number(panel.dataset.resyncs || 0) + 1);
      status.dataset.state = 'resyncing';
      status.textContent = 'resyncing';
      bids.replaceChildren();
      asks.replaceChildren();
      for (const id of ['#book-best-bid', '#book-best-ask', '#book-spread']) $(id).textContent = '—';
      $('#book-note').textContent = `lost an update, rebuilding from a snapshot: ${data.reason || ''}`;
      log(`order book resync: ${data.reason || ''}`, 'warn');
      return;
    }
    const topBids = (data.bids || []).slice(0, BOOK_LEVELS);
    const topAsks = (data.asks || []).slice(0, BOOK_LEVELS);
    const maxSize = Math.max(0, ...topBids.concat(topAsks).map(([, size]) => Number(size) || 0));
    renderLevels(bids, topBids, 'bid', maxSize);
    renderLevels(asks, topAsks, 'ask', maxSize);
    const bestBid = topBids.length ? topBids[0][0] : null;
    const bestAsk = topAsks.length ? topAsks[0][0] : null;
    $('#book-best-bid').textContent = show(bestBid);
    $('#book-best-ask').textContent = show(bestAsk);
    $('#book-spread').textContent = bestBid && bestAsk ? subDec(bestAsk, bestBid) : '—';
    const crossed = bestBid && bestAsk && cmpDec(bestBid, bestAsk) >= 0;
    status.dataset.state = crossed ? 'crossed' : 'live';
    status.textContent = crossed ? 'crossed!' : 'live';
    $('#book-note').textContent = `update ${show(data.updateId)}${data.reset ? ' · rebuilt from a fresh snapshot' : ''}`
      + ` · exchange time ${clock(data.ts)}`;
  }

  function onTrades(data) {
    const tape = $('#trades');
    for (const trade of data.trades || []) {
      const row = cell('tr', 'trade');
      row.dataset.side = trade.side;
      row.append(cell('td', 'time', clock(trade.ts)), cell('td', 'price', trade.price), cell('td', 'size', trade.size));
      tape.prepend(row);
    }
    while (tape.children.length > TAPE_LENGTH) tape.lastElementChild.remove();
  }

  function onHealth(data, ts) {
    const status = $('#health-status');
    status.textContent = show(data.status);
    status.dataset.status = data.status || '';
    $('#health-connections').textContent = show(data.connections);
    $('#health-updated').textContent = clock(ts);
    const tbody = $('#health');
    const names = Object.keys(data.exchanges || {}).sort();
    for (const row of [...tbody.children]) if (!names.includes(row.dataset.exchange)) row.remove();
    for (const name of names) {
      const info = data.exchanges[name];
      let row = $(`tr[data-exchange="${name}"]`, tbody);
      if (!row) {
        row = cell('tr');
        row.dataset.exchange = name;
        for (const c of ['name', 'state', 'subscriptions', 'restarts', 'lag', 'resyncs']) row.append(cell('td', c));
        tbody.append(row);
      }
      $('.name', row).textContent = name;
      $('.state', row).textContent = show(info.state);
      row.dataset.state = info.state || '';
      $('.subscriptions', row).textContent = show(info.subscriptions);
      $('.restarts', row).textContent = show(info.restarts);
      $('.lag', row).textContent = show(info.lagMs);
      $('.resyncs', row).textContent = show(info.bookResyncs);
    }
  }

  function onTime(data) {
    const now = Date.now();
    $('#server-time').textContent = `${new Date(data.serverTime).toISOString().replace('T', ' ').slice(0, 23)} UTC`;
    const offset = now - data.serverTime; // includes the delivery delay
    $('#clock-offset').textContent = `${offset >= 0 ? '+' : ''}${offset} ms`;
    $('#clock-offset').dataset.value = String(offset);
    const tbody = $('#time-sync');
    tbody.replaceChildren();
    for (const name of Object.keys(data.exchanges || {}).sort()) {
      const row = cell('tr');
      row.dataset.exchange = name;
      row.append(cell('td', 'name', name), cell('td', 'offset', show(data.exchanges[name].offsetMs)));
      tbody.append(row);
    }
  }

  // -- the chosen symbol: ticker line, book, trades, candles -------------------------

  // What the page shows in the chart, book and trades panels. `subs` holds the exact
  // `data` objects subscribed, because the gateway unsubscribes a market-data
  // subscription by its parameters (symbol and the same streams), not stream by stream.
  const focus = { symbol: DEFAULT_SYMBOL, interval: KLINE_INTERVALS[0], state: 'idle', error: null, subs: [] };
  const lastTickers = new Map(); // symbol → the latest ticker data seen (to show a popular pair at once)
  const marketCounts = new Map(); // "SYMBOL|stream" → data messages received (the console's view of what flows)
  const chart = { candles: [], draws: 0, pending: false, ticks: [] };

  function focusSubscriptions() {
    // The popular pairs' tickers come with their cards: subscribing them twice would make the
    // focus unsubscribe take the card's ticker away too (one subscription per stream key).
    const market = SYMBOLS.includes(focus.symbol) ? ['trades', 'orderbook'] : ['ticker', 'trades', 'orderbook'];
    return [
      { symbol: focus.symbol, streams: market },
      { symbol: focus.symbol, streams: [`kline.${focus.interval}`] },
    ];
  }

  function subscribeFocus() {
    focus.subs = focusSubscriptions();
    focus.subs.forEach((data, n) => {
      send({ type: 'subscribe', channel: 'market-data', id: `focus-${n}-${focus.symbol}`, data });
    });
    setFocusState('subscribing');
  }

  function unsubscribeFocus(which = null) {
    for (const data of focus.subs) {
      if (which && !which(data)) continue;
      send({ type: 'unsubscribe', channel: 'market-data', id: `unfocus-${data.symbol}`, data });
    }
    focus.subs = which ? focus.subs.filter((data) => !which(data)) : [];
  }

  function setFocusState(state, text) {
    focus.state = state;
    const badge = $('#symbol-status');
    badge.dataset.state = state;
    badge.textContent = text || state;
    $('#chart').dataset.state = state;
  }

  function onFocusSubscribed(message) {
    if (focus.state !== 'live' && focus.state !== 'rejected') setFocusState('waiting', 'waiting for data');
    void message;
  }

  function onMarketError(message, rid) {
    const symbol = message.symbol || (rid && rid.startsWith('focus-') ? rid.split('-').slice(2).join('-') : null);
    if (symbol !== focus.symbol) return; // an old symbol's late answer, or a popular card's
    focus.error = { code: message.code, message: message.message, stream: message.stream || null };
    setFocusState('rejected', 'rejected');
    $('#symbol-error').textContent = `${symbol}: ${message.code} — ${message.message}`;
    $('#chart-note').textContent = `no data for ${symbol}: the gateway refused it (${message.code})`;
  }

  function renderFocusTicker(data) {
    const line = $('#focus-ticker');
    line.dataset.symbol = focus.symbol;
    renderTicker(line, data);
  }

  function clearFocusPanels() {
    const line = $('#focus-ticker');
    line.dataset.symbol = focus.symbol;
    $('.sym', line).textContent = focus.symbol;
    for (const name of ['.price', '.change', '.high', '.low', '.volume']) $(name, line).textContent = '—';
    const price = $('.price', line);
    delete price.dataset.value;
    price.dataset.dir = '';
    $('#book-bids').replaceChildren();
    $('#book-asks').replaceChildren();
    for (const id of ['#book-best-bid', '#book-best-ask', '#book-spread']) $(id).textContent = '—';
    $('#book-status').dataset.state = 'waiting';
    $('#book-status').textContent = 'waiting';
    $('#book-note').textContent = '';
    $('#trades').replaceChildren();
    $('#orderbook').dataset.symbol = focus.symbol;
    $('#book-symbol').textContent = focus.symbol;
    $('#trades-symbol').textContent = focus.symbol;
    $('#chart').dataset.symbol = focus.symbol;
    resetChart();
    const known = lastTickers.get(focus.symbol);
    if (known) renderFocusTicker(known);
  }

  /** Show `raw` (any case) in the chart, book and trades panels; false when it is not a valid symbol. */
  function chooseSymbol(raw) {
    const symbol = String(raw || '').trim().toUpperCase();
    $('#symbol-input').value = symbol;
    if (!SYMBOL_RE.test(symbol)) {
      $('#symbol-error').textContent = `"${symbol}" is not a symbol: 2–24 letters or digits, like BTCUSDT`;
      return false;
    }
    $('#symbol-error').textContent = '';
    focus.error = null;
    if (symbol === focus.symbol && focus.state !== 'rejected') return true;
    unsubscribeFocus();
    focus.symbol = symbol;
    for (const button of document.querySelectorAll('.quick-symbol')) {
      button.setAttribute('aria-pressed', String(button.dataset.symbol === symbol));
    }
    clearFocusPanels();
    if (conn.welcomed) subscribeFocus();
    else setFocusState('idle', 'not connected');
    log(`showing ${symbol}`);
    return true;
  }

  function chooseInterval(interval) {
    if (!KLINE_INTERVALS.includes(interval) || interval === focus.interval) return;
    unsubscribeFocus((data) => data.streams.some((s) => s.startsWith('kline.')));
    focus.interval = interval;
    $('#chart').dataset.interval = interval;
    $('#kline-interval').value = interval;
    resetChart();
    if (conn.welcomed) {
      const data = { symbol: focus.symbol, streams: [`kline.${interval}`] };
      focus.subs.push(data);
      send({ type: 'subscribe', channel: 'market-data', id: `focus-k-${focus.symbol}`, data });
    }
  }

  // -- candles -------------------------------------------------------------------------

  function resetChart() {
    chart.candles = [];
    $('#chart-note').textContent = `waiting for ${focus.symbol} ${intervalLabel(focus.interval)} candles`;
    scheduleDraw();
  }

  const intervalLabel = (interval) => (interval === '60' ? '1h' : `${interval}m`);

  /** One kline frame: the open candle is replaced in place, a closed one (confirm) is kept. */
  function onKline(data) {
    if (!data || typeof data.start !== 'number' || String(data.interval) !== focus.interval) return;
    const candle = {
      start: data.start, end: data.end, open: data.open, high: data.high, low: data.low, close: data.close,
      volume: data.volume, confirm: data.confirm === true,
    };
    if (![candle.open, candle.high, candle.low, candle.close].every((v) => parseDec(v))) return;
    chart.candles = mergeCandle(chart.candles, candle, CANDLES_KEPT);
    const candles = chart.candles;
    const closed = candles.filter((c) => c.confirm).length;
    $('#chart-note').textContent = `${focus.symbol} · ${intervalLabel(focus.interval)} · ${candles.length} candles`
      + ` (${closed} closed) · last ${candle.close}${candle.confirm ? '' : ' (open)'}`;
    scheduleDraw();
  }

  /**
   * `candles` (oldest first) with `candle` merged in, at most `keep` of them: a frame for the
   * last candle's start replaces it (the open candle updates in place; `confirm` closes it),
   * a later start is appended, a frame for a closed candle that is not a close is ignored,
   * and one older than everything kept is dropped. Pure: returns a new array.
   */
  function mergeCandle(candles, candle, keep) {
    const out = candles.slice();
    const last = out[out.length - 1];
    if (!last || candle.start > last.start) {
      out.push(candle);
      while (out.length > keep) out.shift();
      return out;
    }
    const at = out.findIndex((c) => c.start === candle.start);
    if (at < 0) return out;
    if (out[at].confirm && !candle.confirm) return out; // a closed candle stays closed
    out[at] = candle;
    return out;
  }

  function scheduleDraw() {
    if (chart.pending) return;
    chart.pending = true;
    const run = () => {
      if (!chart.pending) return;
      chart.pending = false;
      drawChart();
    };
    requestAnimationFrame(run);
    setTimeout(run, 250); // background tabs get no animation frames
  }

  function niceStep(range, ticks) {
    const raw = range / Math.max(1, ticks);
    const power = 10 ** Math.floor(Math.log10(raw));
    const unit = raw / power;
    return (unit <= 1 ? 1 : unit <= 2 ? 2 : unit <= 2.5 ? 2.5 : unit <= 5 ? 5 : 10) * power;
  }

  function cssColor(name, fallback) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
  }

  /** The candles on the canvas: the only place prices become floats (pixel positions and axis ticks). */
  function drawChart() {
    const canvas = $('#chart-canvas');
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(200, canvas.clientWidth);
    const height = Math.max(120, canvas.clientHeight);
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    const colors = {
      bg: cssColor('--panel-2', '#1c222b'), line: cssColor('--line', '#2a313c'), text: cssColor('--muted', '#8590a0'),
      up: cssColor('--up', '#2ebd85'), down: cssColor('--down', '#f6465d'), accent: cssColor('--accent', '#4c8dff'),
    };
    ctx.fillStyle = colors.bg;
    ctx.fillRect(0, 0, width, height);
    chart.draws += 1;
    canvas.dataset.draws = String(chart.draws);
    canvas.dataset.candles = String(chart.candles.length);
    const candles = chart.candles;
    ctx.font = '11px ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace';
    if (!candles.length) {
      ctx.fillStyle = colors.text;
      ctx.textAlign = 'center';
      ctx.textBaseline = 'middle';
      ctx.fillText(focus.state === 'rejected' ? `${focus.symbol}: no data` : `waiting for ${focus.symbol} candles…`,
        width / 2, height / 2);
      return;
    }
    const axisW = 78;
    const inset = { left: 6, top: 10, bottom: 20 };
    const plotW = width - axisW - inset.left;
    const plotH = height - inset.top - inset.bottom;
    const nums = candles.map((c) => ({ o: Number(c.open), h: Number(c.high), l: Number(c.low), c: Number(c.close) }));
    let low = Math.min(...nums.map((n) => n.l));
    let high = Math.max(...nums.map((n) => n.h));
    if (high === low) {
      const bump = Math.abs(high) * 0.0005 || 1;
      high += bump;
      low -= bump;
    }
    const margin = (high - low) * 0.08;
    high += margin;
    low -= margin;
    const y = (price) => inset.top + ((high - price) / (high - low)) * plotH;

    // Price axis: round steps, labelled with as many decimals as the step needs.
    const step = niceStep(high - low, Math.max(2, Math.floor(plotH / 45)));
    let stepDecimals = 0;
    while (stepDecimals < 10 && Math.abs(Math.round(step * 10 ** stepDecimals) - step * 10 ** stepDecimals) > 1e-6) {
      stepDecimals += 1;
    }
    ctx.textAlign = 'left';
    ctx.textBaseline = 'middle';
    ctx.lineWidth = 1;
    chart.ticks = [];
    for (let tick = Math.ceil(low / step) * step; tick <= high; tick += step) {
      const ty = Math.round(y(tick)) + 0.5;
      ctx.strokeStyle = colors.line;
      ctx.beginPath();
      ctx.moveTo(inset.left, ty);
      ctx.lineTo(inset.left + plotW, ty);
      ctx.stroke();
      const label = tick.toFixed(stepDecimals);
      chart.ticks.push(label);
      ctx.fillStyle = colors.text;
      ctx.fillText(label, inset.left + plotW + 6, ty);
    }

    // Candles, right-aligned in CANDLES_KEPT slots.
    const slot = plotW / CANDLES_KEPT;
    const body = Math.max(1, Math.floor(slot * 0.7));
    nums.forEach((n, i) => {
      const cx = Math.round(inset.left + plotW - (candles.length - i - 0.5) * slot) + 0.5;
      const color = n.c >= n.o ? colors.up : colors.down;
      ctx.strokeStyle = color;
      ctx.fillStyle = color;
      ctx.beginPath();
      ctx.moveTo(cx, Math.round(y(n.h)));
      ctx.lineTo(cx, Math.round(y(n.l)));
      ctx.stroke();
      const top = Math.round(y(Math.max(n.o, n.c)));
      const bottom = Math.round(y(Math.min(n.o, n.c)));
      ctx.fillRect(Math.round(cx - body / 2), top, body, Math.max(1, bottom - top));
      if (i % 10 === (candles.length - 1) % 10) {
        const d = new Date(candles[i].start);
        ctx.fillStyle = colors.text;
        ctx.textAlign = 'center';
        ctx.textBaseline = 'alphabetic';
        ctx.fillText(`${pad(d.getHours())}:${pad(d.getMinutes())}`, cx, height - 5);
      }
    });

    // The last close: a dashed line and its exact text on the axis.
    const last = candles[candles.length - 1];
    const lastN = nums[nums.length - 1];
    const ly = Math.round(y(lastN.c)) + 0.5;
    const lastColor = lastN.c >= lastN.o ? colors.up : colors.down;
    ctx.setLineDash([4, 3]);
    ctx.strokeStyle = lastColor;
    ctx.beginPath();
    ctx.moveTo(inset.left, ly);
    ctx.lineTo(inset.left + plotW, ly);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = lastColor;
    ctx.fillRect(inset.left + plotW + 1, ly - 8, axisW - 2, 16);
    ctx.fillStyle = '#0e1116';
    ctx.textAlign = 'left';
    ctx.textBaseline = 'middle';
    ctx.fillText(last.close, inset.left + plotW + 5, ly);
  }

  // -- private channels: positions, bot status, signals -------------------------------

  // Per channel: the position delivered so far ({seq, epoch}, for `since`), and whether the
  // first subscribe is fetching the history the gateway keeps (see onPrivateSubscribed).
  const priv = Object.fromEntries(PRIVATE_CHANNELS.map((channel) => [channel, {
    pos: null, state: 'idle', backfill: 'no', received: 0, recovered: null,
  }]));

  function setPrivateState(channel, state, note) {
    const p = priv[channel];
    p.state = state;
    const badge = $(`.private-state[data-channel="${channel}"]`);
    badge.dataset.state = state;
    badge.textContent = state;
    if (note !== undefined) $(`.private-note[data-channel="${channel}"]`).textContent = note;
  }

  function subscribePrivate() {
    for (const channel of PRIVATE_CHANNELS) {
      const p = priv[channel];
      const message = { type: 'subscribe', channel, id: `priv-${channel}` };
      // After a reconnect: everything missed since the last message shown, in order, once.
      if (p.pos) message.since = { offset: p.pos.seq, epoch: p.pos.epoch };
      send(message);
      setPrivateState(channel, p.pos ? 'recovering' : 'subscribing');
    }
  }

  function onPrivateSubscribed(message) {
    const p = priv[message.channel];
    const hasPosition = typeof message.offset === 'number' && typeof message.epoch === 'string';
    const wasBackfill = p.backfill === 'asked';
    if (message.recovered === true) {
      // The missed messages follow; the position stays the last one processed.
      p.recovered = true;
      p.backfill = 'done';
      if (!p.pos && hasPosition) p.pos = { seq: 0, epoch: message.epoch };
      setPrivateState(message.channel, 'live', wasBackfill ? '' : `recovered after a reconnect (up to offset ${message.offset})`);
      return;
    }
    if (message.recovered === false) {
      p.recovered = false;
      p.backfill = 'done';
      if (!wasBackfill && hasPosition && p.pos && p.pos.epoch !== message.epoch && message.offset > 0) {
        // A new history (the gateway or its broker restarted): show it from its start instead.
        clearPrivatePanel(message.channel);
        p.pos = null;
        p.received = 0;
        backfillPrivate(message.channel, message.epoch);
        return;
      }
      // What was missed is no longer kept: what is shown may be out of date.
      if (hasPosition) p.pos = { seq: message.offset, epoch: message.epoch };
      setPrivateState(message.channel, 'live', p.received
        ? 'messages were missed and are no longer kept: this panel may be out of date' : '');
      return;
    }
    if (message.already) return;
    if (!hasPosition) {
      setPrivateState(message.channel, 'live');
      return;
    }
    // A first subscribe: the gateway keeps the channel's recent history (HISTORY_SIZE,
    // HISTORY_TTL). Ask for it once, from the start, so the panel shows the current state
    // instead of waiting for the next change. Live data until then is not shown: the replay
    // delivers it in order.
    if (p.backfill === 'no' && message.offset > 0) {
      backfillPrivate(message.channel, message.epoch);
      return;
    }
    p.backfill = 'done';
    p.pos = { seq: message.offset, epoch: message.epoch };
    setPrivateState(message.channel, 'live');
  }

  function onPrivateUnsubscribed(message) {
    void message;
  }

  /** Subscribe again from the start of the history the gateway keeps for this channel. */
  function backfillPrivate(channel, epoch) {
    priv[channel].backfill = 'asked';
    send({ type: 'unsubscribe', channel, id: `priv-re-${channel}` });
    send({ type: 'subscribe', channel, id: `priv-${channel}`, since: { offset: 0, epoch } });
    setPrivateState(channel, 'loading');
  }

  function onResync(message) {
    const p = priv[message.channel];
    log(`resync on ${message.channel}: ${message.reason || ''}`, 'warn');
    if (!p) return;
    // Publications may have been lost: start over from the position given.
    clearPrivatePanel(message.channel);
    p.pos = typeof message.offset === 'number' ? { seq: message.offset, epoch: message.epoch } : null;
    p.resyncPending = typeof message.offset !== 'number';
    setPrivateState(message.channel, 'live', `the gateway lost messages (${message.reason || 'resync'}):`
      + ' showing what arrives from now on');
  }

  function onPrivateData(message) {
    const p = priv[message.channel];
    if (p.backfill === 'asked') return; // the replay that was asked for brings it, in order
    if (p.pos && !p.resyncPending && p.pos.epoch === message.epoch && message.seq <= p.pos.seq) return; // seen
    if (p.pos && !p.resyncPending && p.pos.epoch === message.epoch && message.seq > p.pos.seq + 1) {
      conn.gaps += 1;
      $('#seq-gaps').textContent = String(conn.gaps);
      log(`seq gap on ${message.channel}: ${p.pos.seq} → ${message.seq}`, 'warn');
    }
    p.resyncPending = false;
    p.pos = { seq: message.seq, epoch: message.epoch };
    p.received += 1;
    if (message.channel === 'positions') onPositions(message);
    else if (message.channel === 'bot-status') onBotStatus(message);
    else if (message.channel === 'signals') onSignal(message);
  }

  const compact = (value, max = 240) => {
    let text;
    try {
      text = JSON.stringify(value);
    } catch {
      text = String(value);
    }
    return text && text.length > max ? `${text.slice(0, max - 1)}…` : text;
  };

  const pick = (obj, ...names) => {
    for (const name of names) if (obj[name] !== undefined && obj[name] !== null) return obj[name];
    return null;
  };

  function setEmpty(id, list) {
    $(id).hidden = list.children.length > 0;
  }

  /** A position, a list of them, or {positions: [...]}: one row per symbol, latest wins. */
  function onPositions(message) {
    const data = message.data;
    const items = Array.isArray(data) ? data : data && Array.isArray(data.positions) ? data.positions : [data];
    const tbody = $('#positions');
    for (const item of items) {
      if (!item || typeof item !== 'object') continue;
      const symbol = String(pick(item, 'symbol', 'instrument', 'market') ?? '—');
      let row = [...tbody.children].find((r) => r.dataset.symbol === symbol);
      const size = pick(item, 'size', 'qty', 'quantity', 'amount');
      if (item.closed === true || (size !== null && parseDec(String(size)) && cmpDec(String(size), '0') === 0)) {
        if (row) row.remove(); // a closed position
        continue;
      }
      if (!row) {
        row = cell('tr', 'position');
        row.dataset.symbol = symbol;
        for (const c of ['symbol', 'side', 'size', 'entry', 'mark', 'pnl', 'updated']) row.append(cell('td', c));
        tbody.append(row);
        [...tbody.children].sort((a, b) => a.dataset.symbol.localeCompare(b.dataset.symbol))
          .forEach((r) => tbody.append(r));
      }
      const pnl = pick(item, 'unrealizedPnl', 'unrealisedPnl', 'unrealizedPnL', 'upnl', 'pnl');
      const side = pick(item, 'side', 'direction');
      $('.symbol', row).textContent = symbol;
      $('.side', row).textContent = show(side);
      row.dataset.side = side ? String(side).toLowerCase() : '';
      $('.size', row).textContent = show(size);
      $('.entry', row).textContent = show(pick(item, 'entryPrice', 'entry', 'avgPrice', 'averagePrice', 'price'));
      $('.mark', row).textContent = show(pick(item, 'markPrice', 'mark'));
      const pnlCell = $('.pnl', row);
      pnlCell.textContent = show(pnl);
      pnlCell.dataset.sign = pnl === null ? '' : cmpDec(String(pnl), '0') > 0 ? 'up' : cmpDec(String(pnl), '0') < 0 ? 'down' : 'flat';
      $('.updated', row).textContent = clock(message.ts);
      row.dataset.seq = String(message.seq);
    }
    setEmpty('#positions-empty', tbody);
  }

  function onBotStatus(message) {
    const data = message.data && typeof message.data === 'object' ? message.data : { status: message.data };
    const botId = String(pick(data, 'botId', 'bot', 'id') ?? '—');
    const status = pick(data, 'status', 'state');
    const tbody = $('#bots');
    let row = [...tbody.children].find((r) => r.dataset.botId === botId);
    if (!row) {
      row = cell('tr', 'bot');
      row.dataset.botId = botId;
      const statusCell = cell('td', 'status');
      statusCell.append(cell('span', 'badge'));
      row.append(cell('td', 'bot-id', botId), statusCell, cell('td', 'details'), cell('td', 'updated'));
      tbody.append(row);
    }
    const badge = $('.status .badge', row);
    badge.textContent = show(status);
    badge.dataset.status = status === null ? '' : String(status).toLowerCase();
    row.dataset.status = badge.dataset.status;
    const rest = Object.fromEntries(Object.entries(data).filter(([k]) => !['botId', 'bot', 'id', 'status', 'state'].includes(k)));
    $('.details', row).textContent = Object.keys(rest).length ? compact(rest, 160) : '';
    $('.updated', row).textContent = clock(message.ts);
    row.dataset.seq = String(message.seq);
    setEmpty('#bots-empty', tbody);
  }

  function onSignal(message) {
    const data = message.data;
    const list = $('#signals');
    const item = cell('li', 'signal');
    const obj = data && typeof data === 'object' && !Array.isArray(data) ? data : {};
    const symbol = pick(obj, 'symbol');
    const side = pick(obj, 'side', 'action', 'direction');
    item.dataset.seq = String(message.seq);
    if (side !== null) item.dataset.side = String(side).toLowerCase();
    item.append(cell('span', 'time', clock(message.ts)));
    if (symbol !== null) item.append(cell('span', 'symbol', String(symbol)));
    if (side !== null) item.append(cell('span', 'side', String(side)));
    const rest = Array.isArray(data) || !data || typeof data !== 'object' ? data
      : Object.fromEntries(Object.entries(data).filter(([k]) => !['symbol', 'side', 'action', 'direction'].includes(k)));
    item.append(cell('span', 'body', compact(rest)));
    list.prepend(item);
    while (list.children.length > SIGNALS_KEPT) list.lastElementChild.remove();
    setEmpty('#signals-empty', list);
  }

  function clearPrivatePanel(channel) {
    if (channel === 'positions') $('#positions').replaceChildren();
    if (channel === 'bot-status') $('#bots').replaceChildren();
    if (channel === 'signals') $('#signals').replaceChildren();
    setEmpty('#positions-empty', $('#positions'));
    setEmpty('#bots-empty', $('#bots'));
    setEmpty('#signals-empty', $('#signals'));
  }

  function resetPrivate() {
    for (const channel of PRIVATE_CHANNELS) {
      Object.assign(priv[channel], { pos: null, backfill: 'no', received: 0, recovered: null, resyncPending: false });
      clearPrivatePanel(channel);
      setPrivateState(channel, 'idle', '');
    }
  }

  // -- bot commands ------------------------------------------------------------------

  // sent → accepted → succeeded | failed | timed_out; "pending" before the gateway's ack,
  // "rejected" when it answered an error. A state never moves backwards (a late status
  // answer "sent" after a pushed "accepted" changes nothing).
  const COMMAND_RANK = { pending: 0, sent: 1, accepted: 2, unknown: 2, succeeded: 3, failed: 3, timed_out: 3, rejected: 3 };
  const COMMAND_FINAL = new Set(['succeeded', 'failed', 'timed_out', 'rejected']);
  const COMMAND_ID_RE = /^[A-Za-z0-9._:-]{1,64}$/;
  const commands = new Map(); // commandId → command
  const commandRequests = new Map(); // request id → {commandId, kind: 'command' | 'status'}
  let requestCounter = 0;

  function newCommandId() {
    if (window.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
    // Pages served over plain http from another host are not a secure context: no randomUUID.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function nextRequest(commandId, kind) {
    requestCounter += 1;
    const rid = `cmd-${requestCounter}`;
    commandRequests.set(rid, { commandId, kind });
    if (commandRequests.size > 500) commandRequests.delete(commandRequests.keys().next().value);
    return rid;
  }

  function advanceCommand(cmd, state) {
    if (!(state in COMMAND_RANK)) return false;
    if (COMMAND_FINAL.has(cmd.state) || COMMAND_RANK[state] < COMMAND_RANK[cmd.state]) return false;
    if (state === cmd.state) return false;
    cmd.state = state;
    cmd.history.push(state);
    cmd.updatedAt = Date.now();
    return true;
  }

  function transmitCommand(cmd) {
    if (!conn.welcomed) {
      cmd.note = 'not connected: it is sent once the page reconnects';
      return;
    }
    const rid = nextRequest(cmd.commandId, 'command');
    const data = { botId: cmd.botId, command: cmd.command, params: cmd.params, commandId: cmd.commandId };
    if (cmd.timeoutMs) data.timeoutMs = cmd.timeoutMs;
    send({ type: 'bot_command', id: rid, data });
    cmd.transmissions += 1;
    cmd.note = cmd.transmissions > 1 ? 'sent again after a reconnect (same commandId)' : '';
  }

  function queryCommand(cmd) {
    const rid = nextRequest(cmd.commandId, 'status');
    send({ type: 'bot_command_status', id: rid, data: { commandId: cmd.commandId } });
  }

  /**
   * After a (re)connect: resend what was never acknowledged (same commandId: the gateway
   * answers a duplicate, it does not run it twice), ask about what has not finished. Paced,
   * a few a second, to stay well inside the connection's message budget (WS_COMMAND_RATE).
   */
  function resumeCommands() {
    const gen = conn.gen;
    const due = [...commands.values()].filter((cmd) => !COMMAND_FINAL.has(cmd.state));
    due.forEach((cmd, n) => {
      setTimeout(() => {
        if (gen !== conn.gen || !conn.welcomed || COMMAND_FINAL.has(cmd.state)) return;
        if (cmd.state === 'pending') transmitCommand(cmd);
        else queryCommand(cmd);
        renderCommands();
      }, 200 + n * 150);
    });
    renderCommands();
  }

  function sendCommand(botId, command, params, timeoutMs) {
    const cmd = {
      commandId: newCommandId(), botId, command, params, timeoutMs: timeoutMs || null,
      state: 'pending', history: ['pending'], result: undefined, error: null, duplicate: false,
      createdAt: Date.now(), updatedAt: Date.now(), transmissions: 0, note: '', mine: true,
    };
    commands.set(cmd.commandId, cmd);
    transmitCommand(cmd);
    trimCommands();
    renderCommands();
    return cmd.commandId;
  }

  function trimCommands() {
    for (const [id, cmd] of commands) {
      if (commands.size <= COMMANDS_KEPT) break;
      if (COMMAND_FINAL.has(cmd.state)) commands.delete(id);
    }
  }

  function onCommandAck(message) {
    const data = message.data || {};
    const cmd = commands.get(data.commandId);
    if (!cmd) return;
    cmd.duplicate = data.duplicate === true;
    advanceCommand(cmd, typeof data.state === 'string' ? data.state : 'sent');
    if (cmd.state === 'pending') advanceCommand(cmd, 'sent');
    cmd.error = null;
    // A resend the gateway already knew, finished meanwhile: ask for its result.
    if (cmd.duplicate && COMMAND_FINAL.has(cmd.state) && cmd.result === undefined) queryCommand(cmd);
    renderCommands();
  }

  function onCommandResult(message) {
    const data = message.data || {};
    if (typeof data.commandId !== 'string') return;
    let cmd = commands.get(data.commandId);
    if (!cmd) {
      // Sent from another tab or connection of the same user: shown too.
      cmd = {
        commandId: data.commandId, botId: data.botId, command: data.command, params: null, timeoutMs: null,
        state: 'sent', history: ['sent'], result: undefined, error: null, duplicate: false,
        createdAt: Date.now(), updatedAt: Date.now(), transmissions: 0, note: 'sent from another connection', mine: false,
      };
      commands.set(cmd.commandId, cmd);
      trimCommands();
    }
    if (advanceCommand(cmd, data.state) || data.state === cmd.state) {
      if ('result' in data) cmd.result = data.result;
      if (typeof data.ts === 'number') cmd.ts = data.ts;
    }
    renderCommands();
  }

  function onCommandError(message, request) {
    const cmd = commands.get(request.commandId);
    if (!cmd) return;
    if (message.code === 'rate_limited') {
      // Not handled at all: try the same request again a little later.
      cmd.note = 'rate limited: trying again';
      const gen = conn.gen;
      setTimeout(() => {
        if (gen !== conn.gen || !conn.welcomed || COMMAND_FINAL.has(cmd.state)) return;
        if (request.kind === 'command') transmitCommand(cmd);
        else queryCommand(cmd);
      }, 1000 + Math.floor(Math.random() * 1000));
      renderCommands();
      return;
    }
    cmd.error = { code: message.code, message: message.message };
    if (request.kind === 'command') {
      advanceCommand(cmd, 'rejected');
    } else if (message.code === 'not_found') {
      advanceCommand(cmd, 'unknown');
      cmd.note = 'the gateway no longer knows this command';
    }
    renderCommands();
  }

  function renderCommands() {
    const list = $('#commands');
    const items = [...commands.values()].reverse(); // newest first
    const rows = new Map([...list.children].map((li) => [li.dataset.commandId, li]));
    for (const [id, li] of rows) if (!commands.has(id)) li.remove();
    items.forEach((cmd, index) => {
      let li = rows.get(cmd.commandId);
      if (!li) {
        li = cell('li', 'command');
        li.dataset.commandId = cmd.commandId;
        const head = cell('div', 'head');
        head.append(cell('span', 'badge state'), cell('span', 'what'), cell('span', 'steps muted'),
          cell('span', 'when muted'));
        li.append(head, cell('div', 'ident muted small'), cell('div', 'error-line small'), cell('pre', 'result'));
      }
      if (list.children[index] !== li) list.insertBefore(li, list.children[index] || null);
      li.dataset.state = cmd.state;
      li.dataset.history = cmd.history.join(' ');
      const badge = $('.state', li);
      badge.textContent = cmd.state.replace('_', ' ');
      badge.dataset.state = cmd.state;
      $('.what', li).textContent = `${cmd.botId} · ${cmd.command}${cmd.params && Object.keys(cmd.params).length
        ? ` ${compact(cmd.params, 80)}` : ''}`;
      $('.steps', li).textContent = cmd.history.join(' → ');
      $('.when', li).textContent = clock(cmd.ts || cmd.updatedAt);
      $('.ident', li).textContent = `commandId ${cmd.commandId}${cmd.duplicate ? ' · duplicate (already known)' : ''}`
        + `${cmd.note ? ` · ${cmd.note}` : ''}`;
      $('.error-line', li).textContent = cmd.error ? `${cmd.error.code}: ${cmd.error.message}` : '';
      const result = $('.result', li);
      const hasResult = cmd.result !== undefined && (cmd.result !== null || COMMAND_FINAL.has(cmd.state));
      result.hidden = !hasResult;
      result.textContent = hasResult ? JSON.stringify(cmd.result, null, 2) : '';
    });
    $('#commands-empty').hidden = commands.size > 0;
  }

  function resetCommands() {
    commands.clear();
    commandRequests.clear();
    renderCommands();
  }

  $('#command-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const error = $('#cmd-error');
    const botId = $('#cmd-bot').value.trim();
    const command = $('#cmd-name').value.trim();
    let params;
    try {
      params = JSON.parse($('#cmd-params').value.trim() || '{}');
    } catch (err) {
      error.textContent = `params: not JSON (${err.message})`;
      return;
    }
    if (!botId || botId.length > 128) {
      error.textContent = 'bot: 1–128 characters';
      return;
    }
    if (!command || command.length > 64) {
      error.textContent = 'command: 1–64 characters';
      return;
    }
    if (!params || typeof params !== 'object' || Array.isArray(params)) {
      error.textContent = 'params: a JSON object, like {"size": 1}';
      return;
    }
    const timeoutText = $('#cmd-timeout').value.trim();
    let timeoutMs = null;
    if (timeoutText) {
      const seconds = Number(timeoutText);
      if (!Number.isInteger(seconds) || seconds < 1 || seconds > 600) {
        error.textContent = 'timeout: 1–600 seconds, or empty for the gateway\'s default';
        return;
      }
      timeoutMs = seconds * 1000;
    }
    error.textContent = '';
    sendCommand(botId, command, params, timeoutMs);
  });

  // -- symbol picker -----------------------------------------------------------------

  $('#symbol-form').addEventListener('submit', (event) => {
    event.preventDefault();
    chooseSymbol($('#symbol-input').value);
  });
  for (const button of document.querySelectorAll('.quick-symbol')) {
    button.setAttribute('aria-pressed', String(button.dataset.symbol === focus.symbol));
    button.addEventListener('click', () => chooseSymbol(button.dataset.symbol));
  }
  $('#kline-interval').addEventListener('change', (event) => chooseInterval(event.target.value));
  window.addEventListener('resize', scheduleDraw);

  // -- token box -----------------------------------------------------------------

  async function fetchDemoToken() {
    const user = $('#demo-user').value.trim() || 'demo';
    const response = await fetch('/api/demo/token', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ user }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok || typeof body.token !== 'string') {
      throw new Error(body.message || `HTTP ${response.status}`);
    }
    return body.token;
  }

  function describeToken(token) {
    try {
      const payload = JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
      const exp = typeof payload.exp === 'number' ? new Date(payload.exp * 1000).toLocaleString() : '?';
      return `user ${payload.sub} · expires ${exp}`;
    } catch {
      return 'not a readable JWT';
    }
  }

  function useToken(token, source) {
    if (conn.ws || conn.retryTimer) disconnect('switching token');
    conn.token = token.trim();
    conn.tokenSource = source;
    conn.attempt = 0;
    $('#token-info').textContent = conn.token ? describeToken(conn.token) : '';
    connect();
  }

  $('#token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    useToken($('#token').value, 'pasted');
  });

  $('#disconnect').addEventListener('click', () => disconnect('disconnected'));

  $('#demo-token').addEventListener('click', async () => {
    const button = $('#demo-token');
    button.disabled = true;
    try {
      const token = await fetchDemoToken();
      $('#token').value = token;
      log('got a demo token');
      useToken(token, 'demo');
    } catch (err) {
      log(`demo token: ${err.message}`, 'error');
      $('#token-info').textContent = `demo token: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  });

  window.addEventListener('online', () => {
    if (conn.retryTimer) connect();
  });

  setState('idle', 'no token', 'paste a token or get a demo token');
  clearFocusPanels();
  setFocusState('idle', 'not connected');
  resetPrivate();
  renderCommands();

  // For tests and the console.
  window.dashboard = {
    closePolicy,
    backoffDelay,
    decimal: { parseDec, cmpDec, subDec, percentFromFraction },
    connect: (token) => useToken(token, 'pasted'),
    disconnect: () => disconnect('disconnected'),
    chooseSymbol,
    chooseInterval,
    sendCommand,
    mergeCandle,
    get attempt() { return conn.attempt; },
    get closes() { return conn.closes.slice(); },
  };

  // The page's state, read-only copies (tests and the console).
  window.__dashboard = {
    get user() { return conn.userId; },
    get focus() { return { symbol: focus.symbol, interval: focus.interval, state: focus.state, error: focus.error,
      subscriptions: focus.subs.map((d) => ({ symbol: d.symbol, streams: d.streams.slice() })) }; },
    get chart() {
      const last = chart.candles[chart.candles.length - 1] || null;
      return { symbol: focus.symbol, interval: focus.interval, count: chart.candles.length, draws: chart.draws,
        closed: chart.candles.filter((c) => c.confirm).length, last: last && { ...last },
        candles: chart.candles.map((c) => ({ ...c })), ticks: (chart.ticks || []).slice() };
    },
    get private() {
      return Object.fromEntries(PRIVATE_CHANNELS.map((c) => [c, { ...priv[c], pos: priv[c].pos && { ...priv[c].pos } }]));
    },
    get commands() {
      return [...commands.values()].map((c) => ({ ...c, history: c.history.slice() }));
    },
    get marketCounts() { return Object.fromEntries(marketCounts); },
  };
})();
