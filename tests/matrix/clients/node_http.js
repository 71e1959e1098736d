// The reuse matrix's Node driver: the core `http` module as a legacy app
// uses it behind a proxy: an absolute-form request to the proxy, and no
// agent (a new connection, `Connection: close`, for every request).
//
// Reads one JSON command per line, {"method", "url", "body", "n", "proxy"},
// sends the request n times and prints {"results": [[status, digest], ...]}.
'use strict';
const crypto = require('crypto');
const http = require('http');
const readline = require('readline');

const PATTERN = Buffer.from('0123456789abcdef');
const SIZES = { '1k': 1024, '64k': 64 * 1024, '1m': 1024 * 1024, chunked: 100 * 1024 };

function bodyBytes(kind) {
  const size = SIZES[kind];
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i++) b[i] = PATTERN[i % PATTERN.length];
  return b;
}

function once(cmd) {
  return new Promise((resolve, reject) => {
    const target = new URL(cmd.url);
    const opts = { method: cmd.method, agent: false, headers: {} };
    if (cmd.proxy) {
      const p = new URL(cmd.proxy);
      Object.assign(opts, { host: p.hostname, port: p.port, path: cmd.url });
      opts.headers.Host = target.host;
    } else {
      Object.assign(opts, { host: target.hostname, port: target.port, path: target.pathname });
    }
    let data = null;
    if (cmd.body) data = bodyBytes(cmd.body);
    if (data && cmd.body !== 'chunked') opts.headers['Content-Length'] = data.length;
    const req = http.request(opts, (res) => {
      const hash = crypto.createHash('sha256');
      res.on('data', (c) => hash.update(c));
      res.on('end', () => resolve([res.statusCode, hash.digest('hex').slice(0, 16)]));
      res.on('error', reject);
    });
    req.setTimeout(30000, () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    if (data && cmd.body === 'chunked') {
      // No length given: Node sends the pieces chunked.
      for (let i = 0; i < data.length; i += 10 * 1024) req.write(data.subarray(i, i + 10 * 1024));
    } else if (data) {
      req.write(data);
    }
    req.end();
  });
}

async function run(cmd) {
  const results = [];
  try {
    for (let i = 0; i < cmd.n; i++) results.push(await once(cmd));
  } catch (e) {
    return { results, error: String(e) };
  }
  return { results };
}

const rl = readline.createInterface({ input: process.stdin });
const queue = [];
let busy = false;
async function drain() {
  if (busy) return;
  busy = true;
  while (queue.length) {
    const cmd = queue.shift();
    process.stdout.write(JSON.stringify(await run(cmd)) + '\n');
  }
  busy = false;
}
rl.on('line', (line) => {
  queue.push(JSON.parse(line));
  drain();
});
