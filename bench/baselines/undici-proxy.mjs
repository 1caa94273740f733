// A straightforward HTTP reverse proxy on node:http + an undici Pool: the bar for a Node HTTP path.
//   node undici-proxy.mjs LISTEN_HOST:PORT http://UPSTREAM_HOST:PORT
import http from 'node:http';
import { Pool } from 'undici';

const [listenArg, origin] = process.argv.slice(2);
if (!listenArg || !origin) {
  console.error('usage: node undici-proxy.mjs LISTEN_HOST:PORT http://UPSTREAM_HOST:PORT');
  process.exit(2);
}
const i = listenArg.lastIndexOf(':');
const listen = { host: listenArg.slice(0, i), port: Number(listenArg.slice(i + 1)) };

// Hop-by-hop headers belong to one connection and are never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade']);
const pool = new Pool(origin, { connections: 64, keepAliveTimeout: 60_000 });

function endToEnd(headers) {
  const out = {};
  for (const [name, value] of Object.entries(headers)) if (!HOP_BY_HOP.has(name)) out[name] = value;
  return out;
}

// pool.stream() writes the upstream body straight into the client response (no intermediate
// Readable): the form undici documents for proxies.
const server = http.createServer(async (req, res) => {
  try {
    const hasBody = req.method !== 'GET' && req.method !== 'HEAD';
    await pool.stream(
      { path: req.url, method: req.method, headers: endToEnd(req.headers), body: hasBody ? req : null },
      ({ statusCode, headers }) => {
        res.writeHead(statusCode, endToEnd(headers));
        return res;
      },
    );
  } catch {
    if (!res.headersSent) res.writeHead(502);
    res.end();
  }
});
server.keepAliveTimeout = 60_000;
server.listen({ host: listen.host, port: listen.port, backlog: 65535 }, () => console.log(`listening ${listenArg}`));
process.on('SIGTERM', () => process.exit(0));
