import type { TcpRef } from './splice-end.js';
import { IPPROTO_TCP, readSockoptBytes } from './sockopt.js';

// The kernel's own account of one TCP connection: getsockopt(IPPROTO_TCP, TCP_INFO), the
// struct `ss -ti` prints. Read on demand (/connections) and sampled on the shared clock
// (tcp/kernel-watch.ts); never per packet.

const TCP_INFO = 11;

// struct tcp_info offsets, include/uapi/linux/tcp.h (stable ABI: fields are only appended).
// Eight __u8 first, then __u32 fields from byte 8; tcpi_total_retrans (byte 100) is the last
// field read here, present since Linux 2.6.x.
const OFFSET = {
  retransmits: 2, // __u8 icsk_retransmits: RTO timeouts since the last ACK that moved snd_una
  probes: 3, // __u8 icsk_probes_out: unanswered keepalive (or zero-window) probes
  unacked: 24,
  lost: 32,
  lastDataSent: 44, // ms ago
  lastDataRecv: 52, // ms ago
  rtt: 68, // microseconds, smoothed
  rttvar: 72, // microseconds
  totalRetrans: 100,
} as const;
const MIN_LENGTH = OFFSET.totalRetrans + 4;
/** Room for the whole struct of current kernels (about 250 bytes); the kernel writes what it has. */
const BUFFER_SIZE = 512;

export interface TcpInfo {
  /** Smoothed round-trip time and its variation, microseconds (ss: rtt:<rtt/1000>/<rttvar/1000> in ms). */
  readonly rttUs: number;
  readonly rttVarUs: number;
  /** Retransmission timeouts in a row without progress (ss: retrans:<this>/<totalRetrans>). */
  readonly retransmits: number;
  readonly totalRetrans: number;
  /** Unanswered keepalive (or zero-window) probes now outstanding. */
  readonly probes: number;
  /** Segments sent and not yet acknowledged. */
  readonly unacked: number;
  /** Segments the kernel considers lost now. */
  readonly lost: number;
  /** Since the last payload received / sent, milliseconds (ss: lastrcv, lastsnd). */
  readonly lastDataRecvMs: number;
  readonly lastDataSentMs: number;
}

const buffer = new Uint8Array(BUFFER_SIZE);
const view = new DataView(buffer.buffer);
const littleEndian = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** TCP_INFO of a TCP socket (not a TLS wrapper: pass its TCP socket), or null when not available. */
export function readTcpInfo(socket: TcpRef): TcpInfo | null {
  const length = readSockoptBytes(socket, IPPROTO_TCP, TCP_INFO, buffer);
  if (length === null || length < MIN_LENGTH) return null;
  const u32 = (offset: number): number => view.getUint32(offset, littleEndian);
  return {
    rttUs: u32(OFFSET.rtt),
    rttVarUs: u32(OFFSET.rttvar),
    retransmits: buffer[OFFSET.retransmits]!,
    totalRetrans: u32(OFFSET.totalRetrans),
    probes: buffer[OFFSET.probes]!,
    unacked: u32(OFFSET.unacked),
    lost: u32(OFFSET.lost),
    lastDataRecvMs: u32(OFFSET.lastDataRecv),
    lastDataSentMs: u32(OFFSET.lastDataSent),
  };
}
