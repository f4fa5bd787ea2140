/* streamload ring core: a single-producer/single-consumer byte ring in shared memory.
 *
 * Plain C11, no Python.h: the CPython binding (ringmodule.c) and the thread stress harness
 * (tests/native/ring_stress.c) both drive this same code.
 *
 * Memory: one memfd (no name in /dev/shm), fallocate'd at creation so running out of memory is
 * a status here and never a SIGBUS later, sealed against shrink/grow, mapped MAP_SHARED.
 *
 * Layout (byte offsets into the mapping):
 *   0      header page (SL_HEADER_SIZE bytes): magic, geometry, pids, head, tail, futex words,
 *          closed flags, stats; head and tail each sit alone in a 128-byte block
 *   4096   data area: `capacity` bytes, a power of two
 *
 * Positions: `head` (producer-owned) and `tail` (consumer-owned) are free-running u64 byte
 * positions; index = pos & (capacity - 1); bytes in use = head - tail <= capacity.
 *
 * Record: a 16-byte header {u32 len, u16 type, u16 flags, u64 seq} at a 64-byte aligned position;
 * the payload starts SL_PAYLOAD_OFFSET (64) bytes after the header so every payload is 64-byte
 * aligned (arrays can be viewed in place); the record occupies align64(64 + len) bytes.
 * A record never straddles the end of the data area: when it does not fit, the producer writes a
 * PAD record covering the rest and places the record at index 0; both are published by one store
 * of `head`. max_record is bounded so that align64(64 + max_record) <= capacity / 2, hence any
 * record fits after at most one pad.
 *
 * Memory ordering: the producer writes header + payload with plain stores, then publishes with a
 * seq_cst store of head; the consumer loads head (acquire or seq_cst) before reading records and
 * publishes freed space with a seq_cst store of tail, which the producer loads before reusing
 * space. The seq_cst publishing stores double as the waker's half of the sleep/wake (Dekker)
 * handshake: waiter stores waiting=1 (seq_cst) then re-loads the peer position (seq_cst); waker
 * stores the position (seq_cst) then loads waiting (seq_cst). No standalone fences (GCC's TSAN
 * does not model them).
 *
 * Blocking: sl_ring_wait_* spin briefly, then sleep on a shared futex eventcount in bounded
 * slices (SL_WAIT_SLICE_NS), re-checking the peer's closed flag and liveness (pid + start time
 * from /proc, so a zombie or a recycled pid counts as dead) after each slice. Wake-ups have
 * hysteresis on the producer side: a waiting producer publishes the space it needs and the
 * space it wants (half the ring), and the consumer wakes it when the wanted space is free after
 * a release, or the needed space when the consumer is about to wait itself; so a ring the
 * consumer keeps full costs one wake per half ring, not one per record.
 *
 * Threads: one producer thread and one consumer thread per ring. A sl_ring object is one side
 * (one role) of the ring in one process; its functions are not reentrant across threads except
 * where noted (the binding serialises calls with the GIL).
 *
 * Every failure is a returned sl_status; there is no global state.
 */
#ifndef STREAMLOAD_RING_H
#define STREAMLOAD_RING_H

#include <stddef.h>
#include <stdint.h>

#define SL_RING_ABI_VERSION 3
#define SL_HEADER_SIZE 4096u
#define SL_PAYLOAD_OFFSET 64u
#define SL_ALIGN 64u
#define SL_MIN_CAPACITY 256u
#define SL_MAX_CAPACITY (1ull << 40)
/* Longest single futex sleep: a waiter re-checks closed flags and peer liveness this often. */
#define SL_WAIT_SLICE_NS 50000000ll

typedef enum {
    SL_OK = 0,
    SL_AGAIN = 1,      /* non-blocking call: no space / no record right now */
    SL_TIMEOUT = 2,    /* blocking wait: the timeout passed, nothing changed */
    SL_CLOSED = 3,     /* the peer closed its side (consumer: and everything is drained) */
    SL_PEER_DEAD = 4,  /* the peer process is gone (consumer: and everything is drained) */
    SL_CORRUPT = 5,    /* a header or position failed validation; the ring is now unusable */
    SL_TOO_LARGE = 6,  /* record payload larger than max_record */
    SL_INVALID = 7,    /* bad argument (geometry, length, type, fd that is not a ring) */
    SL_STATE = 8,      /* call not valid now (wrong role, reservation pending, double release) */
    SL_OS = 9          /* an OS call failed: see sl_oserr */
} sl_status;

typedef enum { SL_ROLE_PRODUCER = 1, SL_ROLE_CONSUMER = 2 } sl_role;

/* Record types. 0 is invalid on purpose: zeroed or scribbled memory does not parse as a record. */
enum { SL_REC_DATA = 1, SL_REC_ERROR = 2, SL_REC_EOS = 3, SL_REC_PAD = 4 };
/* Record flags (consumer-private once published). */
enum { SL_FLAG_RELEASED = 1 };

typedef struct sl_ring sl_ring;

/* Which OS call failed and its errno, for SL_OS (and SL_INVALID from attach). */
typedef struct {
    int err;
    const char *call;
} sl_oserr;

