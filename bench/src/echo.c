// echo: the TCP origin of the benchmark suite. One thread, epoll, level-triggered.
// Every byte read is written back; when the socket buffer is full the rest waits in a
// per-connection buffer and reading pauses, so a fast sender cannot grow memory without bound.
//
//   echo PORT [HOST]        (HOST defaults to 127.0.0.1; prints "listening PORT" when ready)

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FDS 65536
#define BUF_SIZE 65536

struct pending {
  char *data;
  size_t len;
  size_t off;
};

static struct pending *pending_by_fd[MAX_FDS];
static char buf[BUF_SIZE];

static void drop(int ep, int fd) {
  epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
  close(fd);
  if (fd < MAX_FDS && pending_by_fd[fd]) {
    free(pending_by_fd[fd]->data);
    free(pending_by_fd[fd]);
    pending_by_fd[fd] = NULL;
  }
}

static void watch(int ep, int fd, unsigned events, int op) {
  struct epoll_event ev = {.events = events, .data.fd = fd};
  epoll_ctl(ep, op, fd, &ev);
}

// Write what is pending; returns 1 when drained, 0 when the socket is full, -1 on error.
static int flush_pending(int fd) {
  struct pending *p = pending_by_fd[fd];
  while (p->off < p->len) {
    ssize_t n = write(fd, p->data + p->off, p->len - p->off);
    if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
    p->off += (size_t)n;
  }
  free(p->data);
  free(p);
  pending_by_fd[fd] = NULL;
  return 1;
}

static void on_readable(int ep, int fd) {
  ssize_t n = read(fd, buf, BUF_SIZE);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
    drop(ep, fd);
    return;
  }
  if (n < 0) return;
  size_t off = 0;
  while (off < (size_t)n) {
    ssize_t w = write(fd, buf + off, (size_t)n - off);
    if (w < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        drop(ep, fd);
        return;
      }
      // Socket full: keep the rest and stop reading until it drains.
      struct pending *p = malloc(sizeof *p);
      p->len = (size_t)n - off;
      p->off = 0;
      p->data = malloc(p->len);
      memcpy(p->data, buf + off, p->len);
      pending_by_fd[fd] = p;
      watch(ep, fd, EPOLLOUT, EPOLL_CTL_MOD);
      return;
    }
    off += (size_t)w;
  }
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: echo PORT [HOST]\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  int port = atoi(argv[1]);
  const char *host = argc > 2 ? argv[2] : "127.0.0.1";

  int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  inet_pton(AF_INET, host, &addr.sin_addr);
  if (bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(ls, 65535) < 0) {
    perror("echo: bind/listen");
    return 1;
  }
  int ep = epoll_create1(0);
  watch(ep, ls, EPOLLIN, EPOLL_CTL_ADD);
  printf("listening %d\n", port);
  fflush(stdout);

  struct epoll_event events[512];
  for (;;) {
    int n = epoll_wait(ep, events, 512, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      perror("echo: epoll_wait");
      return 1;
    }
    for (int i = 0; i < n; i++) {
      int fd = events[i].data.fd;
      if (fd == ls) {
        for (;;) {
          int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
          if (c < 0) break;
          if (c >= MAX_FDS) {
            close(c);
            continue;
          }
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          watch(ep, c, EPOLLIN, EPOLL_CTL_ADD);
        }
        continue;
      }
      if (pending_by_fd[fd]) {
        int r = flush_pending(fd);
        if (r < 0) drop(ep, fd);
        else if (r > 0) watch(ep, fd, EPOLLIN, EPOLL_CTL_MOD);
        continue;
      }
      if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(ep, fd);
    }
  }
}
