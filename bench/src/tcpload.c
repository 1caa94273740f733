// tcpload: the raw TCP load generator of the benchmark suite. One thread, epoll, no allocation
// on the hot path, so a single core of it outruns any proxy under test.
//
//   tcpload pingpong HOST PORT CONNS SIZE SECONDS
//       Opens CONNS connections (one warm-up round trip each), then each keeps exactly one
//       SIZE-byte request in flight for SECONDS: send, wait for SIZE bytes back, send again.
//   tcpload churn HOST PORT CONCURRENCY SIZE SECONDS
//       CONCURRENCY slots, each in a loop: connect, one SIZE-byte round trip, close.
//   tcpload hold HOST PORT CONNS SIZE
//       Opens CONNS connections with one round trip each, prints the setup result, then holds
//       them idle. Any line on stdin prints a status line; EOF on stdin closes all and exits.
//       Bytes arriving on an idle connection are counted as "unexpected" (a proxy leaking
//       heartbeat replies to its client would show here).
//
// Output: JSON lines on stdout. Latencies are per round trip (churn: connect + round trip).

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

// Latency histogram: 100 ns buckets up to 100 ms; anything slower lands in the last bucket.
#define HIST_NS 100
#define HIST_BUCKETS 1000000
static uint32_t hist[HIST_BUCKETS];
static uint64_t hist_count;
static uint64_t hist_max_ns;

enum state { S_FREE, S_CONNECTING, S_WAITING, S_IDLE };

struct conn {
  int fd;
  enum state state;
  uint32_t got;       // reply bytes received for the request in flight
  uint64_t start_ns;  // when the request (churn: the connect) began
};

static struct sockaddr_in target;
static char *request;
static char *scratch;
static size_t size;
static int ep;
static struct conn *conns;
static long nconns;
static uint64_t ops, errors, unexpected_bytes, closed_by_peer, established;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void record(uint64_t ns) {
  uint64_t b = ns / HIST_NS;
  hist[b < HIST_BUCKETS ? b : HIST_BUCKETS - 1]++;
  hist_count++;
  if (ns > hist_max_ns) hist_max_ns = ns;
}

static double percentile_us(double p) {
  if (hist_count == 0) return 0;
  uint64_t rank = (uint64_t)(p * (double)hist_count);
  if (rank >= hist_count) rank = hist_count - 1;
  uint64_t seen = 0;
  for (long b = 0; b < HIST_BUCKETS; b++) {
    seen += hist[b];
    if (seen > rank) return (double)(b * HIST_NS + HIST_NS / 2) / 1000.0;
  }
  return (double)hist_max_ns / 1000.0;
}

static void conn_close(struct conn *c) {
  if (c->fd >= 0) close(c->fd);  // close() also removes the fd from epoll
  c->fd = -1;
  c->state = S_FREE;
}

static int conn_open(struct conn *c, long index) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c->fd = fd;
  c->got = 0;
  c->start_ns = now_ns();
  if (connect(fd, (struct sockaddr *)&target, sizeof target) < 0 && errno != EINPROGRESS) {
    conn_close(c);
    return -1;
  }
  c->state = S_CONNECTING;
  struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = (uint64_t)index};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
    conn_close(c);
    return -1;
  }
  return 0;
}

static int send_request(struct conn *c, long index, int first) {
  ssize_t w = write(c->fd, request, size);
  if (w != (ssize_t)size) return -1;  // SIZE is small: a short write means trouble
  c->got = 0;
  c->state = S_WAITING;
  if (first) {
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)index};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) return -1;
  }
  return 0;
}

// Connection became writable while connecting: check the result and send the first request.
static int on_connected(struct conn *c, long index) {
  int err = 0;
  socklen_t len = sizeof err;
  getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err) return -1;
  return send_request(c, index, 1);
}

// Returns 1 when a full reply arrived, 0 when more is needed, -1 on error or EOF.
static int read_reply(struct conn *c) {
  ssize_t n = read(c->fd, scratch, size - c->got);
  if (n == 0) return -1;
  if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -1;
  c->got += (uint32_t)n;
  return c->got >= size ? 1 : 0;
}

