import { Cutter } from './cutter.js';
import type { CodecOptions, HeartbeatCodec, Tracker, TrackerState } from './types.js';

// MySQL / MariaDB heartbeat: COM_PING once the previous command's response is complete;
// its OK packet is cut out.
//
// Framing: packets of a 3-byte little-endian length, a sequence id and a payload; a
// payload of 0xffffff bytes continues in the next packet (one logical packet, > 16 MiB).
// Both sides are framed incrementally; only the first bytes of a logical packet are
// copied (the greeting's capabilities, a command byte, an OK/EOF packet's status flags),
// payloads are skipped by arithmetic.
//
// Conversation: the server greets; the client answers (an SSL request there means TLS:
// off, unless the proxy terminates that TLS and shows the codec the response inside it;
// compression negotiated: off); authentication runs (auth switch 0xFE and more-data
// 0x01 packets, each possibly answered by the client) until the server's OK or ERR. Then
// each client packet with sequence id 0 is a command, queued; the server answers the
// commands in order, and each response is followed to its end:
//   - OK / ERR; a LOCAL INFILE request (0xFB) makes the client stream a file: off;
//   - result sets (COM_QUERY, COM_STMT_EXECUTE, ...): column count, column definitions,
//     an EOF unless CLIENT_DEPRECATE_EOF, rows, then EOF or an OK with a 0xFE header
//     (shorter than 0xffffff: a text row may begin with 0xFE too), or ERR;
//     SERVER_MORE_RESULTS_EXISTS in the closing status starts another result;
//     MariaDB's metadata-skipping (MARIADB_CLIENT_CACHE_METADATA) is honoured;
//   - COM_STMT_PREPARE: OK with num_params and num_columns, then that many definitions
//     (each group closed by an EOF unless CLIENT_DEPRECATE_EOF);
//   - COM_STMT_CLOSE and COM_STMT_SEND_LONG_DATA: no response at all; COM_QUIT: none, the
//     server closes; COM_CHANGE_USER: authentication again;
//   - COM_STATISTICS, COM_SET_OPTION, COM_DEBUG and unknown commands: one packet.
// Sequence ids are checked on every server packet: a mismatch means we lost track (off).
// Cursors (COM_STMT_EXECUTE with a cursor flag, COM_STMT_FETCH), replication commands,
// MySQL's optional result set metadata: off. MariaDB progress reports (ERR 0xFFFF) are
// skipped. When in doubt: off('desync').
//
// A reply is owed (responseTimeout) while any response is queued, except while the server
// waits for the client's authentication data (after an auth switch or a more-data packet
// other than caching_sha2's "fast auth done"): that silence is the client's, an interactive
// PAM dialog prompt included. The status flags of the
// last OK/EOF say whether a transaction is open (SERVER_STATUS_IN_TRANS): a COM_PING
// there would restart wait_timeout and hold the transaction's locks for ever, so the
// session does not probe unless the route opts in (heartbeat.inTransaction).

const COM_PING = Buffer.from([0x01, 0x00, 0x00, 0x00, 0x0e]);

const MAX_PAYLOAD = 0xffffff;

// Capability flags.
const CLIENT_MYSQL = 1; // MariaDB: set by MySQL servers/clients only (CLIENT_LONG_PASSWORD in MySQL)
const CLIENT_COMPRESS = 0x20;
const CLIENT_PROTOCOL_41 = 0x200;
const CLIENT_SSL = 0x800;
/** An SSL request's payload: a HandshakeResponse41 cut after its fixed part. */
const SSL_REQUEST_PAYLOAD = 32;
const CLIENT_DEPRECATE_EOF = 1 << 24;
const CLIENT_OPTIONAL_RESULTSET_METADATA = 1 << 25;
const CLIENT_ZSTD_COMPRESSION = 1 << 26;
// MariaDB extended capabilities (bits 32.. of the 64-bit set; here relative to bit 32).
const MARIADB_CLIENT_CACHE_METADATA = 1 << 4;

