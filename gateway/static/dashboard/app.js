// The gateway dashboard: one WebSocket to this gateway, no libraries, no build step.
//
// Prices and sizes stay the exchange's exact decimal strings: they are shown as
// received, and compared or subtracted (flash direction, spread, 24h percent)
// with the exact BigInt decimals below, never with floats.
(() => {
  'use strict';

  const SYMBOLS = ['BTCUSDT', 'ETHUSDT', 'ADAUSDT', 'SOLUSDT'];
  const BOOK_SYMBOL = 'BTCUSDT';
  const BOOK_LEVELS = 10;
  const TAPE_LENGTH = 30;
  const LOG_LENGTH = 40;

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
        log(`subscribed ${message.channel} ${what}`);
        break;
      }
      case 'refreshed':
        log('token refreshed');
        scheduleRefresh(message.expiresAt);
        break;
      case 'error':
        log(`error ${message.code}: ${message.message}`, 'error');
        break;
      default:
        break;
    }
  }

  function onWelcome(message) {
    conn.welcomed = true;
    conn.seqs.clear();
    const pill = $('#conn-state');
    pill.dataset.session = message.sessionId;
    setState('connected', 'connected', `${message.userId} · session ${message.sessionId}`);
    log(`connected as ${message.userId} (session ${message.sessionId})`);
    conn.stableTimer = setTimeout(() => { conn.attempt = 0; }, STABLE_AFTER_MS);
    scheduleRefresh(message.expiresAt);
    for (const symbol of SYMBOLS) {
      const streams = symbol === BOOK_SYMBOL ? ['ticker', 'trades', 'orderbook'] : ['ticker'];
      send({ type: 'subscribe', channel: 'market-data', id: `md-${symbol}`, data: { symbol, streams } });
    }
    send({ type: 'subscribe', channel: 'system-health', id: 'health' });
    send({ type: 'subscribe', channel: 'time-sync', id: 'time' });
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
    if (last !== undefined && message.seq > last + 1) {
      conn.gaps += 1;
      $('#seq-gaps').textContent = String(conn.gaps);
      log(`seq gap on ${key.replaceAll('|', ' ').trim()}: ${last} → ${message.seq}`, 'warn');
    }
    conn.seqs.set(key, message.seq);
  }

  function onData(message) {
    checkSeq(message);
    if (message.channel === 'market-data') {
      const stream = message.stream || '';
      if (stream === 'ticker') onTicker(message);
      else if (stream.startsWith('orderbook') && message.symbol === BOOK_SYMBOL) onBook(message.data);
      else if (stream === 'trades' && message.symbol === BOOK_SYMBOL) onTrades(message.data);
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
    const data = message.data || {};
    const card = $(`.ticker[data-symbol="${message.symbol}"]`);
    if (!card) return;
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
    card.dataset.seq = String(message.seq);
    card.dataset.updated = String(Date.now());
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

  // For tests and the console.
  window.dashboard = {
    closePolicy,
    backoffDelay,
    decimal: { parseDec, cmpDec, subDec, percentFromFraction },
    connect: (token) => useToken(token, 'pasted'),
    disconnect: () => disconnect('disconnected'),
    get attempt() { return conn.attempt; },
    get closes() { return conn.closes.slice(); },
  };
})();
