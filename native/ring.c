/* streamload ring core. Protocol, layout and ordering rules: see ring.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "ring.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <time.h>
#include <unistd.h>

/* Memory orders of the data hand-off, overridable only so the mutation tests can weaken one and
 * prove the TSAN harness notices (tests/unit/transport/test_ring_sanitizers.py). Never override in builds. */
#ifndef SL_ORDER_HEAD_STORE
#define SL_ORDER_HEAD_STORE memory_order_seq_cst
#endif
#ifndef SL_ORDER_HEAD_LOAD
#define SL_ORDER_HEAD_LOAD memory_order_acquire
#endif
#ifndef SL_ORDER_TAIL_STORE
#define SL_ORDER_TAIL_STORE memory_order_seq_cst
#endif
#ifndef SL_ORDER_TAIL_LOAD
#define SL_ORDER_TAIL_LOAD memory_order_acquire
#endif

/* Only lock-free atomics are address-free, i.e. work when the same memory is mapped at different
 * addresses in different processes. */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics must be lock-free");

#define SL_MAGIC "SLRING\0"
#define SL_LAYOUT_VERSION 2u
#define SL_DEFAULT_SPIN 256u

typedef struct {
    /* +0: written once by the creator before the fd is shared, then read-only */
    char magic[8];
    uint32_t version;
    uint32_t header_size;
    uint64_t capacity;
    uint64_t max_record;
    uint8_t pad0[32];
    /* +64: who holds each role (pid + start time in clock ticks: guards against pid reuse) */
    _Atomic(int32_t) producer_pid;
    _Atomic(int32_t) consumer_pid;
    _Atomic(uint64_t) producer_start;
    _Atomic(uint64_t) consumer_start;
    uint8_t pad1[40];
    /* +128: producer-owned; 128-byte blocks against false sharing (adjacent-line prefetch) */
    _Atomic(uint64_t) head;
    uint8_t pad2[120];
    /* +256: consumer-owned */
    _Atomic(uint64_t) tail;
    uint8_t pad3[120];
    /* +384: the consumer sleeps on data_seq */
    _Atomic(uint32_t) data_seq;
    _Atomic(uint32_t) consumer_waiting;
    uint8_t pad4[120];
    /* +512: the producer sleeps on space_seq until `space_wanted` bytes are free; it can go on
     * once `space_need` are (both written before producer_waiting is set) */
    _Atomic(uint32_t) space_seq;
    _Atomic(uint32_t) producer_waiting;
    _Atomic(uint64_t) space_need;
    _Atomic(uint64_t) space_wanted;
    uint8_t pad5[104];
    /* +640 */
    _Atomic(uint32_t) producer_closed;
    _Atomic(uint32_t) consumer_closed;
    uint8_t pad6[120];
    /* +768: the consumer's hand-out position (records in [tail, read_pos) are held by it) */
    _Atomic(uint64_t) read_pos;
    uint8_t pad7[120];
    /* +896: producer statistics (relaxed, single writer) */
    _Atomic(uint64_t) records_written, bytes_written, producer_waits, producer_wait_ns;
    _Atomic(uint64_t) producer_missed_wakes;
    uint8_t pad8[88];
    /* +1024: consumer statistics (relaxed, single writer) */
    _Atomic(uint64_t) records_read, bytes_read, consumer_waits, consumer_wait_ns;
    _Atomic(uint64_t) consumer_missed_wakes;
    uint8_t pad9[88];
    uint8_t reserved[SL_HEADER_SIZE - 1152];
} sl_header;

_Static_assert(sizeof(sl_header) == SL_HEADER_SIZE, "header is one page");
_Static_assert(offsetof(sl_header, producer_pid) == 64, "layout");
_Static_assert(offsetof(sl_header, head) == 128, "layout");
_Static_assert(offsetof(sl_header, tail) == 256, "layout");
_Static_assert(offsetof(sl_header, data_seq) == 384, "layout");
_Static_assert(offsetof(sl_header, space_seq) == 512, "layout");
_Static_assert(offsetof(sl_header, space_wanted) == 528, "layout");
_Static_assert(offsetof(sl_header, producer_closed) == 640, "layout");
_Static_assert(offsetof(sl_header, read_pos) == 768, "layout");
_Static_assert(offsetof(sl_header, records_written) == 896, "layout");
_Static_assert(offsetof(sl_header, records_read) == 1024, "layout");

typedef struct {
    uint32_t len;
    uint16_t type;
    uint16_t flags;
    uint64_t seq;
} sl_rec_hdr;
_Static_assert(sizeof(sl_rec_hdr) == 16, "record header is 16 bytes");
#define SL_FLAGS_OFFSET 6