const SERVER_STATUS_IN_TRANS = 0x0001;
const SERVER_MORE_RESULTS_EXISTS = 0x0008;
const PROGRESS_REPORT = 0xffff;
const AUTH_SWITCH = 0xfe;
const AUTH_MORE_DATA = 0x01;
/** caching_sha2_password: the more-data payload saying the fast path succeeded (the server's OK follows). */
const FAST_AUTH_DONE = 0x03;

// Commands.
const COM_QUIT = 0x01;
const COM_FIELD_LIST = 0x04;
const COM_STATISTICS = 0x09;
const COM_SHUTDOWN = 0x08;
const COM_DEBUG = 0x0d;
const COM_CHANGE_USER = 0x11;
const COM_BINLOG_DUMP = 0x12;
const COM_REGISTER_SLAVE = 0x15;
const COM_STMT_PREPARE = 0x16;
const COM_STMT_EXECUTE = 0x17;
const COM_STMT_SEND_LONG_DATA = 0x18;
const COM_STMT_CLOSE = 0x19;
const COM_SET_OPTION = 0x1b;
const COM_STMT_FETCH = 0x1c;
const COM_DAEMON = 0x1d;
const COM_BINLOG_DUMP_GTID = 0x1e;
const COM_CLONE = 0x20;
const COM_STMT_BULK_EXECUTE = 0xfa;
const COM_MULTI = 0xfe;
/** Commands the server answers with OK/ERR or result sets. */
const RESULT_COMMANDS = new Set([0x02, 0x03, 0x05, 0x06, 0x07, 0x0a, 0x0c, 0x0e, 0x1a, 0x1f, COM_STMT_EXECUTE, COM_STMT_BULK_EXECUTE]);

// What a queued response consists of.
const R_RESULT = 1;
const R_SINGLE = 2;
const R_FIELD_LIST = 3;
const R_PREPARE = 4;
const R_AUTH = 5;
const R_PROBE = 6;

// Where a result (R_RESULT) stands.
const RS_FIRST = 0;
const RS_COLUMNS = 1;
const RS_COLUMNS_EOF = 2;
const RS_ROWS = 3;

// Connection phases.
const P_GREETING = 0;
const P_HANDSHAKE_RESPONSE = 1;
const P_ESTABLISHED = 2;

const OK = 0x00;
const LOCAL_INFILE = 0xfb;
const EOF = 0xfe;
const ERR = 0xff;

interface PacketSink {
  /** A physical packet's header was read; `continued`: it extends the previous logical packet. */
  header(seq: number, length: number, continued: boolean, at: number): void;
  /** A logical packet's first payload byte (-1 for an empty payload) is known, at chunk offset `at`; returns how many bytes to capture. */
  start(first: number, length: number, seq: number, at: number): number;
  /** A logical packet ended just before chunk offset `at`; `seq` is its last physical packet's id. */
  end(at: number, seq: number): void;
}

/** Splits a byte stream into MySQL logical packets, capturing only their first bytes. */
class Framer {
  readonly capture: Buffer;
  captured = 0;
  /** Stop feeding after each logical packet (lets the caller act at packet boundaries). */
  stopAtEnd = false;
  halted = false;
  readonly #sink: PacketSink;
  #want = 0;
  #headerRead = 0;
  #length = 0;
  #seq = 0;
  #left = 0;
  #logicalStart = true;
  #awaitingFirst = false;
  /** Length of the first physical packet of the current logical packet. */
  firstLength = 0;

  constructor(captureSize: number, sink: PacketSink) {
    this.capture = Buffer.alloc(captureSize);
    this.#sink = sink;
  }

  get atBoundary(): boolean {
    return this.#headerRead === 0 && this.#logicalStart;
  }

