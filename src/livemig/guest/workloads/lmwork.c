/*
 * lmwork: the livemig guest workloads, one static binary.
 *
 *   lmwork MODE[:key=val,key=val...]
 *
 * Modes: idle | dirty | stream | verify | faultprobe | scan
 *
 * Every mode runs a heartbeat thread that writes "SEQ MONOTONIC_NS WORK\n" on
 * the heartbeat serial port (default /dev/ttyS1) every hb_ms milliseconds.
 * WORK counts the workload's own progress (pages written, frames rendered,
 * pages read: one unit per mode), so the host sees a slowdown, not only a stall.  Lines
 * that start with '#' carry results ("# verify ok pages=N").  The host may
 * write commands on the same port, one per line:
 *   check  -> (verify) re-check the pattern and print the verdict
 *   go     -> (faultprobe) start touching pages now
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL

static int hb_fd = -1;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static volatile int check_requested;
static volatile int go_requested;
static volatile uint64_t work; /* the workload's progress, in its own unit */

/* ---- options ---------------------------------------------------------- */
struct opts {
    char mode[32];
    long mib, rate, fps, kib, ring, hb_ms, seed, pages, delay_ms, then, at;
    char pattern[16];
    char port[64];
};

static long opt_num(const char *v) { return strtol(v, NULL, 10); }

static void parse(struct opts *o, const char *spec)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", spec);
    char *colon = strchr(buf, ':');
    if (colon) *colon = 0;
    snprintf(o->mode, sizeof o->mode, "%.31s", buf);
    if (!colon) return;
    for (char *kv = strtok(colon + 1, ","); kv; kv = strtok(NULL, ",")) {
        char *eq = strchr(kv, '=');
        if (!eq) continue;
        *eq = 0;
        const char *k = kv, *v = eq + 1;
        if (!strcmp(k, "mib")) o->mib = opt_num(v);
        else if (!strcmp(k, "rate")) o->rate = opt_num(v);
        else if (!strcmp(k, "fps")) o->fps = opt_num(v);
        else if (!strcmp(k, "kib")) o->kib = opt_num(v);
        else if (!strcmp(k, "ring")) o->ring = opt_num(v);
        else if (!strcmp(k, "hb")) o->hb_ms = opt_num(v);
        else if (!strcmp(k, "seed")) o->seed = opt_num(v);
        else if (!strcmp(k, "pages")) o->pages = opt_num(v);
        else if (!strcmp(k, "delay")) o->delay_ms = opt_num(v);
        else if (!strcmp(k, "then")) o->then = opt_num(v);
        else if (!strcmp(k, "at")) o->at = opt_num(v);
        else if (!strcmp(k, "pattern")) snprintf(o->pattern, sizeof o->pattern, "%s", v);
        else if (!strcmp(k, "port")) snprintf(o->port, sizeof o->port, "%s", v);
    }
}

/* ---- time and output -------------------------------------------------- */
static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = { (time_t)(ns / 1000000000ULL), (long)(ns % 1000000000ULL) };
    while (nanosleep(&ts, &ts) && errno == EINTR) {}
}

static void say(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (n >= (int)sizeof line) n = sizeof line - 1;
    pthread_mutex_lock(&out_lock);
    if (hb_fd >= 0 && write(hb_fd, line, (size_t)n) < 0) {}
    pthread_mutex_unlock(&out_lock);
}