struct sl_ring {
    sl_header *hdr;
    uint8_t *data;
    uint8_t *map;
    size_t map_size;
    int owns_map;
    int fd; /* owned, or -1 */
    sl_role role;
    uint64_t capacity, mask, max_record;
    uint32_t spin;
    /* Set once validation fails; read by a releasing thread while the consumer waits. */
    _Atomic(int) corrupt;
    /* Set by sl_ring_close, possibly from another thread while this side waits. */
    _Atomic(int) closed;
    /* producer side */
    uint64_t head, cached_tail;
    int reserved;
    uint64_t res_pos, res_n;
    /* consumer side */
    uint64_t tail, read_pos, cached_head;
    /* next time (CLOCK_MONOTONIC ns) the waiter checks the peer's liveness */
    int64_t next_liveness_ns;
};

int sl_ring_abi_version(void) { return SL_RING_ABI_VERSION; }

const char *sl_status_name(sl_status st) {
    switch (st) {
    case SL_OK: return "ok";
    case SL_AGAIN: return "again";
    case SL_TIMEOUT: return "timeout";
    case SL_CLOSED: return "closed";
    case SL_PEER_DEAD: return "peer_dead";
    case SL_CORRUPT: return "corrupt";
    case SL_TOO_LARGE: return "too_large";
    case SL_INVALID: return "invalid";
    case SL_STATE: return "state";
    case SL_OS: return "os";
    }
    return "unknown";
}

/* ---------------------------------------------------------------- OS helpers */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Shared (not FUTEX_PRIVATE) futex: the word lives in memory shared between processes.
 * Returns 1 when the whole timeout passed without a wake (for the missed-wake counters). */
static int futex_wait(_Atomic(uint32_t) *word, uint32_t expected, int64_t timeout_ns) {
    struct timespec ts = {(time_t)(timeout_ns / 1000000000ll), (long)(timeout_ns % 1000000000ll)};
    /* EAGAIN (value changed), EINTR and ETIMEDOUT all mean "re-check": no error path. */
    long rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expected, &ts, NULL, 0);
    return rc != 0 && errno == ETIMEDOUT;
}

