import { Cutter } from './cutter.js';
import type { CodecOptions, HeartbeatCodec, Tracker, TrackerState } from './types.js';
import { MAX_STARTUP_LENGTH } from './negotiate-postgres.js';

// PostgreSQL heartbeat: a Sync message when the server's last message was ReadyForQuery
// and the client has nothing in flight; the ReadyForQuery it produces is cut out.
//
// Why Sync is harmless at that point (protocol docs, "Extended Query"): Sync closes the
// current transaction only if it is an implicit one, i.e. not inside a BEGIN/COMMIT block,
// and then sends exactly one ReadyForQuery ("one and only one ReadyForQuery sent for each
// Sync"). After a ReadyForQuery no implicit transaction is open: every simple Query and
// every Sync has already closed its own. So at status 'I' there is nothing to close; at
// 'T' (inside BEGIN) Sync does not commit an explicit block; at 'E' (failed block) the
// block stays failed until the client's ROLLBACK. In all three the only effect is one
// ReadyForQuery carrying the unchanged status byte. What would NOT be harmless is a Sync
// while extended-protocol messages without their Sync are outstanding (Parse/Bind/
// Execute/Describe/Close/Flush): it would commit the client's implicit transaction early.
// Those keep the tracker busy until the client's own Sync (or a simple Query, which also
// ends the batch).
//
// Counting: every Query, Sync, FunctionCall and the startup packet owes one
// ReadyForQuery; quiet needs none owed, none unsynced, no message half-sent either way,
// and the server's last message a ReadyForQuery (the asynchronous NoticeResponse,
// ParameterStatus and NotificationResponse may follow it without ending the quiet).
//
// Off: TLS or GSSAPI encryption accepted ('S'/'G' to the SSLRequest/GSSENCRequest, or a
// direct TLS ClientHello), COPY (CopyIn/CopyOut/CopyBoth responses), replication
// connections (startup parameter replication other than false). A CancelRequest
// connection is left busy: the server closes it at once.
//
// A reply is owed (responseTimeout) while a ReadyForQuery is, except while the server waits
// for the client's answer to an authentication request (a password, a SASL or GSS step):
// that silence is the client's, however long it thinks. The transaction status byte
// of the last ReadyForQuery says whether the session is inside a block (T, or E when it
// failed): a Sync there resets idle_in_transaction_session_timeout, so the session does
// not probe unless the route opts in (heartbeat.inTransaction).

const SYNC = Buffer.from([0x53, 0x00, 0x00, 0x00, 0x04]);

const PROTOCOL_3 = 3;
const SSL_REQUEST = 80877103;
const GSSENC_REQUEST = 80877104;
const CANCEL_REQUEST = 80877102;
const TLS_HANDSHAKE_RECORD = 0x16;

// Client parser states.
const C_STARTUP_LENGTH = 0;
const C_STARTUP_BODY = 1;
/** Sent an SSLRequest/GSSENCRequest: nothing more until the server's one-byte answer. */
const C_AWAIT_ENCRYPTION_ANSWER = 2;
const C_TYPE = 3;
const C_LENGTH = 4;
const C_BODY = 5;

// Server parser states.
const S_TYPE = 0;
const S_LENGTH = 1;
const S_BODY = 2;
/** The single unframed byte answering an SSLRequest or GSSENCRequest. */
const S_ENCRYPTION_ANSWER = 3;

const READY_FOR_QUERY = 0x5a; // Z
const NOTICE = 0x4e; // N
const NOTIFICATION = 0x41; // A
const PARAMETER_STATUS = 0x53; // S
const COPY_IN = 0x47; // G
const COPY_OUT = 0x48; // H
const COPY_BOTH = 0x57; // W
const AUTHENTICATION = 0x52; // R
/** Authentication codes that need no answer from the client: AuthenticationOk, SASLFinal. */
const AUTH_NO_ANSWER: ReadonlySet<number> = new Set([0, 12]);

const CAPTURE = 16;
const REPLICATION = Buffer.from('replication', 'latin1');
const FALSE_VALUES = ['false', 'off', 'no', '0'].map((text) => Buffer.from(text, 'latin1'));

