// Peer for bench/run.py: a minimal broadcast server on Node.js `ws` (pinned in package.json).
//
// Accepts clients on ws://127.0.0.1:PORT/?g=GROUP and, on command, sends with
// the library's own send() per client (the frame is built per client by ws;
// the payload Buffer is encoded once per publication):
//   burst: ~200-byte messages to every client as fast as possible; every 8
//          publications it yields to the event loop (setImmediate), and waits
//          while any client's bufferedAmount is above 256 KiB;
//   paced: per_tick messages of `size` bytes to each group hz times a second;
//          all messages of one tick carry the tick's time as receivedAt (like
//          the gateway's exchange frames of one simulator step, which arrive
//          together), so a group's latency includes the groups sent before it.
// Heartbeat: the pattern from ws's README (ping every --ping-interval s,
// terminate a client that did not pong since the last ping).
// stdin/stdout: one JSON object per line; the first line out is {"port": P}.
'use strict';

const readline = require('readline');
const { WebSocketServer } = require('ws');

const HWM = 256 * 1024;
const args = process.argv.slice(2);
const pingIdx = args.indexOf('--ping-interval');
const pingInterval = pingIdx >= 0 ? Number(args[pingIdx + 1]) : 20;

const HEAD = (seq, ts) =>
  `{"type":"data","channel":"market-data","symbol":"BTCUSDT","stream":"ticker","seq":${seq},"ts":${ts},"data":{"pad":"`;
const TAIL = (ts) => `","receivedAt":${ts}}}`;
function message(seq, nowMs, size) {
  const head = HEAD(seq, nowMs);
  const tail = TAIL(nowMs);
  return Buffer.from(head + 'x'.repeat(Math.max(0, size - head.length - tail.length)) + tail);
}

const groups = new Map();
const all = new Set();
let seq = 0;
let running = null; // a function that stops the current publisher

const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false, backlog: 4096 });

wss.on('connection', (ws, req) => {
  const g = new URL(req.url, 'http://x').searchParams.get('g') || '0';
  if (!groups.has(g)) groups.set(g, new Set());
  groups.get(g).add(ws);
  all.add(ws);
  ws.isAlive = true;
  ws.on('pong', () => { ws.isAlive = true; });
  ws.on('error', () => {});
  ws.on('close', () => { groups.get(g).delete(ws); all.delete(ws); });
});

setInterval(() => {
  for (const ws of all) {
    if (!ws.isAlive) { ws.terminate(); continue; }
    ws.isAlive = false;
    ws.ping();
  }
}, pingInterval * 1000).unref();

function sendAll(conns, buf) {
  for (const ws of conns) {
    if (ws.readyState === 1) ws.send(buf, { binary: false });
  }
}

function burst(size) {
  let stop = false;
  const step = () => {
    if (stop) return;
    for (let k = 0; k < 8; k++) {
      seq += 1;
      sendAll(all, message(seq, Date.now(), size));
    }
    for (const ws of all) {
      if (ws.bufferedAmount > HWM) { setTimeout(step, 1); return; }
    }
    setImmediate(step);
  };
  setImmediate(step);
  return () => { stop = true; };
}

function paced(hz, perTick, size) {
  const period = 1000 / hz;
  let next = performance.now();
  let timer = null;
  const tick = () => {
    // Every group's update "arrives" now (see ws_peer.py): one receivedAt per tick.
    const now = Date.now();
    for (const conns of groups.values()) {
      for (let k = 0; k < perTick; k++) {
        seq += 1;
        sendAll(conns, message(seq, now, size));
      }
    }
    next += period;
    timer = setTimeout(tick, Math.max(0, next - performance.now()));
  };
  next += period;
  timer = setTimeout(tick, Math.max(0, next - performance.now()));
  return () => clearTimeout(timer);
}

wss.on('listening', () => {
  process.stdout.write(JSON.stringify({ port: wss.address().port, pid: process.pid }) + '\n');
});

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const cmd = JSON.parse(line);
  let reply = { ok: true };
  if (['burst', 'paced', 'stop'].includes(cmd.cmd) && running) { running(); running = null; }
  if (cmd.cmd === 'burst') running = burst(cmd.size || 200);
  else if (cmd.cmd === 'paced') running = paced(cmd.hz, cmd.per_tick, cmd.size);
  else if (cmd.cmd === 'stats') reply = { clients: all.size, sent: seq };
  process.stdout.write(JSON.stringify(reply) + '\n');
  if (cmd.cmd === 'exit') process.exit(0);
});
rl.on('close', () => process.exit(0));