static void futex_wake_all(_Atomic(uint32_t) *word) {
    atomic_fetch_add_explicit(word, 1, memory_order_seq_cst);
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* State letter and start time (field 22, clock ticks since boot) of a process; 0 or -errno. */
static int read_proc_stat(int32_t pid, char *state, uint64_t *start) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    int err = errno;
    close(fd);
    if (n <= 0) return n < 0 ? -err : -EIO;
    buf[n] = '\0';
    /* The command name may contain spaces and parentheses: parse after the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ') return -EIO;
    p += 2;
    *state = *p;
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p) return -EIO;
        p++;
    }
    *start = strtoull(p, NULL, 10);
    return 0;
}

static uint64_t self_start_time(void) {
    char state;
    uint64_t start = 0;
    if (read_proc_stat((int32_t)getpid(), &state, &start) != 0) return 0;
    return start;
}

/* 1 if the process may be alive, 0 if it is certainly gone (no such pid, zombie, or the pid now
 * belongs to a process started at another time). pid <= 0 means "nobody attached yet": alive. */
static int process_alive(int32_t pid, uint64_t start) {
    if (pid <= 0) return 1;
    char state;
    uint64_t actual = 0;
    int rc = read_proc_stat(pid, &state, &actual);
    if (rc == -ENOENT || rc == -ESRCH) return 0;
    if (rc < 0) return kill(pid, 0) == 0 || errno == EPERM; /* no /proc: best effort */
    if (state == 'Z' || state == 'X' || state == 'x') return 0;
    if (start != 0 && actual != start) return 0;
    return 1;
}

static int peer_alive(const sl_ring *r) {
    const sl_header *h = r->hdr;
    int producer = r->role == SL_ROLE_CONSUMER;
    const _Atomic(int32_t) *pidp = producer ? &h->producer_pid : &h->consumer_pid;
    const _Atomic(uint64_t) *startp = producer ? &h->producer_start : &h->consumer_start;
    /* pid and start are two words: if the pid changes while we read, the role is being taken
     * right now, so the peer counts as alive. */
    int32_t p1 = atomic_load_explicit(pidp, memory_order_acquire);
    uint64_t start = atomic_load_explicit(startp, memory_order_acquire);
    int32_t p2 = atomic_load_explicit(pidp, memory_order_acquire);
    if (p1 != p2) return 1;
    return process_alive(p1, start);
}

/* Rate-limited liveness check for waiters: at most once per wait slice. */
static int peer_alive_due(sl_ring *r, int64_t now) {
    if (now < r->next_liveness_ns) return 1;
    r->next_liveness_ns = now + SL_WAIT_SLICE_NS;
    return peer_alive(r);
}

static void publish_identity(sl_header *h, sl_role role, int32_t pid, uint64_t start) {
    _Atomic(int32_t) *pidp = role == SL_ROLE_PRODUCER ? &h->producer_pid : &h->consumer_pid;
    _Atomic(uint64_t) *startp = role == SL_ROLE_PRODUCER ? &h->producer_start : &h->consumer_start;
    atomic_store_explicit(pidp, 0, memory_order_seq_cst);
    atomic_store_explicit(startp, start, memory_order_seq_cst);
    atomic_store_explicit(pidp, pid, memory_order_seq_cst);
}

static sl_status take_role(sl_ring *r, sl_role role) {
    sl_header *h = r->hdr;
    int32_t me = (int32_t)getpid();
    _Atomic(int32_t) *pidp = role == SL_ROLE_PRODUCER ? &h->producer_pid : &h->consumer_pid;
    _Atomic(uint64_t) *startp = role == SL_ROLE_PRODUCER ? &h->producer_start : &h->consumer_start;
    int32_t cur = atomic_load_explicit(pidp, memory_order_acquire);
    uint64_t cur_start = atomic_load_explicit(startp, memory_order_acquire);
    uint64_t my_start = self_start_time();
    /* SPSC: a second live process in the same role would corrupt the ring. */
    if (cur > 0 && cur != me && process_alive(cur, cur_start)) return SL_STATE;
    publish_identity(h, role, me, my_start);
    return SL_OK;
}

static int valid_geometry(uint64_t capacity, uint64_t max_record) {
    if (capacity < SL_MIN_CAPACITY || capacity > SL_MAX_CAPACITY) return 0;
    if (capacity & (capacity - 1)) return 0;
    if (max_record == 0 || max_record > UINT32_MAX) return 0;
    return sl_record_size(max_record) <= capacity / 2;
}

static sl_ring *ring_new(uint8_t *map, size_t map_size, sl_role role) {
    sl_ring *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->map = map;
    r->map_size = map_size;
    r->owns_map = 1;
    r->hdr = (sl_header *)map;
    r->data = map + SL_HEADER_SIZE;
    r->fd = -1;
    r->role = role;
    r->capacity = r->hdr->capacity;
    r->mask = r->capacity - 1;
    r->max_record = r->hdr->max_record;
    r->spin = SL_DEFAULT_SPIN;
    /* Both sides start from the shared positions (a producer attaching late or after a
     * predecessor died continues after the last published record). */
    r->head = atomic_load_explicit(&r->hdr->head, memory_order_acquire);
    r->cached_tail = atomic_load_explicit(&r->hdr->tail, memory_order_acquire);
    r->tail = r->cached_tail;
    /* A consumer starts at tail: the ring has one consumer for its whole life, so nothing is
     * held at this point. */
    r->read_pos = r->tail;
    r->cached_head = r->read_pos;
    return r;
}

static sl_status os_fail(sl_oserr *oserr, const char *call) {
    if (oserr) {
        oserr->err = errno;
        oserr->call = call;
    }
    return SL_OS;
}

/* ---------------------------------------------------------------- lifecycle */

sl_status sl_ring_create(uint64_t capacity, uint64_t max_record, sl_role role, sl_ring **out,
                         sl_oserr *oserr) {
    *out = NULL;
    if (role != SL_ROLE_PRODUCER && role != SL_ROLE_CONSUMER) return SL_INVALID;
    if (max_record == 0 && capacity >= SL_MIN_CAPACITY) {
        /* Largest allowed; the header's u32 len caps it at 4 GiB - 64. */
        max_record = capacity / 2 - SL_PAYLOAD_OFFSET;
        if (max_record > UINT32_MAX - (SL_ALIGN - 1)) max_record = UINT32_MAX - (SL_ALIGN - 1);
    }
    if (!valid_geometry(capacity, max_record)) return SL_INVALID;
    size_t size = (size_t)(SL_HEADER_SIZE + capacity);
    /* memfd is not bounded by a tmpfs size: fallocate of more than the machine has would push it
     * into reclaim/OOM before failing. Refuse what can never fit; cgroup limits fail fallocate. */
    struct sysinfo si;
    if (sysinfo(&si) == 0 && (uint64_t)size / si.mem_unit > (uint64_t)si.totalram) {
        errno = ENOMEM;
        return os_fail(oserr, "sysinfo (larger than physical memory)");
    }

    int fd = memfd_create("streamload-ring", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return os_fail(oserr, "memfd_create");
    if (ftruncate(fd, (off_t)size) != 0) {
        sl_status st = os_fail(oserr, "ftruncate");
        close(fd);
        return st;
    }
    /* Commit the pages now: out of memory becomes an error here, not a SIGBUS on first write. */
    if (fallocate(fd, 0, 0, (off_t)size) != 0) {
        sl_status st = os_fail(oserr, "fallocate");
        close(fd);
        return st;
    }
    /* Nobody may truncate the ring under a peer (a truncated mapping SIGBUSes the reader). */
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        sl_status st = os_fail(oserr, "fcntl(F_ADD_SEALS)");
        close(fd);
        return st;
    }
    void *map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (map == MAP_FAILED) {
        sl_status st = os_fail(oserr, "mmap");
        close(fd);
        return st;
    }
    sl_header *h = map;
    /* The memfd is zero-filled: only the immutable fields need writing. */
    memcpy(h->magic, SL_MAGIC, 8);
    h->version = SL_LAYOUT_VERSION;
    h->header_size = SL_HEADER_SIZE;
    h->capacity = capacity;
    h->max_record = max_record;

    sl_ring *r = ring_new(map, size, role);
    if (!r) {
        munmap(map, size);
        close(fd);
        errno = ENOMEM;
        return os_fail(oserr, "malloc");
    }
    r->fd = fd;
    take_role(r, role); /* fresh ring: nobody else holds the role */
    *out = r;
    return SL_OK;
}

sl_status sl_ring_attach(int fd, sl_role role, sl_ring **out, sl_oserr *oserr) {
    *out = NULL;
    if (role != SL_ROLE_PRODUCER && role != SL_ROLE_CONSUMER) return SL_INVALID;
    struct stat st;
    if (fstat(fd, &st) != 0) return os_fail(oserr, "fstat");
    if (st.st_size < (off_t)(SL_HEADER_SIZE + SL_MIN_CAPACITY)) {
        if (oserr) *oserr = (sl_oserr){0, "size"};
        return SL_INVALID;
    }
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW)) {
        if (oserr) *oserr = (sl_oserr){0, "seals"};
        return SL_INVALID;
    }
    size_t size = (size_t)st.st_size;
    void *map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (map == MAP_FAILED) return os_fail(oserr, "mmap");
    sl_header *h = map;
    if (memcmp(h->magic, SL_MAGIC, 8) != 0 || h->version != SL_LAYOUT_VERSION ||
        h->header_size != SL_HEADER_SIZE || !valid_geometry(h->capacity, h->max_record) ||
        SL_HEADER_SIZE + h->capacity != (uint64_t)size) {
        munmap(map, size);
        if (oserr) *oserr = (sl_oserr){0, "header"};
        return SL_INVALID;
    }
    sl_ring *r = ring_new(map, size, role);
    if (!r) {
        munmap(map, size);
        errno = ENOMEM;
        return os_fail(oserr, "malloc");
    }
    sl_status rc = take_role(r, role);
    if (rc != SL_OK) {
        sl_ring_destroy(r);
        return rc;
    }
    *out = r;
    return SL_OK;
}

