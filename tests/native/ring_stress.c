/* Two-thread stress harness for the ring core (native/ring.c), for TSAN and ASan/UBSan builds.
 *
 * One producer thread and one consumer thread share one mapping (TSAN tracks memory by address,
 * so two mappings of the same memfd would hide races). The producer writes records of random
 * sizes, including 0/1 byte, max_record, and sizes that end exactly at the end of the data area
 * or force a PAD; sometimes it aborts a reservation or commits fewer bytes than it reserved. Each
 * payload is a deterministic byte stream derived from (seq, len), so the consumer checks every
 * byte and the sequence order. The consumer holds a few records and releases them out of order,
 * and sometimes waits for data while still holding one (the producer's wake-up hysteresis must
 * not leave it asleep then: missed wakes are counted and printed).
 * Small random pauses on both sides make the ring run full and empty, exercising both sleeps.
 *
 * usage: ring_stress CAPACITY RECORDS SEED [SECONDS]
 * exit 0 and prints "ok ..." on success; prints "FAIL ..." and exits 1 otherwise.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ring.h"

#define MAX_HELD 6
#define WAIT_NS 5000000000ll /* a 5 s wait in a healthy run means a lost wake-up or deadlock */
#define HOLD_WAIT_NS 20000000ll /* waiting while holding a record the producer may need */

typedef struct {
    sl_ring *ring;
    uint64_t records;
    uint64_t seed;
    double seconds;
    uint64_t produced;
    uint64_t consumed;
    const char *failure;
} harness;

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void fill(uint8_t *p, uint64_t len, uint64_t seq) {
    uint64_t s = seq * 0x100000001B3ull ^ len;
    for (uint64_t i = 0; i < len; i += 8) {
        uint64_t v = splitmix(&s);
        uint64_t n = len - i < 8 ? len - i : 8;
        memcpy(p + i, &v, n);
    }
}

static int check(const uint8_t *p, uint64_t len, uint64_t seq) {
    uint64_t s = seq * 0x100000001B3ull ^ len;
    for (uint64_t i = 0; i < len; i += 8) {
        uint64_t v = splitmix(&s);
        uint64_t n = len - i < 8 ? len - i : 8;
        if (memcmp(p + i, &v, n) != 0) return 0;
    }
    return 1;
}