  feed(chunk: Buffer, from: number, to: number): number {
    let i = from;
    while (i < to && !this.halted) {
      if (this.#headerRead < 4) {
        const byte = chunk[i++]!;
        if (this.#headerRead === 0) this.#length = byte;
        else if (this.#headerRead < 3) this.#length |= byte << (8 * this.#headerRead);
        else this.#seq = byte;
        if (++this.#headerRead < 4) continue;
        this.#left = this.#length;
        const continued = !this.#logicalStart;
        this.#sink.header(this.#seq, this.#length, continued, i);
        if (this.halted) return i;
        if (!continued) {
          this.firstLength = this.#length;
          this.captured = 0;
          this.#want = 0;
          if (this.#length === 0) this.#want = this.#sink.start(-1, 0, this.#seq, i);
          else this.#awaitingFirst = true;
          if (this.halted) return i;
        }
        if (this.#left === 0 && this.#physicalEnd(i)) return i;
        continue;
      }
      if (this.#awaitingFirst) {
        this.#awaitingFirst = false;
        this.#want = Math.min(this.#sink.start(chunk[i]!, this.#length, this.#seq, i), this.capture.length);
        if (this.halted) return i;
      }
      const take = Math.min(this.#left, to - i);
      if (this.captured < this.#want) {
        const copy = Math.min(take, this.#want - this.captured);
        chunk.copy(this.capture, this.captured, i, i + copy);
        this.captured += copy;
      }
      this.#left -= take;
      i += take;
      if (this.#left === 0 && this.#physicalEnd(i)) return i;
    }
    return i;
  }

  /** Returns true when feeding should pause. */
  #physicalEnd(at: number): boolean {
    this.#headerRead = 0;
    if (this.#length === MAX_PAYLOAD) {
      this.#logicalStart = false;
      return false;
    }
    this.#logicalStart = true;
    this.#sink.end(at, this.#seq);
    return this.stopAtEnd || this.halted;
  }
}

class MysqlTracker implements Tracker {
  #off: string | null = null;
  #probing = false;
  #closing = false;
  #phase = P_GREETING;
  #serverCapabilities = 0;
  #serverExtended = 0;
  #deprecateEof = false;
  #cacheMetadata = false;

  /** Responses owed, oldest first: kind | firstSeq << 8. */
  #queue: number[] = [];
  #head = 0;
  /** The sequence id the server's next packet must carry. */
  #serverSeq = 0;
  /** The head response has received at least one packet. */
  #headStarted = false;
  // Progress through the head response.
  #resultStep = RS_FIRST;
  #packetsLeft = 0;
  #prepareOkSeen = false;
  /** Status flags of the server's last OK or EOF packet. */
  #serverStatus = 0;
  #probeRefused = false;

  readonly #client: Framer;
  readonly #server: Framer;
  /** The logical packet the client is sending is a command (sequence id 0). */
  #clientCommand = false;
  /** The server asked the client for authentication data and waits for it. */
  #clientsTurn = false;

  readonly #cutter = new Cutter();
  /** Bytes of a possible probe reply held back until its first payload byte is seen. */
  #holding = false;
  #holdStart = -1;
  readonly #held = Buffer.alloc(5);
  #heldLength = 0;
  /** The packet being read is the probe's reply. */
  #cutting = false;
  /** Chunk offset of the server byte being processed, for cut boundaries. */
  #serverAt = 0;

  constructor() {
    this.#client = new Framer(32, {
      header: (seq, _length, continued) => {
        if (!continued) this.#clientCommand = seq === 0;
      },
      start: () => 32,
      end: (_at, seq) => this.#clientPacket(seq),
    });
    this.#server = new Framer(128, {
      header: (seq, _length, _continued, at) => this.#serverHeader(seq, at),
      start: (first, _length, seq, at) => this.#serverStart(first, seq, at),
      end: (at) => this.#serverPacket(at),
    });
  }

  get state(): TrackerState {
    if (this.#off !== null) return 'off';
    if (
      this.#probing ||
      this.#closing ||
      this.#phase !== P_ESTABLISHED ||
      this.#head < this.#queue.length ||
      !this.#client.atBoundary ||
      !this.#server.atBoundary
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

  get probeRefused(): boolean {
    return this.#probeRefused;
  }

  get awaitingReply(): boolean {
    return this.#off === null && !this.#probing && !this.#clientsTurn && this.#head < this.#queue.length;
  }

  /** Nothing in the protocol states how long a command may run (SLEEP(), locks): no grace. */
  readonly replyGraceMs = 0;

  get inTransaction(): boolean {
    return (this.#serverStatus & SERVER_STATUS_IN_TRANS) !== 0;
  }

  probe(): Buffer {
    this.#enqueue(R_PROBE, 1);
    this.#probing = true;
    this.#probeRefused = false;
    this.#server.stopAtEnd = true;
    return COM_PING;
  }

  // ---- client side ----

  fromClient(chunk: Buffer): void {
    if (this.#off !== null) return;
    this.#client.feed(chunk, 0, chunk.length);
  }

  #clientPacket(lastSeq: number): void {
    const capture = this.#client.capture;
    const captured = this.#client.captured;
    if (this.#phase === P_GREETING) return this.#goOff('desync');
    if (this.#phase === P_HANDSHAKE_RESPONSE) return this.#handshakeResponse(capture, captured, this.#client.firstLength, lastSeq);
    if (!this.#clientCommand) {
      // Authentication data answering an auth switch or more-data request.
      if (this.#headKind() !== R_AUTH) return this.#goOff('desync');
      this.#clientsTurn = false;
      this.#serverSeq = (lastSeq + 1) & 0xff;
      return;
    }
    if (captured === 0) return this.#goOff('desync');
    const command = capture[0]!;
    const firstSeq = (lastSeq + 1) & 0xff;
    if (RESULT_COMMANDS.has(command)) {
      if (command === COM_STMT_EXECUTE && captured >= 6 && (capture[5]! & 0x07) !== 0) return this.#goOff('cursor');
      return this.#enqueue(R_RESULT, firstSeq);
    }
    switch (command) {
      case COM_STMT_CLOSE:
      case COM_STMT_SEND_LONG_DATA:
        return; // no response
      case COM_QUIT:
        this.#closing = true;
        return;
      case COM_STMT_PREPARE:
        return this.#enqueue(R_PREPARE, firstSeq);
      case COM_FIELD_LIST:
        return this.#enqueue(R_FIELD_LIST, firstSeq);
      case COM_CHANGE_USER:
        return this.#enqueue(R_AUTH, firstSeq);
      case COM_STMT_FETCH:
        return this.#goOff('cursor');
      case COM_BINLOG_DUMP:
      case COM_BINLOG_DUMP_GTID:
      case COM_REGISTER_SLAVE:
        return this.#goOff('replication');
      case COM_DAEMON:
      case COM_CLONE:
      case COM_MULTI:
        return this.#goOff('desync');
      case COM_STATISTICS:
      case COM_SET_OPTION:
      case COM_DEBUG:
      case COM_SHUTDOWN:
      default:
        // One packet: the answer, an EOF, or "unknown command".
        return this.#enqueue(R_SINGLE, firstSeq);
    }
  }

  #handshakeResponse(capture: Buffer, captured: number, length: number, lastSeq: number): void {
    if (captured < 4) return this.#goOff('desync');
    const client = capture.readUInt32LE(0);
    const both = client & this.#serverCapabilities;
    // An SSL request (a response cut after its 32 fixed bytes): TLS follows, opaque to us.
    // A whole response with CLIENT_SSL seen in the clear is the inside of a client TLS
    // session the proxy terminated (clientTls): the conversation goes on in our view.
    if (client & CLIENT_SSL && length <= SSL_REQUEST_PAYLOAD) return this.#goOff('tls');
    if (!(client & CLIENT_PROTOCOL_41)) return this.#goOff('desync');
    if (both & (CLIENT_COMPRESS | CLIENT_ZSTD_COMPRESSION)) return this.#goOff('compression');
    if (both & CLIENT_OPTIONAL_RESULTSET_METADATA) return this.#goOff('resultset-metadata');
    this.#deprecateEof = (both & CLIENT_DEPRECATE_EOF) !== 0;
    // MariaDB's extended capabilities sit in the last 4 of the 23 reserved bytes.
    const mariadb = !(this.#serverCapabilities & CLIENT_MYSQL) && !(client & CLIENT_MYSQL);
    const extended = mariadb && captured >= 32 ? capture.readUInt32LE(28) & this.#serverExtended : 0;
    this.#cacheMetadata = (extended & MARIADB_CLIENT_CACHE_METADATA) !== 0;
    this.#phase = P_ESTABLISHED;
    this.#enqueue(R_AUTH, (lastSeq + 1) & 0xff);
  }

  // ---- response queue ----

  #enqueue(kind: number, firstSeq: number): void {
    this.#queue.push(kind | (firstSeq << 8));
    if (this.#queue.length - this.#head === 1) this.#startHead();
  }

  #headKind(): number {
    return this.#head < this.#queue.length ? this.#queue[this.#head]! & 0xff : 0;
  }

  #startHead(): void {
    this.#headStarted = false;
    this.#resultStep = RS_FIRST;
    this.#packetsLeft = 0;
    this.#prepareOkSeen = false;
    if (this.#head < this.#queue.length) this.#serverSeq = (this.#queue[this.#head]! >> 8) & 0xff;
  }

  #responseDone(): void {
    this.#head++;
    if (this.#head === this.#queue.length) {
      this.#queue.length = 0;
      this.#head = 0;
    } else if (this.#head > 64) {
      this.#queue.splice(0, this.#head);
      this.#head = 0;
    }
    this.#startHead();
  }

  // ---- server side ----

  fromServer(chunk: Buffer): Buffer {
    if (this.#off !== null) return chunk;
    if (!this.#probing && !this.#cutting) {
      this.#server.feed(chunk, 0, chunk.length);
      return chunk;
    }
    this.#cutter.begin(chunk);
    this.#holdStart = -1;
    let i = 0;
    while (i < chunk.length && this.#off === null) {
      if (this.#probing && !this.#holding && !this.#cutting && this.#server.atBoundary) {
        // The next packet should be the probe's OK: hold it until its first byte says so.
        this.#holding = true;
        this.#holdStart = i;
        this.#heldLength = 0;
        this.#cutter.skipFrom(i);
      }
      i = this.#server.feed(chunk, i, chunk.length);
    }
    if (this.#holding) {
      const from = this.#holdStart >= 0 ? this.#holdStart : 0;
      this.#heldLength += chunk.copy(this.#held, this.#heldLength, from, chunk.length);
    }
    return this.#cutter.finish();
  }

  #serverHeader(seq: number, at: number): void {
    this.#serverAt = at;
    if (this.#phase !== P_GREETING && this.#head === this.#queue.length) return this.#goOff('desync');
    if (seq !== this.#serverSeq) return this.#goOff('desync');
    this.#serverSeq = (seq + 1) & 0xff;
  }

  #serverStart(first: number, seq: number, at: number): number {
    this.#serverAt = at;
    if (this.#holding) {
      if (seq !== 1 || (first !== OK && first !== ERR) || this.#headKind() !== R_PROBE) {
        this.#goOff('desync');
        return 0;
      }
      this.#holding = false;
      this.#cutting = true;
    }
    if (this.#phase === P_GREETING) return 128;
    if (first === OK || first === EOF || first === ERR) return 32;
    const kind = this.#headKind();
    if (kind === R_RESULT && this.#resultStep === RS_FIRST) return 32;
    if (kind === R_AUTH) return 2; // a more-data packet's status byte
    return 0;
  }

  #serverPacket(at: number): void {
    this.#serverAt = at;
    const framer = this.#server;
    const capture = framer.capture;
    const captured = framer.captured;
    const first = captured > 0 ? capture[0]! : -1;
    if (this.#phase === P_GREETING) return this.#greeting(capture, captured);
    this.#headStarted = true;
    const kind = this.#headKind();
    if (first === OK && (kind === R_PROBE || kind === R_SINGLE || kind === R_AUTH)) this.#serverStatus = this.#okStatus(capture, captured);
    switch (kind) {
      case R_PROBE:
        this.#probeRefused = first === ERR;
        this.#cutting = false;
        this.#probing = false;
        this.#server.stopAtEnd = false;
        this.#cutter.resumeAt(at);
        return this.#responseDone();
      case R_SINGLE:
        return this.#responseDone();
      case R_AUTH:
        // Auth switch (0xFE) and more-data (0x01) packets go on; OK or ERR ends authentication.
        if (first === OK || (first === ERR && !this.#isProgress(capture, captured))) this.#responseDone();
        // Each asks the client for data, but caching_sha2's fast-auth success (01 03): an OK follows.
        else if (first === AUTH_SWITCH || (first === AUTH_MORE_DATA && !(captured >= 2 && capture[1] === FAST_AUTH_DONE))) this.#clientsTurn = true;
        return;
      case R_FIELD_LIST:
        if ((first === EOF && framer.firstLength < MAX_PAYLOAD) || first === ERR) this.#responseDone();
        return;
      case R_PREPARE:
        return this.#preparePacket(first, capture, captured);
      case R_RESULT:
        return this.#resultPacket(first, capture, captured, framer.firstLength);
      default:
        return this.#goOff('desync');
    }
  }

  #greeting(capture: Buffer, captured: number): void {
    if (captured > 0 && capture[0] === ERR) {
      // "Too many connections", "Host is blocked"...: the server closes.
      this.#closing = true;
      return;
    }
    if (captured === 0 || capture[0] !== 0x0a) return this.#goOff('desync');
    const nul = capture.indexOf(0, 1);
    // version NUL, thread id (4), scramble (8), filler (1), capabilities low (2)
    if (nul === -1 || nul + 15 > captured) return this.#goOff('desync');
    let capabilities = capture.readUInt16LE(nul + 14);
    // charset (1), status (2), capabilities high (2), scramble length (1), 6 reserved, MariaDB extended (4)
    if (captured >= nul + 21) capabilities = (capabilities | (capture.readUInt16LE(nul + 19) << 16)) >>> 0;
    this.#serverCapabilities = capabilities;
    if (!(capabilities & CLIENT_MYSQL) && captured >= nul + 32) this.#serverExtended = capture.readUInt32LE(nul + 28);
    this.#phase = P_HANDSHAKE_RESPONSE;
    this.#serverSeq = 0;
  }

  #preparePacket(first: number, capture: Buffer, captured: number): void {
    if (!this.#prepareOkSeen) {
      if (first === ERR) return this.#responseDone();
      // OK: statement id (4), num_columns (2), num_params (2), ...
      if (first !== OK || captured < 9) return this.#goOff('desync');
      this.#prepareOkSeen = true;
      const columns = capture.readUInt16LE(5);
      const params = capture.readUInt16LE(7);
      const eofs = this.#deprecateEof ? 0 : (params > 0 ? 1 : 0) + (columns > 0 ? 1 : 0);
      this.#packetsLeft = params + columns + eofs;
    } else {
      this.#packetsLeft--;
    }
    if (this.#packetsLeft === 0) this.#responseDone();
  }

  #resultPacket(first: number, capture: Buffer, captured: number, length: number): void {
    switch (this.#resultStep) {
      case RS_FIRST:
        if (first === OK) return this.#resultEnd(this.#okStatus(capture, captured));
        if (first === ERR) {
          if (!this.#isProgress(capture, captured)) this.#responseDone();
          return;
        }
        if (first === LOCAL_INFILE) return this.#goOff('local-infile');
        if (first === EOF || first === -1) return this.#goOff('desync');
        return this.#columnCount(capture, captured, length);
      case RS_COLUMNS:
        if (--this.#packetsLeft === 0) this.#resultStep = this.#deprecateEof ? RS_ROWS : RS_COLUMNS_EOF;
        return;
      case RS_COLUMNS_EOF:
        if (first === ERR) return this.#responseDone();
        if (first !== EOF) return this.#goOff('desync');
        this.#resultStep = RS_ROWS;
        return;
      case RS_ROWS:
        if (first === EOF && length < MAX_PAYLOAD) {
          return this.#resultEnd(this.#deprecateEof ? this.#okStatus(capture, captured) : this.#eofStatus(capture, captured));
        }
        if (first === ERR && !this.#isProgress(capture, captured)) return this.#responseDone();
        return;
    }
  }

  #columnCount(capture: Buffer, captured: number, length: number): void {
    const size = lenencSize(capture[0]!);
    if (size === 0 || size > captured) return this.#goOff('desync');
    const count = readLenenc(capture, 0, size);
    // With metadata caching the count is followed by a "metadata follows" byte (0: none sent).
    const metadataFollows = !(this.#cacheMetadata && length > size && size < captured && capture[size] === 0);
    this.#packetsLeft = metadataFollows ? count : 0;
    if (this.#packetsLeft > 0) this.#resultStep = RS_COLUMNS;
    else this.#resultStep = this.#deprecateEof ? RS_ROWS : RS_COLUMNS_EOF;
  }

  /** A result ended with status flags `status`: another result may follow. */
  #resultEnd(status: number): void {
    this.#serverStatus = status;
    if (status & SERVER_MORE_RESULTS_EXISTS) {
      this.#resultStep = RS_FIRST;
      this.#packetsLeft = 0;
      return;
    }
    this.#responseDone();
  }

  /** OK packet (0x00 or 0xFE header): affected rows, last insert id (lenenc), status (2). */
  #okStatus(capture: Buffer, captured: number): number {
    let at = 1;
    for (let field = 0; field < 2; field++) {
      if (at >= captured) return 0;
      const size = lenencSize(capture[at]!);
      if (size === 0) return 0;
      at += size;
    }
    return at + 2 <= captured ? capture.readUInt16LE(at) : 0;
  }

  /** EOF packet: 0xFE, warnings (2), status (2). */
  #eofStatus(capture: Buffer, captured: number): number {
    return captured >= 5 ? capture.readUInt16LE(3) : 0;
  }

  #isProgress(capture: Buffer, captured: number): boolean {
    return captured >= 3 && capture.readUInt16LE(1) === PROGRESS_REPORT;
  }

  #goOff(reason: string): void {
    if (this.#off !== null) return;
    this.#off = reason;
    this.#probing = false;
    this.#client.halted = true;
    this.#server.halted = true;
    // What was being held or cut goes to the client after all, from here on.
    if (this.#holding) {
      this.#cutter.release(this.#held.subarray(0, this.#heldLength), this.#holdStart >= 0 ? this.#holdStart : 0);
    } else if (this.#cutting) {
      this.#cutter.resumeAt(this.#serverAt);
    }
    this.#holding = false;
    this.#cutting = false;
  }
}

/** Bytes of a length-encoded integer starting with `first` (0: not a valid first byte). */
function lenencSize(first: number): number {
  if (first < 0xfb) return 1;
  if (first === 0xfc) return 3;
  if (first === 0xfd) return 4;
  if (first === 0xfe) return 9;
  return 0;
}

function readLenenc(buffer: Buffer, at: number, size: number): number {
  if (size === 1) return buffer[at]!;
  if (size === 3) return buffer.readUInt16LE(at + 1);
  if (size === 4) return buffer.readUIntLE(at + 1, 3);
  return Number(buffer.readBigUInt64LE(at + 1));
}

export const mysqlCodec: HeartbeatCodec = {
  name: 'mysql',
  // The server speaks first and expects the handshake: no probe before the client's login.
  probesBeforeClient: false,
  track(_options: CodecOptions): Tracker {
    return new MysqlTracker();
  },
};