static void print_stats(const char *mode, long n, double seconds) {
  printf(
      "{\"mode\":\"%s\",\"conns\":%ld,\"size\":%zu,\"ops\":%llu,\"seconds\":%.3f,\"rate\":%.1f,"
      "\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f,\"errors\":%llu}\n",
      mode, n, size, (unsigned long long)ops, seconds, seconds > 0 ? (double)ops / seconds : 0,
      percentile_us(0.50), percentile_us(0.99), percentile_us(0.999), (double)hist_max_ns / 1000.0,
      (unsigned long long)errors);
  fflush(stdout);
}

// Open every connection, at most `window` connects in flight, one round trip each; bounded by
// `deadline_ns`. Returns the number established.
static long establish_all(uint64_t deadline_ns) {
  const long window = 256;
  long next = 0, in_flight = 0;
  struct epoll_event events[512];
  while ((established + errors) < (uint64_t)nconns && now_ns() < deadline_ns) {
    while (next < nconns && in_flight < window) {
      if (conn_open(&conns[next], next) < 0) errors++;
      else in_flight++;
      next++;
    }
    int n = epoll_wait(ep, events, 512, 10);
    for (int i = 0; i < n; i++) {
      long idx = (long)events[i].data.u64;
      struct conn *c = &conns[idx];
      int r;
      if (c->state == S_CONNECTING) {
        r = on_connected(c, idx);
        if (r == 0) continue;
      } else if (c->state == S_WAITING) {
        r = read_reply(c);
        if (r == 0) continue;
      } else {
        continue;
      }
      in_flight--;
      if (r < 0) {
        errors++;
        conn_close(c);
      } else {
        established++;
        c->state = S_IDLE;
      }
    }
  }
  return (long)established;
}

static int run_pingpong(double seconds) {
  if (establish_all(now_ns() + 30ull * 1000000000ull) < nconns) {
    print_stats("pingpong", nconns, 0);
    return 1;
  }
  struct epoll_event events[512];
  uint64_t t0 = now_ns();
  uint64_t end = t0 + (uint64_t)(seconds * 1e9);
  for (long i = 0; i < nconns; i++) {
    conns[i].start_ns = t0;
    if (send_request(&conns[i], i, 0) < 0) errors++;
  }
  uint64_t now = t0;
  while (now < end) {
    int n = epoll_wait(ep, events, 512, 5);
    now = now_ns();
    for (int i = 0; i < n; i++) {
      long idx = (long)events[i].data.u64;
      struct conn *c = &conns[idx];
      if (c->state != S_WAITING) continue;
      int r = read_reply(c);
      if (r == 0) continue;
      if (r < 0) {
        errors++;
        conn_close(c);
        continue;
      }
      ops++;
      record(now - c->start_ns);
      c->start_ns = now;
      if (send_request(c, idx, 0) < 0) {
        errors++;
        conn_close(c);
      }
    }
  }
  print_stats("pingpong", nconns, (double)(now - t0) / 1e9);
  return 0;
}

static int run_churn(double seconds) {
  struct epoll_event events[512];
  uint64_t t0 = now_ns();
  uint64_t end = t0 + (uint64_t)(seconds * 1e9);
  for (long i = 0; i < nconns; i++)
    if (conn_open(&conns[i], i) < 0) errors++;
  uint64_t now = t0;
  while (now < end) {
    int n = epoll_wait(ep, events, 512, 5);
    now = now_ns();
    for (int i = 0; i < n; i++) {
      long idx = (long)events[i].data.u64;
      struct conn *c = &conns[idx];
      int r;
      if (c->state == S_CONNECTING) {
        r = on_connected(c, idx);
        if (r == 0) continue;
      } else if (c->state == S_WAITING) {
        r = read_reply(c);
        if (r == 0) continue;
        if (r > 0) {
          ops++;
          record(now - c->start_ns);
        }
      } else {
        continue;
      }
      if (r < 0) errors++;
      conn_close(c);
      if (conn_open(c, idx) < 0) errors++;
    }
    // Slots whose socket() or connect() failed outright (e.g. no free port) are retried here.
    for (long i = 0; i < nconns; i++)
      if (conns[i].state == S_FREE && conn_open(&conns[i], i) < 0) errors++;
  }
  print_stats("churn", nconns, (double)(now - t0) / 1e9);
  return 0;
}

