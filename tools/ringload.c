/* ringload.c - memcached text-protocol load over a given list of keys.
 *
 * The fleet benchmark (tools/multicore_compare.py) runs one of these per
 * node, each with the keys the client's consistent-hashing ring gives that
 * node, so every key goes where a memd cluster client would send it and
 * the load is generated in C, not through a Python client.
 *
 *   ringload -p PORT -f KEYFILE [-c conns] [-t secs] [-w warmup] [-r get_ratio]
 *            [-m keys_per_get] [-v value_size] [-N]
 *
 * KEYFILE: one key a line.  The keys are set first (pipelined, unless -N).
 * Each connection then keeps one request in flight: a get of -m random keys
 * of the file, or (with probability 1 - r, single-key gets only) a set.
 * Only replies completed inside the -t measured seconds, after -w warm-up
 * seconds, count.  Prints one line:
 *   RESULT ops=.. ops_s=.. keys_s=.. hits=.. p50_us=.. p99_us=..
 *
 * build: gcc -O2 -o ringload ringload.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
  int fd;
  char *in;
  size_t in_len, in_cap;
  uint64_t sent_at;
  int expect_end; /* 1: reply ends with END\r\n, 0: a set's one line */
} conn_t;

static char **keys;
static size_t nkeys;
static uint64_t rng = 88172645463325252ull;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t next_rand(void) { /* xorshift64 */
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static void die(const char *what) {
  perror(what);
  exit(1);
}

static void load_keys(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) die(path);
  size_t cap = 1024;
  keys = malloc(cap * sizeof *keys);
  char line[300];
  while (fgets(line, sizeof line, f)) {
    size_t n = strcspn(line, "\r\n");
    if (!n) continue;
    line[n] = 0;
    if (nkeys == cap) keys = realloc(keys, (cap *= 2) * sizeof *keys);
    keys[nkeys++] = strdup(line);
  }
  fclose(f);
  if (!nkeys) {
    fprintf(stderr, "no keys in %s\n", path);
    exit(1);
  }
}

static int connect_to(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) die("socket");
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static void send_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = send(fd, p, n, 0);
    if (w < 0) {
      if (errno == EINTR) continue;
      die("send");
    }
    p += w;
    n -= (size_t)w;
  }
}