static uint64_t rng_state = 88172645463325252ULL;
static uint64_t xorshift(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* ---- heartbeat and command threads ------------------------------------ */
static void *heartbeat(void *arg)
{
    long hb_ms = *(long *)arg;
    uint64_t period = (uint64_t)hb_ms * 1000000ULL, next = now_ns();
    for (uint64_t seq = 0;; seq++) {
        say("%llu %llu %llu\n", (unsigned long long)seq, (unsigned long long)now_ns(), (unsigned long long)work);
        next += period;
        uint64_t t = now_ns();
        if (next > t) sleep_ns(next - t);
        else next = t; /* we were stopped: do not burst to catch up */
    }
    return NULL;
}

static void *commands(void *arg)
{
    (void)arg;
    char line[128];
    size_t len = 0;
    for (;;) {
        char c;
        ssize_t n = read(hb_fd, &c, 1);
        if (n <= 0) { sleep_ns(10000000ULL); continue; }
        if (c != '\n' && c != '\r') {
            if (len < sizeof line - 1) line[len++] = c;
            continue;
        }
        line[len] = 0;
        len = 0;
        if (!strcmp(line, "check")) check_requested = 1;
        else if (!strcmp(line, "go")) go_requested = 1;
        else if (!strcmp(line, "ping")) say("# pong\n");
    }
    return NULL;
}

static void open_port(const char *path)
{
    hb_fd = open(path, O_RDWR | O_NOCTTY);
    if (hb_fd < 0) { perror(path); return; }
    struct termios t;
    if (tcgetattr(hb_fd, &t) == 0) {
        cfmakeraw(&t);
        cfsetispeed(&t, B115200);
        cfsetospeed(&t, B115200);
        t.c_cc[VMIN] = 1;
        t.c_cc[VTIME] = 0;
        tcsetattr(hb_fd, TCSANOW, &t);
    }
}

/* The console line livemig waits for: the workload is set up (memory allocated, filled). */
static void ready(void)
{
    static const char msg[] = "livemig-guest: ready\n";
    if (write(1, msg, sizeof msg - 1) < 0) { /* the console is gone: nothing to tell */ }
}

static unsigned char *alloc_mib(long mib)
{
    size_t len = (size_t)mib << 20;
    unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) { say("# error mmap %ld MiB\n", mib); exit(1); }
    return p;
}

/* Writes `per_tick` pages every 10 ms when rate > 0, else as fast as it can. */
static void pace(long rate_mb, long *budget)
{
    if (rate_mb <= 0) return;
    if (--*budget > 0) return;
    sleep_ns(10000000ULL);
    *budget = (rate_mb * 1000000L / 100) / (long)PAGE;
    if (*budget < 1) *budget = 1;
}

/* ---- workloads -------------------------------------------------------- */
/* Writes pages (WORK: pages written); with then=R,at=S the rate becomes R MiB/s
 * S seconds after the workload is ready (a phase change, mid-migration). */
static void run_dirty(struct opts *o)
{
    long pages = (o->mib << 20) / (long)PAGE, budget = 0, i = 0, rate = o->rate;
    int random = !strcmp(o->pattern, "random");
    unsigned char *mem = alloc_mib(o->mib);
    say("# dirty mib=%ld rate=%ld pattern=%s then=%ld at=%ld\n", o->mib, o->rate, random ? "random" : "seq",
        o->then, o->at);
    ready();
    uint64_t phase_at = o->at > 0 ? now_ns() + (uint64_t)o->at * 1000000000ULL : 0;
    for (uint64_t v = 1;; v++) {
        long p = random ? (long)(xorshift() % (uint64_t)pages) : (i++ % pages);
        *(volatile uint64_t *)(mem + (size_t)p * PAGE) = v;
        work++;
        if (phase_at && (v & 255) == 0 && now_ns() >= phase_at) {
            rate = o->then;
            phase_at = 0;
            budget = 0;
            say("# dirty phase rate=%ld\n", rate);
        }
        pace(rate, &budget);
    }
}

/* A read-mostly working set: reads every page of mib MiB over and over (WORK:
 * pages read), and writes rate MiB/s of them (0: none). */
