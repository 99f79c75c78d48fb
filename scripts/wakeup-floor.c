// What one wake-up per datagram costs on this machine, without any SFU: a sender thread paces
// datagrams to a forwarder, which waits for each (ppoll, epoll or a blocking recvmmsg), reads it
// with recvmmsg and sends it on with sendmmsg to a receiver thread. Prints the forwarder's CPU
// time per datagram (CLOCK_THREAD_CPUTIME_ID) and its context switches. At a room of two's rate
// (~350 datagrams a second) this is the least any SFU that forwards each packet as it arrives
// can spend per forwarded packet here (docs/performance.md, "Small rooms").
//
//   gcc -O2 -pthread scripts/wakeup-floor.c -o /tmp/wakeup-floor
//   /tmp/wakeup-floor MODE [RATE [SECONDS]]
//     MODE 0: ppoll, no timeout       1: ppoll, 10 ms timeout
//          2: ppoll, 1 ms timeout (a timer wake-up every millisecond on top of the datagrams)
//          3: recvmmsg blocking (MSG_WAITFORONE)   4: epoll_wait
//   SEP=1 puts the sender and the receiver in a separate process.
// Loopback only (127.0.0.1).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double rate = 350;
static int secs = 8;
static int fwd_fd, snd_fd, rcv_fd;
static struct sockaddr_in fwd_addr, rcv_addr;
static volatile int stop;

static double now_s(clockid_t clock) {
  struct timespec t;
  clock_gettime(clock, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

// Paced sends, each at its own instant with up to ±50 us of jitter, as independent clients.
static void *sender(void *arg) {
  (void)arg;
  prctl(PR_SET_TIMERSLACK, 1);
  char buf[800];
  memset(buf, 1, sizeof buf);
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  long period = (long)(1e9 / rate);
  while (!stop) {
    t.tv_nsec += period + (rand() % 1000) * 100 - 50000;
    while (t.tv_nsec >= 1000000000) {
      t.tv_nsec -= 1000000000;
      t.tv_sec++;
    }
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, 0);
    sendto(snd_fd, buf, sizeof buf, 0, (void *)&fwd_addr, sizeof fwd_addr);
  }
  return 0;
}

static void *receiver(void *arg) {
  (void)arg;
  char buf[2048];
  while (!stop) recv(rcv_fd, buf, sizeof buf, 0);
  return 0;
}

static int bound(struct sockaddr_in *a) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  a->sin_family = AF_INET;
  a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a->sin_port = 0;
  bind(fd, (void *)a, sizeof *a);
  socklen_t len = sizeof *a;
  getsockname(fd, (void *)a, &len);
  return fd;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s MODE [RATE [SECONDS]]\n", argv[0]);
    return 2;
  }
  int mode = atoi(argv[1]);
  if (argc > 2) rate = atof(argv[2]);
  if (argc > 3) secs = atoi(argv[3]);
  struct sockaddr_in snd_addr;
  fwd_fd = bound(&fwd_addr);
  snd_fd = bound(&snd_addr);
  rcv_fd = bound(&rcv_addr);
  struct timeval tv = {0, 100000};
  setsockopt(rcv_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  pthread_t a, b;
  if (getenv("SEP")) {
    if (fork() == 0) {
      pthread_create(&a, 0, sender, 0);
      pthread_create(&b, 0, receiver, 0);
      sleep(secs + 1);
      _exit(0);
    }
  } else {
    pthread_create(&a, 0, sender, 0);
    pthread_create(&b, 0, receiver, 0);
  }
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN};
  epoll_ctl(ep, EPOLL_CTL_ADD, fwd_fd, &ev);
  if (mode == 3) {
    struct timeval wait = {0, 250000};
    setsockopt(fwd_fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
  }
  struct mmsghdr h[32];
  struct iovec iov[32];
  static char bufs[32][2048];
  struct sockaddr_in from[32];
  long packets = 0, wakes = 0;
  struct rusage r0, r1;
  getrusage(RUSAGE_THREAD, &r0);
  double cpu0 = now_s(CLOCK_THREAD_CPUTIME_ID), wall0 = now_s(CLOCK_MONOTONIC);
  while (now_s(CLOCK_MONOTONIC) - wall0 < secs) {
    struct pollfd p = {fwd_fd, POLLIN, 0};
    struct timespec one_s = {1, 0}, ten_ms = {0, 10000000}, one_ms = {0, 1000000};
    if (mode == 0) ppoll(&p, 1, &one_s, NULL);
    if (mode == 1) ppoll(&p, 1, &ten_ms, NULL);
    if (mode == 2) ppoll(&p, 1, &one_ms, NULL);
    if (mode == 4) {
      struct epoll_event e;
      epoll_wait(ep, &e, 1, 10);
    }
    wakes++;
    for (int i = 0; i < 32; i++) {
      iov[i].iov_base = bufs[i];
      iov[i].iov_len = sizeof bufs[i];
      memset(&h[i], 0, sizeof h[i]);
      h[i].msg_hdr.msg_iov = &iov[i];
      h[i].msg_hdr.msg_iovlen = 1;
      h[i].msg_hdr.msg_name = &from[i];
      h[i].msg_hdr.msg_namelen = sizeof from[i];
    }
    int n = recvmmsg(fwd_fd, h, 32, mode == 3 ? MSG_WAITFORONE : MSG_DONTWAIT, NULL);
    if (n <= 0) continue;
    for (int i = 0; i < n; i++) {
      iov[i].iov_len = h[i].msg_len;
      h[i].msg_hdr.msg_name = &rcv_addr;
      h[i].msg_hdr.msg_namelen = sizeof rcv_addr;
    }
    sendmmsg(fwd_fd, h, n, MSG_DONTWAIT);
    packets += n;
  }
  double cpu1 = now_s(CLOCK_THREAD_CPUTIME_ID);
  getrusage(RUSAGE_THREAD, &r1);
  stop = 1;
  printf("mode %d, %.0f datagrams/s: %ld forwarded, %ld wake-ups, %.1f us CPU per datagram, "
         "%ld voluntary and %ld involuntary context switches\n",
         mode, rate, packets, wakes, (cpu1 - cpu0) * 1e6 / (packets ? packets : 1),
         r1.ru_nvcsw - r0.ru_nvcsw, r1.ru_nivcsw - r0.ru_nivcsw);
  return 0;
}