/* set every key, 100 per write, reading the STOREDs as they come */
static void preload(int port, const char *value, int vsize) {
  int fd = connect_to(port);
  size_t expect = 0, got = 0;
  char buf[1 << 16];
  for (size_t i = 0; i < nkeys; i += 100) {
    char out[100 * 400];
    size_t len = 0;
    for (size_t k = i; k < nkeys && k < i + 100; k++, expect++)
      len += (size_t)sprintf(out + len, "set %s 0 0 %d\r\n%s\r\n", keys[k], vsize, value);
    send_all(fd, out, len);
    while (got + 200 < expect) { /* keep at most ~200 replies outstanding */
      ssize_t r = recv(fd, buf, sizeof buf, 0);
      if (r <= 0) die("recv during preload");
      for (ssize_t j = 0; j < r; j++) got += buf[j] == '\n';
    }
  }
  while (got < expect) {
    ssize_t r = recv(fd, buf, sizeof buf, 0);
    if (r <= 0) die("recv during preload");
    for (ssize_t j = 0; j < r; j++) got += buf[j] == '\n';
  }
  close(fd);
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  int port = 0, nconns = 50, mget = 1, vsize = 100, nofill = 0;
  double secs = 5, warm = 1, get_ratio = 0.9;
  const char *keyfile = NULL;
  int o;
  while ((o = getopt(argc, argv, "p:f:c:t:w:r:m:v:N")) != -1) {
    switch (o) {
      case 'p': port = atoi(optarg); break;
      case 'f': keyfile = optarg; break;
      case 'c': nconns = atoi(optarg); break;
      case 't': secs = atof(optarg); break;
      case 'w': warm = atof(optarg); break;
      case 'r': get_ratio = atof(optarg); break;
      case 'm': mget = atoi(optarg); break;
      case 'v': vsize = atoi(optarg); break;
      case 'N': nofill = 1; break;
      default:
        fprintf(stderr, "usage: %s -p port -f keyfile [-c conns] [-t secs] [-w warmup]"
                        " [-r get_ratio] [-m keys_per_get] [-v value_size] [-N]\n", argv[0]);
        return 2;
    }
  }
  if (!port || !keyfile || nconns < 1 || mget < 1 || vsize < 1) {
    fprintf(stderr, "-p and -f are required\n");
    return 2;
  }
  rng ^= (uint64_t)getpid() * 0x9E3779B97F4A7C15ull;
  load_keys(keyfile);
  char *value = malloc((size_t)vsize + 1);
  memset(value, 'v', (size_t)vsize);
  value[vsize] = 0;
  if (!nofill) preload(port, value, vsize);

  int ep = epoll_create1(0);
  conn_t *conns = calloc((size_t)nconns, sizeof *conns);
  size_t req_cap = (size_t)mget * 300 + (size_t)vsize + 400;
  char *req = malloc(req_cap);
  uint64_t start = now_ns(), measure_from = start + (uint64_t)(warm * 1e9),
           stop = measure_from + (uint64_t)(secs * 1e9);
  size_t lat_cap = 1 << 20, nlat = 0;
  uint64_t *lat = malloc(lat_cap * sizeof *lat);
  uint64_t ops = 0, keys_asked = 0, hits = 0;

  for (int i = 0; i < nconns; i++) {
    conn_t *c = &conns[i];
    c->fd = connect_to(port);
    c->in_cap = 1 << 16;
    c->in = malloc(c->in_cap);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
  }
  /* one request in flight per connection */
#define SEND_NEXT(c)                                                              \
  do {                                                                            \
    size_t len;                                                                   \
    if (mget == 1 && (double)(next_rand() % 10000) >= get_ratio * 10000) {         \
      len = (size_t)sprintf(req, "set %s 0 0 %d\r\n%s\r\n",                       \
                            keys[next_rand() % nkeys], vsize, value);             \
      (c)->expect_end = 0;                                                        \
    } else {                                                                      \
      len = 3;                                                                    \
      memcpy(req, "get", 3);                                                      \
      for (int k = 0; k < mget; k++)                                              \
        len += (size_t)sprintf(req + len, " %s", keys[next_rand() % nkeys]);     \
      memcpy(req + len, "\r\n", 2);                                               \
      len += 2;                                                                   \
      (c)->expect_end = 1;                                                        \
    }                                                                             \
    (c)->in_len = 0;                                                              \
    (c)->sent_at = now_ns();                                                      \
    send_all((c)->fd, req, len);                                                  \
  } while (0)
  for (int i = 0; i < nconns; i++) SEND_NEXT(&conns[i]);

  struct epoll_event evs[256];
  for (;;) {
    int n = epoll_wait(ep, evs, 256, 100);
    uint64_t t = now_ns();
    if (t >= stop) break;
    for (int i = 0; i < n; i++) {
      conn_t *c = evs[i].data.ptr;
      if (c->in_cap - c->in_len < 4096) c->in = realloc(c->in, c->in_cap *= 2);
      ssize_t r = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
      if (r <= 0) {
        if (r < 0 && errno == EINTR) continue;
        fprintf(stderr, "connection closed by the server\n");
        return 1;
      }
      c->in_len += (size_t)r;
      int done;
      if (c->expect_end)
        done = c->in_len >= 5 && !memcmp(c->in + c->in_len - 5, "END\r\n", 5);
      else
        done = c->in_len >= 2 && !memcmp(c->in + c->in_len - 2, "\r\n", 2);
      if (!done) continue;
      if (t >= measure_from) {
        ops++;
        if (c->expect_end) {
          keys_asked += (uint64_t)mget;
          /* count hits: a reply is VALUE blocks then END; every block starts
             "VALUE " and a value of 'v's cannot contain "\nVALUE " */
          const char *p = c->in, *end = c->in + c->in_len;
          if (c->in_len >= 6 && !memcmp(p, "VALUE ", 6)) hits++;
          while ((p = memmem(p + 1, (size_t)(end - p - 1), "\nVALUE ", 7))) hits++;
        }
        if (nlat == lat_cap) lat = realloc(lat, (lat_cap *= 2) * sizeof *lat);
        lat[nlat++] = t - c->sent_at;
      }
      SEND_NEXT(c);
    }
  }
  qsort(lat, nlat, sizeof *lat, cmp_u64);
  double p50 = nlat ? lat[nlat / 2] / 1e3 : 0, p99 = nlat ? lat[nlat * 99 / 100] / 1e3 : 0;
  printf("RESULT ops=%llu ops_s=%.0f keys_s=%.0f hits=%llu p50_us=%.0f p99_us=%.0f\n",
         (unsigned long long)ops, ops / secs, keys_asked / secs, (unsigned long long)hits, p50, p99);
  return 0;
}