sl_status sl_ring_open_peer(const sl_ring *r, sl_ring **out) {
    *out = NULL;
    sl_role role = r->role == SL_ROLE_PRODUCER ? SL_ROLE_CONSUMER : SL_ROLE_PRODUCER;
    sl_ring *p = ring_new(r->map, r->map_size, role);
    if (!p) return SL_OS;
    p->owns_map = 0;
    take_role(p, role);
    *out = p;
    return SL_OK;
}

void sl_ring_destroy(sl_ring *r) {
    if (!r) return;
    if (r->owns_map && r->map) munmap(r->map, r->map_size);
    if (r->fd >= 0) close(r->fd);
    free(r);
}

void sl_ring_close(sl_ring *r) {
    if (atomic_exchange_explicit(&r->closed, 1, memory_order_relaxed)) return;
    sl_header *h = r->hdr;
    if (r->role == SL_ROLE_PRODUCER) {
        atomic_store_explicit(&h->producer_closed, 1, memory_order_seq_cst);
        futex_wake_all(&h->data_seq);
    } else {
        atomic_store_explicit(&h->consumer_closed, 1, memory_order_seq_cst);
        futex_wake_all(&h->space_seq);
    }
}

void sl_ring_close_fd(sl_ring *r) {
    if (r->fd >= 0) close(r->fd);
    r->fd = -1;
}