class PostgresTracker implements Tracker {
  #off: string | null = null;
  #probing = false;
  #cancel = false;
  #terminated = false;
  /** ReadyForQuery messages the server still owes the client. */
  #owedReady = 0;
  /** Extended-protocol messages sent since the client's last Sync (or Query). */
  #unsynced = false;
  /** The server's last non-asynchronous message was ReadyForQuery. */
  #serverReady = false;
  /** The transaction status byte of the last ReadyForQuery: I, T or E. */
  #transactionStatus = 0;
  /** The server asked the client to authenticate and waits for its answer ('p'). */
  #clientsTurn = false;
  /** The code of the Authentication message being read (its first four body bytes). */
  #authCode = 0;

  // Client parser.
  #cState = C_STARTUP_LENGTH;
  #cType = 0;
  #cLengthBytes = 0;
  #cLength = 0;
  #cLeft = 0;
  /** Startup packet: the protocol code, then key/value pairs of NUL-terminated strings. */
  #startupRead = 0;
  #startupCode = 0;
  #startupIsValue = false;
  #startupKeyIsReplication = false;
  #startupCapture = Buffer.alloc(CAPTURE);
  #startupCaptureLength = 0;
  #startupStringLength = 0;
  #encryptionRequest = 0;

  // Server parser.
  #sState = S_TYPE;
  #sType = 0;
  #sLengthBytes = 0;
  #sLength = 0;
  #sLeft = 0;
  /** The body length of the server message being read. */
  #sBodyLength = 0;

  readonly #cutter = new Cutter();
  /** The message being parsed is the probe's ReadyForQuery. */
  #cutting = false;

