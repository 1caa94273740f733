import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { listen0 } from '../helpers/net.js';
import { httpRouteConfig, rawRequest, startRoute, startUpstream, type RunningRoute } from '../helpers/http.js';
import { once, until } from '../helpers/wait.js';

// Message framing on the lean HTTP/1.1 path, with raw sockets on both sides so the bytes
// can be placed exactly: pipelined requests, bodies whose end only a close can mark,
// chunked responses for HTTP/1.0 clients, HEAD, and bodies split at awkward places.

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function routeTo(port: number, extra = ''): Promise<RunningRoute> {
  const route = await startRoute(httpRouteConfig(`protocol: http\nupstream: http://127.0.0.1:${port}\n${extra}`));
  cleanups.push(() => route.close());
  return route;
}

/** Sends `text` on one connection and reads until `done(received)` says so (or the close), bounded. */
async function exchange(port: number, text: string | Buffer[], done: (received: string) => boolean): Promise<string> {
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => {});
  await once(socket, 'connect', 5_000);
  let received = '';
  const finished = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer; got ${JSON.stringify(received.slice(0, 300))}`)), 5_000);
    const finish = (): void => {
      clearTimeout(timer);
      resolve();
    };
    socket.on('data', (chunk: Buffer) => {
      received += chunk.toString('latin1');
      if (done(received)) finish();
    });
    socket.on('close', finish);
  });
  for (const piece of Array.isArray(text) ? text : [text]) {
    socket.write(piece);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  await finished;
  socket.destroy();
  return received;
}

describe('pipelined requests', () => {
  it('answers them in order on one connection, bodies included', async () => {
    const upstream = await startUpstream((req, res) => {
      let body = '';
      req.setEncoding('latin1').on('data', (t: string) => (body += t));
      req.on('end', () => res.end(`${req.method} ${req.url} [${body}]`));
    });
    cleanups.push(() => upstream.close());
    const route = await routeTo(upstream.port);
    const text =
      'GET /one HTTP/1.1\r\nHost: x\r\n\r\n' +
      'POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello' +
      'PUT /three HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n' +
      'GET /four HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n';
    const received = await exchange(route.port, text, () => false);
    const bodies = received.split(/HTTP\/1\.1 200 OK\r\n/).slice(1).map((part) => part.slice(part.indexOf('\r\n\r\n') + 4));
    expect(bodies).toEqual(['GET /one []', 'POST /two [hello]', 'PUT /three [abc]', 'GET /four []']);
  });

  it('reads a head and a body split at every awkward place', async () => {
    const upstream = await startUpstream((req, res) => {
      let body = '';
      req.setEncoding('latin1').on('data', (t: string) => (body += t));
      req.on('end', () => res.end(`got ${body}`));
    });
    cleanups.push(() => upstream.close());
    const route = await routeTo(upstream.port);
    const text = 'POST /split HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\nwiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n';
    const pieces = text.match(/[\s\S]{1,3}/g)!.map((piece) => Buffer.from(piece, 'latin1'));
    const received = await exchange(route.port, pieces, () => false);
    expect(received).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(received.endsWith('got wikipedia')).toBe(true);
  });
});

describe('response framing', () => {
  it('a body that ends with the upstream close reaches the client whole, and the client connection closes', async () => {
    const upstream = await listen0((socket) => {
      socket.once('data', () => socket.end('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end'));
    });
    cleanups.push(() => upstream.close());
    const route = await routeTo(upstream.port);
    const response = await rawRequest(route.port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    expect(response.status).toBe(200);
    expect(response.headers.get('connection')).toEqual(['close']);
    expect(response.body.toString()).toBe('until the end');
    // The pool counts its connection's end at the socket's 'close', which nothing orders
    // before the client's own close: wait for the count rather than a fixed time.
    await until(async () => (await route.metric('evictions_total', { route: 'web', reason: 'peer_closed' })) === 1, 5_000, 'the peer_closed eviction');
  });

  it('a chunked response reaches an HTTP/1.0 client unframed, then the close', async () => {
    const upstream = await startUpstream((req, res) => {
      res.write('chunk one, ');
      setTimeout(() => res.end('chunk two'), 10);
    });
    cleanups.push(() => upstream.close());
    const route = await routeTo(upstream.port);
    const response = await rawRequest(route.port, 'GET / HTTP/1.0\r\n\r\n');
    expect(response.headers.has('transfer-encoding')).toBe(false);
    expect(response.headers.get('connection')).toEqual(['close']);
    expect(response.body.toString()).toBe('chunk one, chunk two');
  });

  it('HEAD keeps the upstream connection in step whatever length the upstream states', async () => {
    let connections = 0;
    const upstream = await listen0((socket) => {
      connections++;
      let buffered = '';
      socket.on('data', (chunk: Buffer) => {
        buffered += chunk.toString('latin1');
        for (let end = buffered.indexOf('\r\n\r\n'); end !== -1; end = buffered.indexOf('\r\n\r\n')) {
          const head = buffered.slice(0, end);
          buffered = buffered.slice(end + 4);
          if (head.startsWith('HEAD')) socket.write('HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n');
          else socket.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n');
        }
      });
    });
    cleanups.push(() => upstream.close());
    const route = await routeTo(upstream.port, 'pool: { maxSockets: 1 }');
    const head = await rawRequest(route.port, 'HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(head.headers.get('content-length')).toEqual(['1000']);
    expect(head.body.length).toBe(0);
    const get = await rawRequest(route.port, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(get.body.toString()).toBe('2\r\nok\r\n0\r\n\r\n');
    expect(connections).toBe(1);
  });

  it('answers 502 to a 101 nobody asked for, and evicts a connection that sends more than its response', async () => {
    const upstream = await listen0((socket) => {
      socket.once('data', (chunk: Buffer) => {
        if (chunk.toString().startsWith('GET /switch')) socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n');
        else socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA');
      });
    });
    cleanups.push(() => upstream.close());
    const route = await routeTo(upstream.port);
    expect((await rawRequest(route.port, 'GET /switch HTTP/1.0\r\n\r\n')).status).toBe(502);
    const extra = await rawRequest(route.port, 'GET /extra HTTP/1.0\r\n\r\n');
    expect(extra.body.toString()).toBe('ok');
    await until(async () => (await route.metric('evictions_total', { route: 'web', reason: 'unexpected_data' })) === 1, 5_000, 'the unexpected_data eviction');
  });
});

describe('client requests the route refuses', () => {
  it('keeps the connection after a refusal of a bodiless request, closes it after one with a body', async () => {
    const upstream = await startUpstream((req, res) => res.end('fine'));
    cleanups.push(() => upstream.close());
    const route = await routeTo(upstream.port);
    // CONNECT on a reverse route is refused; the raw answer closes the connection.
    const connect = await rawRequest(route.port, 'CONNECT example:443 HTTP/1.1\r\nHost: example:443\r\n\r\n');
    expect(connect.status).toBe(405);
    // A request line with an absolute target the URL parser refuses: 400, and the next request on the same connection is served.
    const both = await exchange(route.port, 'GET http://[bad/ HTTP/1.1\r\nHost: x\r\n\r\nGET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', () => false);
    expect(both).toMatch(/^HTTP\/1\.1 400 Bad Request/);
    expect(both.endsWith('fine')).toBe(true);
  });
});