static void run_scan(struct opts *o)
{
    long pages = (o->mib << 20) / (long)PAGE;
    unsigned char *mem = alloc_mib(o->mib);
    for (long p = 0; p < pages; p++) mem[(size_t)p * PAGE] = (unsigned char)(p | 1); /* no zero pages */
    long per_tick = o->rate > 0 ? (o->rate * 1000000L / 100) / (long)PAGE : 0; /* writes per 10 ms */
    if (o->rate > 0 && per_tick < 1) per_tick = 1;
    uint64_t sum = 0, tick = now_ns();
    say("# scan mib=%ld rate=%ld\n", o->mib, o->rate);
    ready();
    for (;;) {
        for (long p = 0; p < pages; p++) {
            sum += *(volatile unsigned char *)(mem + (size_t)p * PAGE);
            work++;
            if ((p & 255) == 0 && per_tick && now_ns() - tick >= 10000000ULL) {
                tick = now_ns();
                for (long w = 0; w < per_tick; w++)
                    mem[(size_t)(xorshift() % (uint64_t)pages) * PAGE + 8] = (unsigned char)sum;
            }
        }
    }
}

static void run_stream(struct opts *o)
{
    size_t frame = (size_t)o->kib << 10, ring = (size_t)o->ring << 20;
    size_t slots = ring / frame;
    if (slots < 2) slots = 2;
    unsigned char *mem = alloc_mib(o->ring);
    uint64_t period = 1000000000ULL / (uint64_t)(o->fps > 0 ? o->fps : 1), next = now_ns();
    uint64_t sum = 0;
    /* Start with a full buffer of rendered frames, as a player does: no zero pages. */
    for (size_t b = 0; b < slots * frame; b += 64) mem[b] = (unsigned char)(b / frame + b + 1);
    say("# stream fps=%ld kib=%ld ring=%ld slots=%zu\n", o->fps, o->kib, o->ring, slots);
    ready();
    for (size_t n = 0;; n++) {
        unsigned char *dst = mem + (n % slots) * frame;
        for (size_t b = 0; b < frame; b += 64) dst[b] = (unsigned char)(n + b);
        /* Play back an older frame, half a ring ago: read-mostly memory. */
        unsigned char *old = mem + ((n + slots / 2) % slots) * frame;
        for (size_t b = 0; b < frame; b += PAGE) sum += old[b];
        work++;
        next += period;
        uint64_t t = now_ns();
        if (next > t) sleep_ns(next - t);
        else next = t;
        if (n % 1000 == 999) say("# stream frames=%zu sum=%llu\n", n + 1, (unsigned long long)sum);
    }
}

static uint64_t pattern_word(uint64_t seed, uint64_t page, uint64_t gen, uint64_t w)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ULL ^ page * 0xBF58476D1CE4E5B9ULL ^ gen * 0x94D049BB133111EBULL ^ w;
    x ^= x >> 31;
    return x * 0xD6E8FEB86969D7EDULL;
}

static void fill_page(uint64_t *pg, uint64_t seed, uint64_t page, uint64_t gen)
{
    for (uint64_t w = 0; w < PAGE / 8; w++) pg[w] = pattern_word(seed, page, gen, w);
}

