import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { idleMiddlebox, type ForgetMode } from '../helpers/idle-middlebox.js';
import { connect, listen0, readBytes } from '../helpers/net.js';
import { sleep, until } from '../helpers/wait.js';

// The test middlebox forgets a flow idle for its timeout, judged at the time the kernel got
// the next bytes: bytes that arrived in time but were read late (this process busy, as on a
// loaded machine) still pass. Its own timing error must never make discover's bracket wrong.

const TIMEOUT_MS = 2_000;

function busyFor(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until);
}

describe('idle middlebox (test helper)', () => {
  let echo: Awaited<ReturnType<typeof listen0>>;
  beforeAll(async () => {
    echo = await listen0((socket) => socket.on('data', (chunk: Buffer) => socket.write(chunk)));
  });
  afterAll(async () => {
    await echo?.close();
  });

  for (const mode of ['drop', 'reset'] as ForgetMode[]) {
    it(`${mode}: passes bytes that arrived before the timeout though this process read them after it`, async () => {
      const box = await idleMiddlebox(echo.port, TIMEOUT_MS, mode);
      try {
        const client = await connect(box.port);
        client.on('error', () => {});
        client.write('a');
        expect((await readBytes(client, 1)).toString()).toBe('a');
        // Half the timeout after the answer (no timer: this process stays busy), the next byte;
        // the box reads it only once the timeout has passed.
        busyFor(TIMEOUT_MS / 2);
        client.write('b');
        busyFor(TIMEOUT_MS);
        expect((await readBytes(client, 1, 5_000)).toString()).toBe('b');
        expect(box.forgotten()).toBe(0);
        client.destroy();
      } finally {
        await box.close();
      }
    });

    it(`${mode}: forgets a flow whose next bytes came after the timeout`, async () => {
      const box = await idleMiddlebox(echo.port, 300, mode);
      try {
        const client = await connect(box.port);
        const replies: Buffer[] = [];
        client.on('data', (chunk: Buffer) => replies.push(chunk));
        const ended = new Promise<string>((resolve) => {
          client.on('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? 'error'));
          client.on('close', () => resolve('closed'));
        });
        client.write('a');
        await until(() => replies.length === 1, 5_000, 'the first answer');
        await sleep(400);
        client.write('b');
        await until(() => box.forgotten() === 1, 5_000, 'the flow forgotten');
        if (mode === 'reset') expect(await ended).toBe('ECONNRESET');
        expect(Buffer.concat(replies).toString()).toBe('a');
        client.destroy();
      } finally {
        await box.close();
      }
    });
  }
});
