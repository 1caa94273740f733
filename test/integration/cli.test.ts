import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { connect, freePort, listen0, readBytes } from '../helpers/net.js';
import { MAIN, REPO_ROOT, startProxy } from '../helpers/proxy.js';
import { until } from '../helpers/wait.js';

// The binary as a user runs it: check, version, help, a flags-only route, the shipped config.

const dir = mkdtempSync(join(tmpdir(), 'kp-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function cli(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [MAIN, ...args], { encoding: 'utf8', timeout: 15_000, cwd: REPO_ROOT });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

describe('keepalive-proxy command line', () => {
  it('check prints FILE:LINE:COL key.path: message for every error and exits 1', () => {
    const file = join(dir, 'bad.yaml');
    writeFileSync(
      file,
      ['routes:', '  - name: a', '    listen: 127.0.0.1:1', '    upstream: 127.0.0.1:2', '    idleTimeout: 20', '    hearbeat: { every: 1s, timeout: 1s }', ''].join('\n'),
    );
    const { status, stdout, stderr } = cli('check', '--config', file);
    expect(status).toBe(1);
    for (const stream of [stdout, stderr]) {
      expect(stream).toContain(`${file}:5:18 routes[0].idleTimeout:`);
      expect(stream).toMatch(new RegExp(`${file.replaceAll('/', '\\/')}:6:5 routes\\[0\\]\\.hearbeat: .*did you mean "heartbeat"`));
    }
  });

  it('check accepts every shipped config', () => {
    for (const file of ['config/keepalive-proxy.yaml', 'config/examples/database-sidecar.yaml', 'config/examples/gateway-firewall.yaml', 'config/examples/legacy-app-front.yaml']) {
      const { status, stdout } = cli('check', '--config', file);
      expect({ file, status }).toEqual({ file, status: 0 });
      expect(stdout).toContain('ok');
    }
  });

  it('refuses to start on a bad file, naming the error', () => {
    const file = join(dir, 'bad2.yaml');
    writeFileSync(file, 'routes: []\nshutdownTimeout: soon\n');
    const { status, stderr } = cli('--config', file);
    expect(status).toBe(1);
    expect(stderr).toContain(`${file}:2:18 shutdownTimeout:`);
  });

  it('prints --version and --help', () => {
    expect(cli('--version').stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
    const help = cli('--help');
    expect(help.status).toBe(0);
    expect(help.stdout).toContain('--listen');
    expect(help.stdout).toContain('check');
  });

  it('runs one route from flags without a file', async () => {
    const upstream = await listen0((s) => {
      s.on('data', (c: Buffer) => s.write(c));
      s.on('end', () => s.end());
    });
    const port = await freePort();
    const proxy = await startProxy({ args: ['--listen', `127.0.0.1:${port}`, '--upstream', `127.0.0.1:${upstream.port}`, '--protocol', 'tcp'] });
    try {
      const client = await connect(port);
      client.write('flags');
      expect((await readBytes(client, 5)).toString()).toBe('flags');
      client.end();
      expect(await proxy.metrics()).toContain('keepalive_proxy_connections_accepted_total{route="default"} 1');
    } finally {
      expect(await proxy.stop()).toBe(0);
      await upstream.close();
    }
  });

  it('applies the keepalive flags to both sockets of a proxied connection', async () => {
    // Ends its side when the client does, so the pair closes and the proxy drains at once.
    const upstream = await listen0((s) => s.on('end', () => s.end()));
    const port = await freePort();
    const proxy = await startProxy({
      args: ['--listen', `127.0.0.1:${port}`, '--upstream', `127.0.0.1:${upstream.port}`, '--keepalive-upstream', '7s,3s,4', '--keepalive-client', '11s,2s,5', '--user-timeout', '13s'],
    });
    try {
      const client = await connect(port);
      const [connection] = await until(async () => {
        const list = await proxy.connections();
        return list.length === 1 ? list : null;
      }, 10_000, 'the connection in /connections');
      // Read back from the kernel with getsockopt by the proxy.
      expect(connection!['socketOptions']).toMatchObject({
        client: { keepalive: true, idleSeconds: 11, intervalSeconds: 2, count: 5 },
        upstream: { keepalive: true, idleSeconds: 7, intervalSeconds: 3, count: 4, userTimeoutMs: 13_000 },
      });
      client.destroy();
    } finally {
      expect(await proxy.stop()).toBe(0);
      await upstream.close();
    }
  });

  it('starts on the shipped config and stops cleanly on SIGINT', async () => {
    // The shipped config binds 127.0.0.1:16379 and :15432 and admin :9901; the admin
    // address is moved to a free port so parallel test files cannot collide on it.
    const proxy = await startProxy({ args: ['--config', join(REPO_ROOT, 'config/keepalive-proxy.yaml'), '--admin', `127.0.0.1:${await freePort()}`] });
    const ready = await fetch(`${proxy.adminUrl}/readyz`);
    expect(ready.status).toBe(200);
    expect(await proxy.stop('SIGINT')).toBe(0);
  });
});
