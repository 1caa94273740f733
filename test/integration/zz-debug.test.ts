import { it } from 'vitest';
import net from 'node:net';
import Redis from 'ioredis';
import { redisCodec } from '../../src/protocols/redis.js';
import { startCodecRelay } from '../helpers/codec-relay.js';
import { startRedis } from '../helpers/servers.js';
import { sleep, until } from '../helpers/wait.js';

it('debug', async () => {
  const server = await startRedis();
  const relay = await startCodecRelay(redisCodec, server.port, { probeEveryMs: 1 });
  const port = process.env.DIRECT ? server.port : relay.port;
  const dump = () => {
    for (const c of relay.connections) {
      console.log(c.tracker.state, c.tracker.offReason, c.tracker.probing, c.probesSent, c.probesAnswered);
      for (const e of c.events.slice(-8)) console.log(e.from, JSON.stringify(Buffer.from(e.hex, 'hex').toString('latin1').slice(0, 300)), e.forwarded);
    }
  };
  const socket = net.connect(port, '127.0.0.1');
  await new Promise((resolve) => socket.once('connect', resolve));
  let received = '';
  socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
  const other = new Redis({ host: '127.0.0.1', port: server.port, lazyConnect: true, maxRetriesPerRequest: 0 });
  await other.connect();
  const send = (...args: string[]): void => {
    socket.write(`*${args.length}\r\n${args.map((x) => `$${Buffer.byteLength(x)}\r\n${x}\r\n`).join('')}`);
  };
  const waitFor = async (text: string) => { try { await until(() => received.includes(text), 2_000, `RESP3 ${text}`); } catch (e) { dump(); console.log(JSON.stringify(received)); throw e; } };
  try {
  send('HELLO', '3');
  await waitFor('proto');
  send('CLIENT', 'TRACKING', 'on');
  await waitFor('+OK');
  send('SET', 'tracked', 'v1');
  send('GET', 'tracked');
  await waitFor('$2\r\nv1\r\n');
  for (let n = 0; n < 20; n++) {
    await other.set('tracked', `v${n}`);
    send('GET', 'tracked');
    await sleep(2);
  }
  await waitFor('invalidate');
  send('SUBSCRIBE', 'r3');
  await waitFor('subscribe');
  for (let n = 0; n < 20; n++) await other.publish('r3', `hello${n}`);
  send('GET', 'tracked'); // RESP3 allows ordinary commands while subscribed
  await waitFor(`hello19`);
  send('PING');
  await waitFor('+PONG');
  await sleep(100);
  dump();
  } finally {
  socket.destroy(); other.disconnect();
  await relay.close();
  await server.stop();
  }
});