static void print_hold_status(void) {
  long open = 0;
  for (long i = 0; i < nconns; i++)
    if (conns[i].state == S_IDLE) open++;
  printf("{\"mode\":\"hold\",\"open\":%ld,\"unexpected_bytes\":%llu,\"closed_by_peer\":%llu}\n", open,
         (unsigned long long)unexpected_bytes, (unsigned long long)closed_by_peer);
  fflush(stdout);
}

static int run_hold(void) {
  uint64_t t0 = now_ns();
  long ok = establish_all(t0 + 60ull * 1000000000ull);
  printf("{\"mode\":\"hold\",\"conns\":%ld,\"established\":%ld,\"errors\":%llu,\"seconds\":%.3f}\n", nconns,
         ok, (unsigned long long)errors, (double)(now_ns() - t0) / 1e9);
  fflush(stdout);

  fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
  epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
  for (long i = 0; i < nconns; i++) {
    if (conns[i].state != S_IDLE) continue;
    struct epoll_event ce = {.events = EPOLLIN, .data.u64 = (uint64_t)i};
    epoll_ctl(ep, EPOLL_CTL_MOD, conns[i].fd, &ce);
  }
  struct epoll_event events[512];
  char line[256];
  for (;;) {
    int n = epoll_wait(ep, events, 512, -1);
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < n; i++) {
      if (events[i].data.u64 == UINT64_MAX) {
        ssize_t r = read(0, line, sizeof line);
        if (r == 0 || (r < 0 && errno != EAGAIN)) {
          print_hold_status();
          return 0;
        }
        print_hold_status();
        continue;
      }
      struct conn *c = &conns[(long)events[i].data.u64];
      ssize_t r = read(c->fd, scratch, size);
      if (r > 0) {
        unexpected_bytes += (uint64_t)r;
      } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
        closed_by_peer++;
        conn_close(c);
      }
    }
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 6) {
    fprintf(stderr,
            "usage: tcpload pingpong|churn HOST PORT CONNS SIZE SECONDS\n"
            "       tcpload hold HOST PORT CONNS SIZE\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  const char *mode = argv[1];
  target.sin_family = AF_INET;
  target.sin_port = htons((uint16_t)atoi(argv[3]));
  if (inet_pton(AF_INET, argv[2], &target.sin_addr) != 1) {
    fprintf(stderr, "tcpload: bad IPv4 address %s\n", argv[2]);
    return 2;
  }
  nconns = atol(argv[4]);
  size = (size_t)atol(argv[5]);
  if (nconns < 1 || nconns > 60000 || size < 1 || size > 65536) {
    fprintf(stderr, "tcpload: CONNS must be 1..60000 and SIZE 1..65536\n");
    return 2;
  }
  double seconds = argc > 6 ? atof(argv[6]) : 0;
  if (strcmp(mode, "hold") != 0 && (seconds <= 0 || seconds > 3600)) {
    fprintf(stderr, "tcpload: SECONDS must be in (0, 3600]\n");
    return 2;
  }
  request = malloc(size);
  scratch = malloc(size);
  memset(request, 'x', size);
  conns = calloc((size_t)nconns, sizeof *conns);
  for (long i = 0; i < nconns; i++) conns[i].fd = -1;
  ep = epoll_create1(0);

  if (strcmp(mode, "pingpong") == 0) return run_pingpong(seconds);
  if (strcmp(mode, "churn") == 0) return run_churn(seconds);
  if (strcmp(mode, "hold") == 0) return run_hold();
  fprintf(stderr, "tcpload: unknown mode %s\n", mode);
  return 2;
}