  get state(): TrackerState {
    if (this.#off !== null) return 'off';
    if (
      this.#probing ||
      this.#cancel ||
      this.#terminated ||
      this.#owedReady > 0 ||
      this.#unsynced ||
      !this.#serverReady ||
      this.#cState !== C_TYPE ||
      this.#sState !== S_TYPE
    ) {
      return 'busy';
    }
    return 'quiet';
  }

  get offReason(): string | null {
    return this.#off;
  }

  get probing(): boolean {
    return this.#probing;
  }

  /** A Query, Sync or FunctionCall (or the startup) awaits its ReadyForQuery. */
  get awaitingReply(): boolean {
    return this.#off === null && this.#owedReady > 0 && !this.#clientsTurn;
  }

  // A Sync is always answered by ReadyForQuery (an ErrorResponse before it is the
  // client's business); nothing blocks for a known time.
  readonly probeRefused = false;
  readonly replyGraceMs = 0;

  /** Inside BEGIN (T) or a failed block (E): idle_in_transaction_session_timeout's domain. */
  get inTransaction(): boolean {
    return this.#transactionStatus === 0x54 || this.#transactionStatus === 0x45;
  }

  /** I, T or E from the last ReadyForQuery (0 before the first). */
  get transactionStatus(): string {
    return this.#transactionStatus === 0 ? '' : String.fromCharCode(this.#transactionStatus);
  }

  probe(): Buffer {
    this.#probing = true;
    return SYNC;
  }

  // ---- client side ----

  fromClient(chunk: Buffer): void {
    let i = 0;
    const length = chunk.length;
    while (i < length && this.#off === null) {
      switch (this.#cState) {
        case C_STARTUP_LENGTH:
          if (this.#cLengthBytes === 0 && chunk[i] === TLS_HANDSHAKE_RECORD) return this.#goOff('tls');
          this.#cLength = (this.#cLength << 8) | chunk[i++]!;
          if (++this.#cLengthBytes === 4) {
            this.#cLengthBytes = 0;
            if (this.#cLength < 8 || this.#cLength > MAX_STARTUP_LENGTH) return this.#goOff('desync');
            this.#cLeft = this.#cLength - 4;
            this.#cLength = 0;
            this.#startupRead = 0;
            this.#startupCode = 0;
            this.#startupIsValue = false;
            this.#startupKeyIsReplication = false;
            this.#startupStringLength = 0;
            this.#startupCaptureLength = 0;
            this.#cState = C_STARTUP_BODY;
          }
          break;
        case C_STARTUP_BODY:
          i = this.#startupBody(chunk, i);
          break;
        case C_AWAIT_ENCRYPTION_ANSWER:
          // The client must wait for the answer; bytes now are not the protocol we follow.
          return this.#goOff('desync');
        case C_TYPE: {
          this.#cType = chunk[i++]!;
          this.#onClientMessage(this.#cType);
          this.#cState = C_LENGTH;
          break;
        }
        case C_LENGTH:
          this.#cLength = (this.#cLength << 8) | chunk[i++]!;
          if (++this.#cLengthBytes === 4) {
            this.#cLengthBytes = 0;
            const messageLength = this.#cLength >>> 0;
            this.#cLength = 0;
            if (messageLength < 4) return this.#goOff('desync');
            this.#cLeft = messageLength - 4;
            this.#cState = this.#cLeft === 0 ? C_TYPE : C_BODY;
          }
          break;
        case C_BODY: {
          const take = Math.min(this.#cLeft, length - i);
          this.#cLeft -= take;
          i += take;
          if (this.#cLeft === 0) this.#cState = C_TYPE;
          break;
        }
      }
    }
  }

  #startupBody(chunk: Buffer, start: number): number {
    let i = start;
    while (i < chunk.length && this.#cLeft > 0) {
      const byte = chunk[i++]!;
      this.#cLeft--;
      if (this.#startupRead < 4) {
        this.#startupCode = ((this.#startupCode << 8) | byte) >>> 0;
        this.#startupRead++;
        continue;
      }
      if (byte !== 0) {
        if (this.#startupCaptureLength < CAPTURE) this.#startupCapture[this.#startupCaptureLength++] = byte;
        this.#startupStringLength++;
        continue;
      }
      this.#startupStringDone();
    }
    if (this.#cLeft === 0) this.#startupDone();
    return i;
  }

  /** A NUL ended a key or a value of the startup parameters. */
  #startupStringDone(): void {
    const text = this.#startupCapture.subarray(0, Math.min(this.#startupCaptureLength, this.#startupStringLength));
    const exact = this.#startupStringLength <= CAPTURE;
    if (!this.#startupIsValue) {
      this.#startupKeyIsReplication = exact && text.equals(REPLICATION);
    } else if (this.#startupKeyIsReplication) {
      const lowered = Buffer.from(text).map((b) => (b >= 0x41 && b <= 0x5a ? b + 0x20 : b));
      if (!exact || !FALSE_VALUES.some((value) => value.equals(lowered))) this.#goOff('replication');
    }
    this.#startupIsValue = !this.#startupIsValue;
    this.#startupStringLength = 0;
    this.#startupCaptureLength = 0;
  }

  #startupDone(): void {
    const code = this.#startupCode;
    if (this.#off !== null) return;
    if (code === SSL_REQUEST || code === GSSENC_REQUEST) {
      this.#encryptionRequest = code;
      this.#cState = C_AWAIT_ENCRYPTION_ANSWER;
      this.#sState = S_ENCRYPTION_ANSWER;
    } else if (code === CANCEL_REQUEST) {
      this.#cancel = true;
      this.#cState = C_TYPE;
    } else if (code >>> 16 === PROTOCOL_3) {
      // Authentication ends with the first ReadyForQuery.
      this.#owedReady++;
      this.#cState = C_TYPE;
    } else {
      this.#goOff('desync');
    }
  }

  #onClientMessage(type: number): void {
    switch (type) {
      case 0x51: // Q Query: ends an unsynced extended batch too, with a single ReadyForQuery
      case 0x53: // S Sync
        this.#owedReady++;
        this.#unsynced = false;
        this.#serverReady = false;
        break;
      case 0x46: // F FunctionCall
        this.#owedReady++;
        this.#serverReady = false;
        break;
      case 0x50: // P Parse
      case 0x42: // B Bind
      case 0x45: // E Execute
      case 0x44: // D Describe
      case 0x43: // C Close
      case 0x48: // H Flush
        this.#unsynced = true;
        this.#serverReady = false;
        break;
      case 0x70: // p password / SASL response during authentication
        this.#clientsTurn = false;
        break;
      case 0x58: // X Terminate
        this.#terminated = true;
        break;
      default: // CopyData/CopyDone/CopyFail outside COPY, or not PostgreSQL at all
        this.#goOff('desync');
    }
  }

  // ---- server side ----

  fromServer(chunk: Buffer): Buffer {
    if (this.#off !== null) return chunk;
    const cutting = this.#probing || this.#cutting;
    if (cutting) this.#cutter.begin(chunk);
    let i = 0;
    const length = chunk.length;
    while (i < length && this.#off === null) {
      switch (this.#sState) {
        case S_ENCRYPTION_ANSWER: {
          const answer = chunk[i++]!;
          if (answer === 0x4e /* N: refused, the client goes on in clear */) {
            this.#sState = S_TYPE;
            this.#cState = C_STARTUP_LENGTH;
          } else if (answer === 0x53 && this.#encryptionRequest === SSL_REQUEST) {
            this.#goOff('tls');
          } else if (answer === 0x47 && this.#encryptionRequest === GSSENC_REQUEST) {
            this.#goOff('gss');
          } else {
            this.#goOff('desync');
          }
          break;
        }
        case S_TYPE:
          this.#onServerMessage(chunk[i]!, i);
          i++;
          this.#sState = S_LENGTH;
          break;
        case S_LENGTH:
          this.#sLength = (this.#sLength << 8) | chunk[i++]!;
          if (++this.#sLengthBytes === 4) {
            this.#sLengthBytes = 0;
            const messageLength = this.#sLength >>> 0;
            this.#sLength = 0;
            if (messageLength < 4) {
              this.#goOff('desync', i);
              break;
            }
            this.#sLeft = this.#sBodyLength = messageLength - 4;
            if (this.#sLeft === 0) this.#serverMessageDone(i);
            else this.#sState = S_BODY;
          }
          break;
        case S_BODY: {
          const take = Math.min(this.#sLeft, length - i);
          // ReadyForQuery's body is its one status byte; Authentication's starts with its code.
          if (this.#sType === READY_FOR_QUERY && take > 0) this.#transactionStatus = chunk[i + take - 1]!;
          if (this.#sType === AUTHENTICATION) this.#readAuthCode(chunk, i, take);
          this.#sLeft -= take;
          i += take;
          if (this.#sLeft === 0) this.#serverMessageDone(i);
          break;
        }
      }
    }
    return cutting ? this.#cutter.finish() : chunk;
  }

  #onServerMessage(type: number, offset: number): void {
    this.#sType = type;
    switch (type) {
      case NOTICE:
      case NOTIFICATION:
      case PARAMETER_STATUS:
        // Asynchronous: may come at any time, even while idle; it goes to the client.
        return;
      case COPY_IN:
      case COPY_OUT:
      case COPY_BOTH:
        return this.#goOff('copy');
      case READY_FOR_QUERY:
        if (this.#probing && this.#owedReady === 0) {
          this.#cutting = true;
          this.#cutter.skipFrom(offset);
        }
        return;
      default:
        this.#serverReady = false;
        // While the probe's ReadyForQuery is awaited only the asynchronous messages are expected.
        if (this.#probing && this.#owedReady === 0) this.#goOff('desync');
    }
  }

  /** Accumulates the big-endian code from the first four bytes of an Authentication body. */
  #readAuthCode(chunk: Buffer, start: number, take: number): void {
    const read = this.#sBodyLength - this.#sLeft;
    for (let k = 0; k < take && read + k < 4; k++) this.#authCode = ((this.#authCode << 8) | chunk[start + k]!) >>> 0;
  }

  #serverMessageDone(end: number): void {
    this.#sState = S_TYPE;
    if (this.#sType === AUTHENTICATION) {
      this.#clientsTurn = !AUTH_NO_ANSWER.has(this.#authCode);
      this.#authCode = 0;
      return;
    }
    if (this.#sType !== READY_FOR_QUERY) return;
    this.#serverReady = true;
    if (this.#cutting) {
      this.#cutting = false;
      this.#probing = false;
      this.#cutter.resumeAt(end);
      return;
    }
    if (this.#owedReady === 0) return this.#goOff('desync');
    this.#owedReady--;
  }

  #goOff(reason: string, offset = 0): void {
    if (this.#off !== null) return;
    this.#off = reason;
    this.#probing = false;
    if (this.#cutting) {
      this.#cutting = false;
      this.#cutter.resumeAt(offset);
    }
  }
}

export const postgresCodec: HeartbeatCodec = {
  name: 'postgres',
  // The server waits for the client's startup packet; nothing can be sent before it.
  probesBeforeClient: false,
  track(_options: CodecOptions): Tracker {
    return new PostgresTracker();
  },
};
