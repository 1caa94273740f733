import http from 'node:http';
import { afterEach, describe, expect, it, vi } from 'vitest';

// The test helper's freePort() (test/helpers/net.ts) hands out ports that tests then reach with
// fetch() (every proxy's admin /readyz and /metrics). fetch refuses the Fetch standard's "bad
// ports" (6000, 6566, 6665-6669, 6697...) without a connection: a proxy whose admin drew one
// never looked ready ("fetch failed" for 20 s; seen with KP_TEST_PORT_BASE=6500). Whatever freePort
// picks around each bad port, fetch must reach it.

const BAD_PORTS_ABOVE_1023 = [1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000, 6566, 6665, 6666, 6667, 6668, 6669, 6679, 6697, 10080];

afterEach(() => {
  vi.unstubAllEnvs();
  vi.resetModules();
});

async function fetchable(port: number): Promise<number> {
  const server = http.createServer((_req, res) => res.end('ok'));
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  try {
    return (await fetch(`http://127.0.0.1:${port}/`)).status;
  } finally {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

describe('freePort', () => {
  it.each(BAD_PORTS_ABOVE_1023.filter((port) => !BAD_PORTS_ABOVE_1023.includes(port - 1)))('never hands out a port fetch refuses (ten draws from the 21 ports around %i)', async (bad) => {
    // The window is this fork's whole slice; freePort draws without repeats, so ten draws would
    // include a bad port about half the time (always, near 6665-6669) if it did not skip them.
    vi.stubEnv('KP_TEST_PORT_BASE', String(bad - 10));
    vi.stubEnv('KP_TEST_PORT_SPAN', '21');
    vi.stubEnv('KP_TEST_FORKS', '1');
    vi.resetModules();
    const { freePort } = await import('../helpers/net.js');
    for (let draw = 0; draw < 10; draw++) {
      const port = await freePort();
      expect({ port, status: await fetchable(port) }).toEqual({ port, status: 200 });
    }
  });
});