int sl_ring_fd(const sl_ring *r) { return r->fd; }
sl_role sl_ring_role(const sl_ring *r) { return r->role; }
uint64_t sl_ring_capacity(const sl_ring *r) { return r->capacity; }
uint64_t sl_ring_max_record(const sl_ring *r) { return r->max_record; }
void sl_ring_set_spin(sl_ring *r, uint32_t spin) { r->spin = spin; }

sl_status sl_ring_set_producer_pid(sl_ring *r, int32_t pid) {
    if (r->role != SL_ROLE_CONSUMER) return SL_STATE;
    if (pid <= 0) return SL_INVALID;
    char state;
    uint64_t start = 0;
    if (read_proc_stat(pid, &state, &start) != 0) start = 0;
    publish_identity(r->hdr, SL_ROLE_PRODUCER, pid, start);
    return SL_OK;
}

static int is_closed(const sl_ring *r) {
    return atomic_load_explicit(&r->closed, memory_order_relaxed);
}

static sl_status mark_corrupt(sl_ring *r) {
    atomic_store_explicit(&r->corrupt, 1, memory_order_relaxed);
    return SL_CORRUPT;
}

static int is_corrupt(const sl_ring *r) {
    return atomic_load_explicit(&r->corrupt, memory_order_relaxed);
}

static void bump(_Atomic(uint64_t) *counter, uint64_t by) {
    /* Single writer: a relaxed load+store is enough and avoids a locked RMW. */
    atomic_store_explicit(counter, atomic_load_explicit(counter, memory_order_relaxed) + by,
                          memory_order_relaxed);
}

/* ---------------------------------------------------------------- producer */

/* Bytes of free space a record of n payload bytes needs at the current head (pad included). */
static uint64_t space_needed(const sl_ring *r, uint64_t n) {
    uint64_t need = sl_record_size(n);
    uint64_t idx = r->head & r->mask;
    return idx + need > r->capacity ? (r->capacity - idx) + need : need;
}

/* Validate a tail read from shared memory against our head. */
static int tail_ok(const sl_ring *r, uint64_t tail) {
    return r->head - tail <= r->capacity && (tail & (SL_ALIGN - 1)) == 0;
}

sl_status sl_ring_reserve(sl_ring *r, uint64_t n, uint8_t **buf) {
    if (r->role != SL_ROLE_PRODUCER || is_closed(r) || r->reserved) return SL_STATE;
    if (is_corrupt(r)) return SL_CORRUPT;
    if (n > r->max_record) return SL_TOO_LARGE;
    sl_header *h = r->hdr;
    if (atomic_load_explicit(&h->consumer_closed, memory_order_acquire)) return SL_CLOSED;
    uint64_t total = space_needed(r, n);
    if (r->capacity - (r->head - r->cached_tail) < total) {
        uint64_t t = atomic_load_explicit(&h->tail, SL_ORDER_TAIL_LOAD);
        if (!tail_ok(r, t)) return mark_corrupt(r);
        r->cached_tail = t;
        if (r->capacity - (r->head - t) < total) return SL_AGAIN;
    }
    uint64_t need = sl_record_size(n);
    uint64_t idx = r->head & r->mask;
    uint64_t rec_pos = r->head;
    if (idx + need > r->capacity) {
        /* Pad to the end; it becomes visible together with the record (one head store). */
        uint64_t pad = r->capacity - idx;
        sl_rec_hdr ph = {(uint32_t)(pad - SL_PAYLOAD_OFFSET), SL_REC_PAD, 0, 0};
        memcpy(r->data + idx, &ph, sizeof ph);
        rec_pos += pad;
    }
    r->reserved = 1;
    r->res_pos = rec_pos;
    r->res_n = n;
    *buf = r->data + (rec_pos & r->mask) + SL_PAYLOAD_OFFSET;
    return SL_OK;
}

sl_status sl_ring_commit(sl_ring *r, uint64_t len, uint16_t type, uint64_t seq) {
    if (r->role != SL_ROLE_PRODUCER || !r->reserved) return SL_STATE;
    if (len > r->res_n) return SL_INVALID;
    if (type != SL_REC_DATA && type != SL_REC_ERROR && type != SL_REC_EOS) return SL_INVALID;
    sl_header *h = r->hdr;
    sl_rec_hdr rh = {(uint32_t)len, type, 0, seq};
    memcpy(r->data + (r->res_pos & r->mask), &rh, sizeof rh);
    uint64_t new_head = r->res_pos + sl_record_size(len);
    r->reserved = 0;
    r->head = new_head;
    /* Publish (release for the data; seq_cst as the waker's half of the Dekker handshake). */
    atomic_store_explicit(&h->head, new_head, SL_ORDER_HEAD_STORE);
    bump(&h->records_written, 1);
    bump(&h->bytes_written, len);
    if (atomic_load_explicit(&h->consumer_waiting, memory_order_seq_cst)) futex_wake_all(&h->data_seq);
    return SL_OK;
}