static void tiny_pause(uint64_t *rng) {
    if (splitmix(rng) % 16 == 0) {
        struct timespec ts = {0, (long)(splitmix(rng) % 20000)};
        nanosleep(&ts, NULL);
    }
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Payload size that makes the next record end exactly at the end of the data area, or a random
 * one when that is not a legal size right now. */
static uint64_t pick_size(sl_ring *r, uint64_t *rng) {
    uint64_t cap = sl_ring_capacity(r), maxrec = sl_ring_max_record(r);
    switch (splitmix(rng) % 8) {
    case 0: return 0;
    case 1: return 1;
    case 2: return maxrec;
    case 3: {
        sl_stats st;
        sl_ring_stats(r, &st);
        uint64_t to_end = cap - (st.head & (cap - 1));
        if (to_end >= SL_PAYLOAD_OFFSET && to_end - SL_PAYLOAD_OFFSET <= maxrec)
            return to_end - SL_PAYLOAD_OFFSET;
        return splitmix(rng) % (maxrec + 1);
    }
    default: return splitmix(rng) % (maxrec + 1);
    }
}

static void *producer(void *arg) {
    harness *hs = arg;
    sl_ring *r = hs->ring;
    uint64_t rng = hs->seed ^ 0xABCDEF;
    double stop = now_s() + hs->seconds;
    uint64_t seq = 0;
    for (; seq < hs->records && now_s() < stop; seq++) {
        uint64_t n = pick_size(r, &rng);
        uint8_t *buf;
        sl_status st;
        while ((st = sl_ring_reserve(r, n, &buf)) == SL_AGAIN) {
            st = sl_ring_wait_writable(r, n, WAIT_NS);
            if (st != SL_OK) {
                hs->failure = sl_status_name(st);
                return NULL;
            }
        }
        if (st != SL_OK) {
            hs->failure = "reserve failed";
            return NULL;
        }
        if (splitmix(&rng) % 13 == 0) { /* abandoned reservation: must stay invisible */
            memset(buf, 0xEE, n);
            sl_ring_abort(r);
            seq--;
            continue;
        }
        uint64_t len = (n > 0 && splitmix(&rng) % 5 == 0) ? splitmix(&rng) % n : n;
        fill(buf, len, seq);
        if (sl_ring_commit(r, len, SL_REC_DATA, seq) != SL_OK) {
            hs->failure = "commit failed";
            return NULL;
        }
        tiny_pause(&rng);
    }
    hs->produced = seq;
    uint8_t *buf;
    while (sl_ring_reserve(r, 0, &buf) == SL_AGAIN) {
        if (sl_ring_wait_writable(r, 0, WAIT_NS) != SL_OK) {
            hs->failure = "no space for EOS";
            return NULL;
        }
    }
    sl_ring_commit(r, 0, SL_REC_EOS, seq);
    sl_ring_close(r);
    return NULL;
}

static void *consumer(void *arg) {
    harness *hs = arg;
    sl_ring *r = hs->ring;
    uint64_t rng = hs->seed ^ 0x123457;
    uint64_t held[MAX_HELD];
    int nheld = 0;
    uint64_t expect = 0;
    for (;;) {
        sl_record rec;
        sl_status st = sl_ring_get(r, &rec);
        if (st == SL_AGAIN) {
            /* Usually release everything before waiting. Sometimes wait while still holding one
             * record (a zero-copy batch the user keeps): the producer may then fit in less than
             * the half ring it asked to be woken for, and the waiting consumer must wake it. If
             * the record it holds is what the producer needs, give it up after a short wait. */
            int keep = nheld > 0 && splitmix(&rng) % 4 == 0;
            while (nheld > keep) sl_ring_release(r, held[--nheld]);
            st = sl_ring_wait_readable(r, keep ? HOLD_WAIT_NS : WAIT_NS);
            if (st == SL_TIMEOUT && keep) {
                sl_ring_release(r, held[--nheld]);
                continue;
            }
            if (st == SL_CLOSED) break;
            if (st != SL_OK) {
                hs->failure = sl_status_name(st);
                return NULL;
            }
            continue;
        }
        if (st != SL_OK) {
            hs->failure = sl_status_name(st);
            return NULL;
        }
        if (rec.seq != expect) {
            hs->failure = "sequence gap or duplicate";
            return NULL;
        }
        if (rec.type == SL_REC_EOS) {
            sl_ring_release(r, rec.pos);
            continue;
        }
        if (rec.type != SL_REC_DATA || !check(rec.data, rec.len, rec.seq)) {
            hs->failure = "payload mismatch";
            return NULL;
        }
        if (((uintptr_t)rec.data & 63) != 0) {
            hs->failure = "payload not 64-byte aligned";
            return NULL;
        }
        expect++;
        held[nheld++] = rec.pos;
        /* Release a random held record (out of order), or all when the hand is full. */
        if (nheld == MAX_HELD || splitmix(&rng) % 3 == 0) {
            int i = (int)(splitmix(&rng) % (uint64_t)nheld);
            if (sl_ring_release(r, held[i]) != SL_OK) {
                hs->failure = "release failed";
                return NULL;
            }
            held[i] = held[--nheld];
        }
        if (nheld == MAX_HELD) {
            while (nheld > 0) sl_ring_release(r, held[--nheld]);
        }
        tiny_pause(&rng);
    }
    while (nheld > 0) sl_ring_release(r, held[--nheld]);
    hs->consumed = expect;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s CAPACITY RECORDS SEED [SECONDS]\n", argv[0]);
        return 2;
    }
    uint64_t capacity = strtoull(argv[1], NULL, 0);
    harness hs = {0};
    hs.records = strtoull(argv[2], NULL, 0);
    hs.seed = strtoull(argv[3], NULL, 0);
    hs.seconds = argc > 4 ? atof(argv[4]) : 2.0;

    sl_ring *cons, *prod;
    sl_oserr oserr = {0, NULL};
    sl_status st = sl_ring_create(capacity, 0, SL_ROLE_CONSUMER, &cons, &oserr);
    if (st != SL_OK) {
        printf("FAIL create: %s\n", sl_status_name(st));
        return 1;
    }
    if (sl_ring_open_peer(cons, &prod) != SL_OK) {
        printf("FAIL open_peer\n");
        return 1;
    }
    /* Spinning is pointless on an oversubscribed machine and hides the sleep path. */
    sl_ring_set_spin(prod, (uint32_t)(hs.seed % 3 == 0 ? 0 : 64));
    sl_ring_set_spin(cons, (uint32_t)(hs.seed % 2 == 0 ? 0 : 64));

    harness ph = hs, ch = hs;
    ph.ring = prod;
    ch.ring = cons;
    pthread_t pt, ct;
    pthread_create(&ct, NULL, consumer, &ch);
    pthread_create(&pt, NULL, producer, &ph);
    pthread_join(pt, NULL);
    pthread_join(ct, NULL);

    sl_stats s;
    sl_ring_stats(cons, &s);
    int ok = !ph.failure && !ch.failure && ph.produced == ch.consumed && ph.produced > 0 &&
             s.head == s.tail;
    if (ok)
        printf("ok produced=%llu consumed=%llu bytes=%llu producer_waits=%llu consumer_waits=%llu "
               "producer_missed_wakes=%llu consumer_missed_wakes=%llu\n",
               (unsigned long long)ph.produced, (unsigned long long)ch.consumed,
               (unsigned long long)s.bytes_read, (unsigned long long)s.producer_waits,
               (unsigned long long)s.consumer_waits, (unsigned long long)s.producer_missed_wakes,
               (unsigned long long)s.consumer_missed_wakes);
    else
        printf("FAIL producer=%s consumer=%s produced=%llu consumed=%llu head=%llu tail=%llu\n",
               ph.failure ? ph.failure : "-", ch.failure ? ch.failure : "-",
               (unsigned long long)ph.produced, (unsigned long long)ch.consumed,
               (unsigned long long)s.head, (unsigned long long)s.tail);
    sl_ring_destroy(prod);
    sl_ring_destroy(cons);
    return ok ? 0 : 1;
}
