import { afterEach, describe, expect, it, vi } from 'vitest';

// freePort() draws from KP_TEST_PORT_BASE/SPAN, read when the helper loads: each case sets
// them and loads a fresh copy. Ports fetch() refuses ("bad port": 5060, 6000, 6665-6669, ...)
// made /readyz unreachable for a proxy whose admin drew one (startProxy timed out at 20 s).

const saved = { ...process.env };
afterEach(() => {
  process.env = { ...saved };
  vi.resetModules();
});

async function freePortIn(base: number, span: number): Promise<(host?: string) => Promise<number>> {
  Object.assign(process.env, { KP_TEST_PORT_BASE: String(base), KP_TEST_PORT_SPAN: String(span), KP_TEST_FORKS: '1' });
  vi.resetModules();
  return (await import('../helpers/net.js')).freePort;
}

/** What fetch() makes of a port nothing listens on: 'bad port' when it refuses to try. */
async function fetchRefusal(port: number): Promise<string> {
  const error = await fetch(`http://127.0.0.1:${port}/`).then(() => null, (e: Error) => e);
  return (error?.cause as Error | undefined)?.message ?? '';
}

describe('freePort', () => {
  it('never hands out a port that fetch() refuses to reach', async () => {
    // 6665-6669: every port of the range is one fetch() blocks.
    const freePort = await freePortIn(6665, 5);
    expect(await fetchRefusal(6665)).toBe('bad port');
    await expect(freePort()).rejects.toThrow(/no free port found in 6665-6669/);
  });

  it('hands out only ports fetch() reaches, across ranges that hold blocked ones', async () => {
    for (const [base, span] of [[5055, 10], [5995, 10], [6560, 10], [6660, 40], [10075, 10]] as const) {
      const freePort = await freePortIn(base, span);
      const drawn: number[] = [];
      for (let i = 0; i < 4; i++) drawn.push(await freePort());
      for (const port of drawn) expect(await fetchRefusal(port), `port ${port}`).not.toBe('bad port');
    }
  });
});