sl_status sl_ring_abort(sl_ring *r) {
    if (r->role != SL_ROLE_PRODUCER || !r->reserved) return SL_STATE;
    /* Nothing was published: a pad header written by reserve is beyond head and ignored. */
    r->reserved = 0;
    return SL_OK;
}

sl_status sl_ring_wait_writable(sl_ring *r, uint64_t n, int64_t timeout_ns) {
    if (r->role != SL_ROLE_PRODUCER || is_closed(r) || r->reserved) return SL_STATE;
    if (is_corrupt(r)) return SL_CORRUPT;
    if (n > r->max_record) return SL_TOO_LARGE;
    sl_header *h = r->hdr;
    uint64_t total = space_needed(r, n);
    uint64_t t = atomic_load_explicit(&h->tail, SL_ORDER_TAIL_LOAD);
    for (uint32_t i = 0;; i++) {
        if (!tail_ok(r, t)) return mark_corrupt(r);
        if (r->capacity - (r->head - t) >= total) {
            r->cached_tail = t;
            return SL_OK;
        }
        if (atomic_load_explicit(&h->consumer_closed, memory_order_acquire)) return SL_CLOSED;
        if (timeout_ns == 0 || i >= r->spin) break;
        cpu_relax();
        t = atomic_load_explicit(&h->tail, SL_ORDER_TAIL_LOAD);
    }
    int64_t start = now_ns();
    int64_t deadline = timeout_ns < 0 ? INT64_MAX : start + timeout_ns;
    int slept = 0, timed_out = 0;
    sl_status st;
    /* Wake-up hysteresis: ask to be woken only once half the ring is free (or the consumer
     * runs dry), so a consumer-bound ring costs one wake per half ring, not one per record. */
    uint64_t wanted = total > r->capacity / 2 ? total : r->capacity / 2;
    atomic_store_explicit(&h->space_need, total, memory_order_relaxed);
    atomic_store_explicit(&h->space_wanted, wanted, memory_order_relaxed);
    for (;;) {
        uint32_t seq = atomic_load_explicit(&h->space_seq, memory_order_acquire);
        /* seq_cst: also publishes space_need/space_wanted to a consumer that sees waiting=1 */
        atomic_store_explicit(&h->producer_waiting, 1, memory_order_seq_cst);
        t = atomic_load_explicit(&h->tail, memory_order_seq_cst);
        if (!tail_ok(r, t)) {
            st = mark_corrupt(r);
            break;
        }
        if (r->capacity - (r->head - t) >= total) {
            r->cached_tail = t;
            if (timed_out) bump(&h->producer_missed_wakes, 1);
            st = SL_OK;
            break;
        }
        if (atomic_load_explicit(&h->consumer_closed, memory_order_seq_cst)) {
            st = SL_CLOSED;
            break;
        }
        int64_t now = now_ns();
        if (!peer_alive_due(r, now)) {
            st = SL_PEER_DEAD;
            break;
        }
        if (now >= deadline) {
            st = SL_TIMEOUT;
            break;
        }
        int64_t slice = deadline - now < SL_WAIT_SLICE_NS ? deadline - now : SL_WAIT_SLICE_NS;
        timed_out = futex_wait(&h->space_seq, seq, slice);
        slept = 1;
    }
    atomic_store_explicit(&h->producer_waiting, 0, memory_order_relaxed);
    if (slept) {
        bump(&h->producer_waits, 1);
        bump(&h->producer_wait_ns, (uint64_t)(now_ns() - start));
    }
    return st;
}

/* ---------------------------------------------------------------- consumer */

/* Wake a sleeping producer if as much space is free as it asked for: `space_wanted` (half the
 * ring) after a release, but only `space_need` (its next record) when the consumer is about to
 * wait itself, holding records or drained, so the producer never sleeps out a slice while it
 * could work. Runs after the seq_cst store of tail (the waker's half of the Dekker handshake);
 * the seq_cst load of producer_waiting acquires the need/wanted values stored before it. */
static void wake_producer(sl_ring *r, int consumer_waits) {
    sl_header *h = r->hdr;
    if (!atomic_load_explicit(&h->producer_waiting, memory_order_seq_cst)) return;
    uint64_t want = atomic_load_explicit(consumer_waits ? &h->space_need : &h->space_wanted,
                                         memory_order_relaxed);
    uint64_t used = atomic_load_explicit(&h->head, memory_order_acquire) - r->tail;
    if (used > r->capacity || r->capacity - used >= want) futex_wake_all(&h->space_seq);
}

