// Event-loop turns, for the stale-connection defence of the HTTP pool (undici's): a
// socket taken from the pool is written to only after the events already collected by
// this turn's poll have run, so a FIN or RST the upstream sent while the socket was
// parked evicts it instead of failing the request written on it.
//
// That yield matters only for a socket parked in an earlier turn. One parked during this
// turn has just had its readable event handled (that is how its response completed), and
// epoll reports each descriptor once per poll: nothing of it can still be queued behind.
// So the pool records the turn a socket was parked in and yields only when the turn has
// moved on, and every yield of a turn shares one setImmediate. The turn number moves on in
// the check phase, right after the poll: only a socket parked from a poll-phase callback
// (an upstream read completing a response) may be exempt; the pool marks any other park
// as needing the yield.

/** Something to run at the start of the next turn's check phase. */
export interface NextTurnTask {
  runNextTurn(): void;
}

let turn = 0;
let scheduled = false;
let tasks: NextTurnTask[] = [];

function advance(): void {
  scheduled = false;
  turn++;
  const due = tasks;
  tasks = [];
  for (const task of due) task.runNextTurn();
}

function schedule(): void {
  if (scheduled) return;
  scheduled = true;
  // A ref'd Immediate: it also makes a poll that would otherwise block return at once.
  setImmediate(advance);
}

/** The current turn's number; the turn moves on after this turn's check phase (marks it as in use). */
export function markTurn(): number {
  schedule();
  return turn;
}

/** The current turn's number, without asking for it to advance. */
export function currentTurn(): number {
  return turn;
}

/** Runs `task` once the events already polled in this turn have been handled. */
export function atNextTurn(task: NextTurnTask): void {
  tasks.push(task);
  schedule();
}