static void run_verify(struct opts *o)
{
    long pages = (o->mib << 20) / (long)PAGE, budget = 0;
    uint64_t seed = (uint64_t)o->seed;
    unsigned char *mem = alloc_mib(o->mib);
    uint32_t *gen = calloc((size_t)pages, sizeof *gen);
    for (long p = 0; p < pages; p++) fill_page((uint64_t *)(mem + (size_t)p * PAGE), seed, (uint64_t)p, 0);
    say("# verify ready pages=%ld seed=%llu\n", pages, (unsigned long long)seed);
    ready();
    for (;;) {
        if (check_requested) {
            long bad = 0, first = -1;
            for (long p = 0; p < pages; p++) {
                uint64_t *pg = (uint64_t *)(mem + (size_t)p * PAGE);
                for (uint64_t w = 0; w < PAGE / 8; w++) {
                    if (pg[w] != pattern_word(seed, (uint64_t)p, gen[p], w)) {
                        bad++;
                        if (first < 0) first = p;
                        break;
                    }
                }
            }
            if (bad) say("# verify fail pages=%ld bad=%ld first=%ld\n", pages, bad, first);
            else say("# verify ok pages=%ld\n", pages);
            check_requested = 0;
        }
        long p = (long)(xorshift() % (uint64_t)pages);
        gen[p]++;
        fill_page((uint64_t *)(mem + (size_t)p * PAGE), seed, (uint64_t)p, gen[p]);
        work++;
        pace(o->rate, &budget);
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Touches random pages of a large buffer once each, when told "go", and
 * reports the latency of each first touch: p50/p99/max and a histogram. */
static void run_faultprobe(struct opts *o)
{
    long pages = (o->mib << 20) / (long)PAGE;
    long n = o->pages > 0 && o->pages < pages ? o->pages : pages;
    unsigned char *mem = alloc_mib(o->mib);
    for (long p = 0; p < pages; p++) mem[(size_t)p * PAGE] = (unsigned char)p;
    uint64_t *lat = calloc((size_t)n, sizeof *lat);
    say("# faultprobe ready pages=%ld touches=%ld\n", pages, n);
    ready();
    for (;;) {
        while (!go_requested) sleep_ns(1000000ULL);
        go_requested = 0;
        if (o->delay_ms > 0) sleep_ns((uint64_t)o->delay_ms * 1000000ULL);
        uint64_t sum = 0;
        for (long i = 0; i < n; i++) {
            long p = (long)(xorshift() % (uint64_t)pages);
            uint64_t t0 = now_ns();
            sum += *(volatile unsigned char *)(mem + (size_t)p * PAGE);
            lat[i] = now_ns() - t0;
            work++;
        }
        qsort(lat, (size_t)n, sizeof *lat, cmp_u64);
        uint64_t total = 0;
        for (long i = 0; i < n; i++) total += lat[i];
        /* log2 histogram of microseconds: bucket k holds [2^k, 2^(k+1)) us */
        long hist[24] = {0};
        for (long i = 0; i < n; i++) {
            uint64_t us = lat[i] / 1000;
            int k = 0;
            while (us > 1 && k < 23) { us >>= 1; k++; }
            hist[k]++;
        }
        char h[256];
        int off = 0;
        for (int k = 0; k < 24; k++) off += snprintf(h + off, sizeof h - (size_t)off, "%s%ld", k ? "," : "", hist[k]);
        say("# faultprobe n=%ld mean_ns=%llu p50_ns=%llu p99_ns=%llu max_ns=%llu hist_log2us=%s sum=%llu\n",
            n, (unsigned long long)(total / (uint64_t)n), (unsigned long long)lat[n / 2],
            (unsigned long long)lat[(n * 99) / 100], (unsigned long long)lat[n - 1], h,
            (unsigned long long)sum);
    }
}

int main(int argc, char **argv)
{
    struct opts o = { .mib = 64, .rate = 0, .fps = 30, .kib = 256, .ring = 128,
                      .hb_ms = 5, .seed = 1, .pages = 2000, .delay_ms = 0, .then = 0, .at = 0 };
    snprintf(o.pattern, sizeof o.pattern, "seq");
    snprintf(o.port, sizeof o.port, "/dev/ttyS1");
    parse(&o, argc > 1 ? argv[1] : "idle");
    rng_state ^= (uint64_t)o.seed * 0x9E3779B97F4A7C15ULL;
    open_port(o.port);
    pthread_t hb, cmd;
    pthread_create(&hb, NULL, heartbeat, &o.hb_ms);
    pthread_create(&cmd, NULL, commands, NULL);
    say("# workload %s\n", o.mode);
    if (!strcmp(o.mode, "dirty")) run_dirty(&o);
    else if (!strcmp(o.mode, "stream")) run_stream(&o);
    else if (!strcmp(o.mode, "verify")) run_verify(&o);
    else if (!strcmp(o.mode, "faultprobe")) run_faultprobe(&o);
    else if (!strcmp(o.mode, "scan")) run_scan(&o);
    ready();
    for (;;) sleep_ns(3600ULL * 1000000000ULL); /* idle */
}