/* Advance tail over the released prefix of [tail, read_pos) and wake a sleeping producer. */
static sl_status advance_tail(sl_ring *r) {
    uint64_t t = r->tail;
    while (t != r->read_pos) {
        const uint8_t *p = r->data + (t & r->mask);
        sl_rec_hdr rh;
        memcpy(&rh, p, sizeof rh);
        if (!(rh.flags & SL_FLAG_RELEASED)) break;
        uint64_t size = sl_record_size(rh.len);
        if (size > r->read_pos - t) return mark_corrupt(r); /* scribbled after validation */
        t += size;
    }
    if (t == r->tail) return SL_OK;
    r->tail = t;
    sl_header *h = r->hdr;
    atomic_store_explicit(&h->tail, t, SL_ORDER_TAIL_STORE);
    wake_producer(r, 0);
    return SL_OK;
}

sl_status sl_ring_reopen(sl_ring *r) {
    if (r->role != SL_ROLE_CONSUMER || is_closed(r)) return SL_STATE;
    if (is_corrupt(r)) return SL_CORRUPT;
    sl_header *h = r->hdr;
    /* The previous producer must be finished for good: closed, or dead (never attached counts
     * as dead: pid 0). A live, open producer could still publish into what we discard. */
    if (!atomic_load_explicit(&h->producer_closed, memory_order_seq_cst) && peer_alive(r))
        return SL_STATE;
    if (r->tail != r->read_pos) return SL_STATE; /* records still held (zero-copy views) */
    uint64_t hd = atomic_load_explicit(&h->head, memory_order_seq_cst);
    if (hd - r->tail > r->capacity || (hd & (SL_ALIGN - 1))) return mark_corrupt(r);
    /* Discard what was committed but never read, then let the next producer in. */
    r->tail = r->read_pos = r->cached_head = hd;
    atomic_store_explicit(&h->read_pos, hd, memory_order_relaxed);
    atomic_store_explicit(&h->tail, hd, memory_order_seq_cst);
    atomic_store_explicit(&h->producer_waiting, 0, memory_order_seq_cst);
    publish_identity(h, SL_ROLE_PRODUCER, 0, 0);
    atomic_store_explicit(&h->producer_closed, 0, memory_order_seq_cst);
    return SL_OK;
}

static void set_released(sl_ring *r, uint64_t pos) {
    uint16_t *flags = (uint16_t *)(r->data + (pos & r->mask) + SL_FLAGS_OFFSET);
    *flags = (uint16_t)(*flags | SL_FLAG_RELEASED);
}

sl_status sl_ring_get(sl_ring *r, sl_record *out) {
    if (r->role != SL_ROLE_CONSUMER || is_closed(r)) return SL_STATE;
    if (is_corrupt(r)) return SL_CORRUPT;
    sl_header *h = r->hdr;
    for (;;) {
        if (r->read_pos == r->cached_head) {
            uint64_t hd = atomic_load_explicit(&h->head, SL_ORDER_HEAD_LOAD);
            /* head must lie in [read_pos, tail + capacity] and be aligned. */
            if (hd - r->tail > r->capacity || hd - r->read_pos > hd - r->tail ||
                (hd & (SL_ALIGN - 1)))
                return mark_corrupt(r);
            r->cached_head = hd;
            if (hd == r->read_pos) return SL_AGAIN;
        }
        uint64_t pos = r->read_pos;
        uint64_t idx = pos & r->mask;
        sl_rec_hdr rh; /* one copy, then validate the copy: no double fetch from shared memory */
        memcpy(&rh, r->data + idx, sizeof rh);
        uint64_t size = sl_record_size(rh.len);
        if (rh.flags != 0) return mark_corrupt(r);
        if (rh.type == SL_REC_PAD) {
            if (size != r->capacity - idx) return mark_corrupt(r);
        } else if (rh.type == SL_REC_DATA || rh.type == SL_REC_ERROR || rh.type == SL_REC_EOS) {
            if (rh.len > r->max_record || idx + size > r->capacity) return mark_corrupt(r);
        } else {
            return mark_corrupt(r);
        }
        if (size > r->cached_head - pos) return mark_corrupt(r);
        r->read_pos = pos + size;
        atomic_store_explicit(&h->read_pos, r->read_pos, memory_order_relaxed);
        if (rh.type == SL_REC_PAD) {
            set_released(r, pos);
            sl_status st = advance_tail(r);
            if (st != SL_OK) return st;
            continue;
        }
        out->pos = pos;
        out->data = r->data + idx + SL_PAYLOAD_OFFSET;
        out->len = rh.len;
        out->type = rh.type;
        out->seq = rh.seq;
        bump(&h->records_read, 1);
        bump(&h->bytes_read, rh.len);
        return SL_OK;
    }
}