/* A record handed to the consumer: valid until sl_ring_release(pos). */
typedef struct {
    uint64_t pos;        /* position of the record header; the release token */
    const uint8_t *data; /* 64-byte aligned payload */
    uint32_t len;
    uint16_t type;
    uint64_t seq;
} sl_record;

typedef struct {
    uint64_t capacity, max_record;
    uint64_t head, tail, read_pos;      /* read_pos: consumer's hand-out position */
    uint64_t records_written, bytes_written, producer_waits, producer_wait_ns;
    uint64_t records_read, bytes_read, consumer_waits, consumer_wait_ns;
    /* Waits that slept a whole slice although they could have gone on (a wake-up was missed
     * or came late): 0 in a healthy run. */
    uint64_t producer_missed_wakes, consumer_missed_wakes;
    int32_t producer_pid, consumer_pid;
    uint32_t producer_closed, consumer_closed;
} sl_stats;

int sl_ring_abi_version(void);
const char *sl_status_name(sl_status st);

/* Create a ring (memfd + fallocate + seal + mmap) and take `role` in it. max_record == 0 picks
 * the largest allowed (capacity/2 - 64, at most 2**32 - 64). The ring keeps the fd; see sl_ring_fd. */
sl_status sl_ring_create(uint64_t capacity, uint64_t max_record, sl_role role, sl_ring **out,
                         sl_oserr *oserr);
/* Map an existing ring from `fd` (not kept, not closed) and take `role` in it. Validates magic,
 * geometry, size and seals. SL_STATE if the role is already held by another live process. */
sl_status sl_ring_attach(int fd, sl_role role, sl_ring **out, sl_oserr *oserr);
/* A second object over the same mapping taking the other role, for two threads of one process
 * (the TSAN harness: TSAN tracks memory by address, so both threads must use one mapping). It
 * borrows the mapping: destroy it before `r`. */
sl_status sl_ring_open_peer(const sl_ring *r, sl_ring **out);
/* Unmap and free; closes the fd if this object owns one. Does not touch shared state. */
void sl_ring_destroy(sl_ring *r);
/* Mark this side closed and wake the peer. Idempotent. */
void sl_ring_close(sl_ring *r);
/* Close the owned fd (the mapping stays valid). */
void sl_ring_close_fd(sl_ring *r);

int sl_ring_fd(const sl_ring *r);
sl_role sl_ring_role(const sl_ring *r);
uint64_t sl_ring_capacity(const sl_ring *r);
uint64_t sl_ring_max_record(const sl_ring *r);
/* Tune waiting: number of spin iterations before sleeping (default 256). */
void sl_ring_set_spin(sl_ring *r, uint32_t spin);
/* Consumer: watch `pid` as the producer before it attaches (records its start time). */
sl_status sl_ring_set_producer_pid(sl_ring *r, int32_t pid);
/* Consumer: make the ring ready for a new producer process after the previous one closed or
 * died (a loader reusing its rings across epochs). Committed records never read are discarded.
 * SL_STATE if the producer is alive and open, records are still held, or this side is closed. */
sl_status sl_ring_reopen(sl_ring *r);

/* Producer. reserve never blocks: SL_AGAIN when there is no space. *buf receives n writable
 * bytes, 64-byte aligned. commit publishes len <= n bytes as one record of `type`. */
sl_status sl_ring_reserve(sl_ring *r, uint64_t n, uint8_t **buf);
sl_status sl_ring_commit(sl_ring *r, uint64_t len, uint16_t type, uint64_t seq);
sl_status sl_ring_abort(sl_ring *r);
/* Block up to timeout_ns (< 0: forever, in slices) until reserve(n) can succeed.
 * SL_OK, SL_TIMEOUT, SL_CLOSED (consumer closed), SL_PEER_DEAD, SL_CORRUPT, SL_TOO_LARGE. */
sl_status sl_ring_wait_writable(sl_ring *r, uint64_t n, int64_t timeout_ns);

/* Consumer. get never blocks: SL_AGAIN when no committed record is waiting. PAD records are
 * consumed internally and never returned. */
sl_status sl_ring_get(sl_ring *r, sl_record *out);
/* Release a record returned by get (any order). Space is reclaimed over the released prefix.
 * Safe to call from another thread while the consumer thread is inside sl_ring_wait_readable. */
sl_status sl_ring_release(sl_ring *r, uint64_t pos);
/* Block up to timeout_ns until get can return a record. SL_OK, SL_TIMEOUT, SL_CLOSED (producer
 * closed, nothing left), SL_PEER_DEAD (producer died, nothing left), SL_CORRUPT. */
sl_status sl_ring_wait_readable(sl_ring *r, int64_t timeout_ns);

void sl_ring_stats(const sl_ring *r, sl_stats *out);

/* Size in the ring of a record with a len-byte payload. */
static inline uint64_t sl_record_size(uint64_t len) {
    return (SL_PAYLOAD_OFFSET + len + (SL_ALIGN - 1)) & ~(uint64_t)(SL_ALIGN - 1);
}

#endif
