// What the kernel charges a sender for delivering datagrams into loopback sockets, without any
// SFU and without encryption: one thread sends datagrams of the load tool's sizes (three of
// 1108 bytes, one of 128, in turn) with sendmmsg, round-robin over SOCKETS receiving sockets,
// which THREADS receiver threads drain (each waits in epoll_wait on its share of the sockets,
// then reads every ready one with recvmmsg). Prints the sender's CPU time per datagram
// (CLOCK_THREAD_CPUTIME_ID), its context switches, and what the receivers got.
//
// The raw baseline of switchboard-load sends to one socket that one busy thread drains; a
// server at 1 x 20 sends each packet to 19 sockets whose readers sleep between bursts. This
// shows what that difference costs on a machine (docs/performance.md, "The raw baseline").
//
//   gcc -O2 -pthread scripts/fanout-floor.c -o /tmp/fanout-floor
//   /tmp/fanout-floor SOCKETS THREADS [RATE [SECONDS [BURST]]]
//     RATE: datagrams a second, sent in bursts of BURST (default 19, one packet's copies at
//           1 x 20); 0 (the default) sends flat out in batches of 32, as the raw baseline does.
//   SPIN=1 (unset, empty or 0: off): the receiver threads poll without sleeping (epoll_wait with a zero timeout), so
//           that no datagram has a sleeping thread to wake.
// Loopback only (127.0.0.1).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SOCKETS 256
#define BATCH 32

static int nsockets, nthreads;
static int rcv_fd[MAX_SOCKETS];
static struct sockaddr_in rcv_addr[MAX_SOCKETS];
static atomic_long received;
static atomic_int stop;
static int spin;

static double now_s(clockid_t clock) {
  struct timespec t;
  clock_gettime(clock, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

// Receiver thread `arg`: owns sockets arg, arg + nthreads, arg + 2 * nthreads, ...
static void *drain(void *arg) {
  long me = (long)arg;
  int ep = epoll_create1(0);
  for (int i = me; i < nsockets; i += nthreads) {
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = rcv_fd[i]};
    epoll_ctl(ep, EPOLL_CTL_ADD, rcv_fd[i], &ev);
  }
  static __thread char buf[BATCH][2048];
  struct mmsghdr msgs[BATCH];
  struct iovec iov[BATCH];
  for (int i = 0; i < BATCH; i++) {
    iov[i] = (struct iovec){.iov_base = buf[i], .iov_len = sizeof buf[i]};
    memset(&msgs[i], 0, sizeof msgs[i]);
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  struct epoll_event ready[MAX_SOCKETS];
  while (!atomic_load(&stop)) {
    int n = epoll_wait(ep, ready, MAX_SOCKETS, spin ? 0 : 50);
    for (int i = 0; i < n; i++) {
      int got;
      while ((got = recvmmsg(ready[i].data.fd, msgs, BATCH, MSG_DONTWAIT, NULL)) > 0)
        atomic_fetch_add(&received, got);
    }
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s SOCKETS THREADS [RATE [SECONDS [BURST]]]\n", argv[0]);
    return 2;
  }
  nsockets = atoi(argv[1]);
  nthreads = atoi(argv[2]);
  double rate = argc > 3 ? atof(argv[3]) : 0;
  double secs = argc > 4 ? atof(argv[4]) : 5;
  int burst = argc > 5 ? atoi(argv[5]) : (rate > 0 ? 19 : BATCH);
  const char *spin_env = getenv("SPIN");
  spin = spin_env && *spin_env && strcmp(spin_env, "0") != 0;
  if (nsockets < 1 || nsockets > MAX_SOCKETS || nthreads < 1 || nthreads > nsockets ||
      burst < 1 || burst > BATCH) {
    fprintf(stderr, "1 <= THREADS <= SOCKETS <= %d, 1 <= BURST <= %d\n", MAX_SOCKETS, BATCH);
    return 2;
  }
  int bufsize = 4 << 20;
  for (int i = 0; i < nsockets; i++) {
    rcv_fd[i] = socket(AF_INET, SOCK_DGRAM, 0);
    setsockopt(rcv_fd[i], SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof bufsize);
    struct sockaddr_in any = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof rcv_addr[i];
    if (bind(rcv_fd[i], (struct sockaddr *)&any, sizeof any) ||
        getsockname(rcv_fd[i], (struct sockaddr *)&rcv_addr[i], &len)) {
      perror("bind");
      return 1;
    }
  }
  pthread_t threads[MAX_SOCKETS];
  for (long t = 0; t < nthreads; t++) pthread_create(&threads[t], NULL, drain, (void *)t);

  int snd = socket(AF_INET, SOCK_DGRAM, 0);
  setsockopt(snd, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof bufsize);
  static char payload[BATCH][1108];
  const int sizes[4] = {1108, 1108, 1108, 128};
  struct mmsghdr msgs[BATCH];
  struct iovec iov[BATCH];
  long sent = 0, refused = 0;
  int next = 0;
  struct rusage ru0, ru1;
  getrusage(RUSAGE_THREAD, &ru0);
  double wall0 = now_s(CLOCK_MONOTONIC), cpu0 = now_s(CLOCK_THREAD_CPUTIME_ID);
  while (now_s(CLOCK_MONOTONIC) - wall0 < secs) {
    for (int i = 0; i < burst; i++) {
      iov[i] = (struct iovec){.iov_base = payload[i], .iov_len = sizes[(sent + i) % 4]};
      memset(&msgs[i], 0, sizeof msgs[i]);
      msgs[i].msg_hdr.msg_iov = &iov[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
      msgs[i].msg_hdr.msg_name = &rcv_addr[next];
      msgs[i].msg_hdr.msg_namelen = sizeof rcv_addr[next];
      next = (next + 1) % nsockets;
    }
    int n = sendmmsg(snd, msgs, burst, 0);
    refused += burst - (n > 0 ? n : 0);
    sent += burst;
    if (rate > 0) {
      double due = wall0 + sent / rate, t = now_s(CLOCK_MONOTONIC);
      if (due > t) {
        struct timespec ts = {(time_t)(due - t), (long)((due - t - (time_t)(due - t)) * 1e9)};
        nanosleep(&ts, NULL);
      }
    }
  }
  double cpu = now_s(CLOCK_THREAD_CPUTIME_ID) - cpu0, wall = now_s(CLOCK_MONOTONIC) - wall0;
  getrusage(RUSAGE_THREAD, &ru1);
  usleep(100 * 1000);
  atomic_store(&stop, 1);
  for (int t = 0; t < nthreads; t++) pthread_join(threads[t], NULL);
  printf("sockets %d, receiver threads %d, %s: %.2f us CPU per datagram, %.0f datagrams/s, "
         "%.2f context switches per burst, received %.1f %%, refused %ld\n",
         nsockets, nthreads, rate > 0 ? "paced" : "flat out", cpu / sent * 1e6, sent / wall,
         (double)(ru1.ru_nvcsw + ru1.ru_nivcsw - ru0.ru_nvcsw - ru0.ru_nivcsw) / (sent / burst),
         100.0 * atomic_load(&received) / sent, refused);
  return 0;
}
