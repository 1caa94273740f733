import { afterAll, afterEach, beforeAll } from 'vitest';
import { startAgent, type Agent } from './agent.js';
import type { BehindMiddlebox, Served } from './behind-middlebox.js';
import { reportFailure, startProxyInNs, type ProxyInNs } from './proxy-in-ns.js';

// The set-up of a describe block that sends a legacy client's bytes to an echo server behind a
// middlebox, with one proxy per test: useEchoLab registers the block's hooks. Before the tests:
// the middlebox, the echo server behind it, the client agent. After each test: the proxy's log
// when it failed, the proxy stopped, the middlebox reset. After all: everything removed.

export interface EchoLab<P extends BehindMiddlebox> {
  readonly path: P;
  readonly echo: Served;
  /** The client in the client namespace; it also reads the proxy's admin endpoints. */
  readonly client: Agent;
  /** Starts this test's proxy in the client namespace; it is stopped after the test. */
  startProxy(yaml: string): Promise<ProxyInNs>;
}

export function useEchoLab<P extends BehindMiddlebox>(
  middlebox: () => Promise<P>,
  options: { readonly frontPort?: number; readonly hookTimeoutMs?: number } = {},
): EchoLab<P> {
  let path: P | undefined;
  let echo: Served | undefined;
  let client: Agent | undefined;
  let proxy: ProxyInNs | null = null;

  beforeAll(async () => {
    path = await middlebox();
    echo = await path.serve('echo', options.frontPort);
    client = await startAgent(path.lab.client);
  }, options.hookTimeoutMs);

  afterEach(async (context) => {
    await reportFailure(context, proxy, path?.outputs);
    await proxy?.stop();
    proxy = null;
    await path?.reset();
  });

  afterAll(async () => {
    await client?.stop();
    await path?.destroy();
  });

  const ready = <T>(value: T | undefined): T => {
    if (value === undefined) throw new Error('the echo lab is not set up (its beforeAll failed)');
    return value;
  };
  return {
    get path() {
      return ready(path);
    },
    get echo() {
      return ready(echo);
    },
    get client() {
      return ready(client);
    },
    async startProxy(yaml) {
      proxy = await startProxyInNs(ready(path).lab.client, yaml, ready(client));
      return proxy;
    },
  };
}