sl_status sl_ring_release(sl_ring *r, uint64_t pos) {
    if (r->role != SL_ROLE_CONSUMER) return SL_STATE;
    if (is_corrupt(r)) return SL_CORRUPT;
    if (pos - r->tail >= r->read_pos - r->tail || (pos & (SL_ALIGN - 1))) return SL_INVALID;
    const uint8_t *p = r->data + (pos & r->mask);
    uint16_t flags;
    memcpy(&flags, p + SL_FLAGS_OFFSET, sizeof flags);
    if (flags & SL_FLAG_RELEASED) return SL_STATE;
    set_released(r, pos);
    return advance_tail(r);
}

sl_status sl_ring_wait_readable(sl_ring *r, int64_t timeout_ns) {
    if (r->role != SL_ROLE_CONSUMER || is_closed(r)) return SL_STATE;
    if (is_corrupt(r)) return SL_CORRUPT;
    sl_header *h = r->hdr;
    for (uint32_t i = 0;; i++) {
        if (atomic_load_explicit(&h->head, SL_ORDER_HEAD_LOAD) != r->read_pos) return SL_OK;
        if (timeout_ns == 0 || i >= r->spin) break;
        cpu_relax();
    }
    int64_t start = now_ns();
    int64_t deadline = timeout_ns < 0 ? INT64_MAX : start + timeout_ns;
    int slept = 0, timed_out = 0;
    sl_status st;
    for (;;) {
        uint32_t seq = atomic_load_explicit(&h->data_seq, memory_order_acquire);
        atomic_store_explicit(&h->consumer_waiting, 1, memory_order_seq_cst);
        if (atomic_load_explicit(&h->head, memory_order_seq_cst) != r->read_pos) {
            if (timed_out) bump(&h->consumer_missed_wakes, 1);
            st = SL_OK;
            break;
        }
        wake_producer(r, 1); /* about to sleep: a producer that can go on must not wait for us */
        /* Closed or dead: records committed before that are still delivered (drain first). */
        if (atomic_load_explicit(&h->producer_closed, memory_order_seq_cst)) {
            st = atomic_load_explicit(&h->head, memory_order_seq_cst) != r->read_pos ? SL_OK
                                                                                     : SL_CLOSED;
            break;
        }
        int64_t now = now_ns();
        if (!peer_alive_due(r, now)) {
            st = atomic_load_explicit(&h->head, memory_order_seq_cst) != r->read_pos
                     ? SL_OK
                     : SL_PEER_DEAD;
            break;
        }
        if (now >= deadline) {
            st = SL_TIMEOUT;
            break;
        }
        int64_t slice = deadline - now < SL_WAIT_SLICE_NS ? deadline - now : SL_WAIT_SLICE_NS;
        timed_out = futex_wait(&h->data_seq, seq, slice);
        slept = 1;
    }
    atomic_store_explicit(&h->consumer_waiting, 0, memory_order_relaxed);
    if (slept) {
        bump(&h->consumer_waits, 1);
        bump(&h->consumer_wait_ns, (uint64_t)(now_ns() - start));
    }
    return st;
}

/* ---------------------------------------------------------------- stats */

void sl_ring_stats(const sl_ring *r, sl_stats *out) {
    const sl_header *h = r->hdr;
#define LD(f) atomic_load_explicit(&h->f, memory_order_relaxed)
    out->capacity = r->capacity;
    out->max_record = r->max_record;
    out->head = LD(head);
    out->tail = LD(tail);
    out->read_pos = LD(read_pos);
    out->records_written = LD(records_written);
    out->bytes_written = LD(bytes_written);
    out->producer_waits = LD(producer_waits);
    out->producer_wait_ns = LD(producer_wait_ns);
    out->producer_missed_wakes = LD(producer_missed_wakes);
    out->consumer_missed_wakes = LD(consumer_missed_wakes);
    out->records_read = LD(records_read);
    out->bytes_read = LD(bytes_read);
    out->consumer_waits = LD(consumer_waits);
    out->consumer_wait_ns = LD(consumer_wait_ns);
    out->producer_pid = LD(producer_pid);
    out->consumer_pid = LD(consumer_pid);
    out->producer_closed = LD(producer_closed);
    out->consumer_closed = LD(consumer_closed);
#undef LD
}
