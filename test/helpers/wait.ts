// Bounded waiting: every wait in the suite goes through here so none can hang forever.

export async function until<T>(
  condition: () => T | Promise<T>,
  timeoutMs: number,
  what = 'condition',
  pollMs = 25,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (let attempt = 0; ; attempt++) {
    try {
      const value = await condition();
      if (value) return value as NonNullable<T>;
      // The message names what the last attempt saw, not an error from long before.
      lastError = undefined;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() >= deadline) {
      const suffix = lastError ? ` (last error: ${describe(lastError)})` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${suffix}`);
    }
    await sleep(pollMs);
  }
}

/** An error and its cause: undici's 'fetch failed' says why (ECONNREFUSED, a connect timeout) only there. */
function describe(error: unknown): string {
  const cause = error instanceof Error && error.cause !== undefined ? `: ${String(error.cause)}` : '';
  return `${String(error)}${cause}`;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Resolves with the event's arguments, or rejects after timeoutMs. */
export function once<T = unknown>(
  emitter: NodeJS.EventEmitter,
  event: string,
  timeoutMs: number,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, onEvent);
      reject(new Error(`timed out after ${timeoutMs} ms waiting for '${event}'`));
    }, timeoutMs);
    function onEvent(value: T): void {
      clearTimeout(timer);
      resolve(value);
    }
    emitter.once(event, onEvent);
  });
}

/** Whether a process with this PID exists (signal 0 checks without sending anything). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
