/* streamload.transport._ring: thin CPython binding over the ring core (ring.h).
 *
 * Types: RingCore (one side of a ring in this process; subclassed by streamload.transport.ring.Ring),
 * Record (a consumed record: read-only buffer with an export count, released explicitly, by
 * `with`, or when the last reference and export are gone), Reservation (writable space from
 * reserve(): commit or abort).
 *
 * Invariants kept here:
 * - every core status becomes a Python exception in raise_status(), using the classes that
 *   streamload.transport.ring registers with _set_error_classes(); nothing else builds ring errors;
 * - the GIL is released around every wait (in <= 100 ms slices, checking signals between them)
 *   and around large copies; a `busy` flag rejects a second thread entering a blocking call;
 * - a Record or Reservation holds a reference to its RingCore, so the mapping outlives them;
 * - shared state (closed flags) is only touched by the process that created/attached the object:
 *   an object inherited across fork() never closes the parent's side.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ring.h"

#define SL_PYERR (-1)
/* Longest time between PyErr_CheckSignals() calls while blocked. */
#define SIGNAL_SLICE_NS 100000000ll
/* Copies at least this large run without the GIL. */
#define NOGIL_COPY_BYTES (256 * 1024)

static PyObject *error_classes; /* dict: kind -> exception class (set by streamload.transport.ring) */

typedef struct {
    PyObject_HEAD
    sl_ring *ring;
    pid_t owner_pid;
    int closed;
    int busy;
    Py_ssize_t outstanding; /* Records handed out and not yet released */
    uint64_t next_seq;
    PyObject *weakrefs;
} RingObject;

typedef struct {
    PyObject_HEAD
    RingObject *ring;
    uint64_t pos;
    const uint8_t *data;
    Py_ssize_t len;
    uint16_t type;
    uint64_t seq;
    Py_ssize_t exports;
    int released;
    int release_pending; /* release(deferred=True) with live exports: release at the last one */
    int allow_write;     /* transient: set by view(writable=True) around one getbuffer */
} RecordObject;

typedef struct {
    PyObject_HEAD
    RingObject *ring;
    uint8_t *buf;
    Py_ssize_t len;
    Py_ssize_t exports;
    int done;
} ReservationObject;

static PyTypeObject RingType, RecordType, ReservationType;

/* ------------------------------------------------------------------ errors (the one place) */

static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

/* Raise the exception registered for `kind` with a formatted message; `attrs` (a dict, may be
 * NULL, stolen) become attributes of the exception instance. Always returns NULL. */
static PyObject *raise_kind(const char *kind, PyObject *attrs, const char *fmt, ...) {
    PyObject *cls = error_classes ? PyDict_GetItemString(error_classes, kind) : NULL;
    if (!cls) cls = PyExc_RuntimeError;
    va_list va;
    va_start(va, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, va);
    va_end(va);
    if (!msg) {
        Py_XDECREF(attrs);
        return NULL;
    }
    PyObject *exc = PyObject_CallOneArg(cls, msg);
    Py_DECREF(msg);
    if (!exc) {
        Py_XDECREF(attrs);
        return NULL;
    }
    PyObject *key, *value;
    Py_ssize_t i = 0;
    while (attrs && PyDict_Next(attrs, &i, &key, &value)) {
        if (PyObject_SetAttr(exc, key, value) < 0) PyErr_Clear();
    }
    Py_XDECREF(attrs);
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return NULL;
}

static uint64_t next_pow2(uint64_t v) {
    uint64_t p = 1;
    while (p < v) p <<= 1;
    return p;
}

typedef struct {
    double timeout;  /* seconds, < 0: none */
    uint64_t nbytes; /* record size involved, if any */
    const char *what;
} err_ctx;

static PyObject *raise_status(RingObject *self, sl_status st, err_ctx ctx) {
    int consumer = self->ring && sl_ring_role(self->ring) == SL_ROLE_CONSUMER;
    sl_stats s;
    memset(&s, 0, sizeof s);
    if (self->ring) sl_ring_stats(self->ring, &s);
    switch (st) {
    case SL_OK:
    case SL_AGAIN:
        break;
    case SL_TIMEOUT:
        if (consumer)
            return raise_kind("timeout", NULL, "no record arrived within %lld ms",
                              (long long)(ctx.timeout * 1e3));
        return raise_kind("timeout", NULL,
                          "no space for a %llu-byte record within %lld ms (ring capacity %llu, "
                          "%llu bytes not yet released by the consumer)",
                          (unsigned long long)ctx.nbytes, (long long)(ctx.timeout * 1e3),
                          (unsigned long long)s.capacity, (unsigned long long)(s.head - s.tail));
    case SL_CLOSED:
        if (consumer)
            return raise_kind("closed", NULL,
                              "the producer closed the ring and every record was consumed");
        return raise_kind("closed", NULL, "the consumer closed the ring");
    case SL_PEER_DEAD:
        if (consumer)
            return raise_kind("producer_died", Py_BuildValue("{s:i}", "pid", (int)s.producer_pid),
                              "producer process %d died (every record it committed was delivered)",
                              (int)s.producer_pid);
        return raise_kind("consumer_died", Py_BuildValue("{s:i}", "pid", (int)s.consumer_pid),
                          "consumer process %d died", (int)s.consumer_pid);
    case SL_CORRUPT:
        return raise_kind("corrupted", NULL,
                          "ring failed validation (head=%llu tail=%llu read_pos=%llu capacity=%llu):"
                          " a record header or position is corrupt; the ring is unusable",
                          (unsigned long long)s.head, (unsigned long long)s.tail,
                          (unsigned long long)s.read_pos, (unsigned long long)s.capacity);
    case SL_TOO_LARGE: {
        uint64_t need = next_pow2(2 * sl_record_size(ctx.nbytes));
        PyObject *attrs = Py_BuildValue("{s:K,s:K,s:K,s:K}", "nbytes",
                                        (unsigned long long)ctx.nbytes, "max_record",
                                        (unsigned long long)s.max_record, "capacity",
                                        (unsigned long long)s.capacity, "required_capacity",
                                        (unsigned long long)need);
        return raise_kind("too_large", attrs,
                          "record of %llu bytes exceeds max_record=%llu of this ring: raise "
                          "ring_size (currently %llu bytes) to at least %llu",
                          (unsigned long long)ctx.nbytes, (unsigned long long)s.max_record,
                          (unsigned long long)s.capacity, (unsigned long long)need);
    }
    case SL_INVALID:
        return raise_kind("invalid", NULL, "%s", ctx.what ? ctx.what : "invalid argument");
    case SL_STATE:
        return raise_kind("state", NULL, "%s", ctx.what ? ctx.what : "call not valid now");
    case SL_OS:
        return raise_kind("os", Py_BuildValue("{s:i}", "errno", errno), "%s: %s",
                          ctx.what ? ctx.what : "OS error", strerror(errno));
    }
    return raise_kind("state", NULL, "unexpected ring status %d", (int)st);
}

/* Raise for a status from a call with no extra context. */
static PyObject *raise_simple(RingObject *self, sl_status st, const char *what) {
    err_ctx ctx = {-1.0, 0, what};
    return raise_status(self, st, ctx);
}

/* ------------------------------------------------------------------ shared helpers */

static int parse_timeout(PyObject *obj, double *out) {
    if (obj == NULL || obj == Py_None) {
        *out = -1.0;
        return 0;
    }
    double t = PyFloat_AsDouble(obj);
    if (t == -1.0 && PyErr_Occurred()) return -1;
    if (!(t >= 0.0)) { /* also rejects NaN */
        raise_kind("invalid", NULL, "timeout must be None or >= 0 seconds, got %R", obj);
        return -1;
    }
    *out = t;
    return 0;
}

/* The object must be open, owned by this process and not in use by another thread. */
static int check_usable(RingObject *self, sl_role role) {
    if (!self->ring || self->closed)
        return raise_kind("state", NULL, "this ring object is closed"), -1;
    if (self->owner_pid != getpid())
        return raise_kind("state", NULL,
                          "this ring object belongs to process %d (inherited across fork); "
                          "attach a handle in process %d instead",
                          (int)self->owner_pid, (int)getpid()),
               -1;
    if (sl_ring_role(self->ring) != role)
        return raise_kind("state", NULL, "this ring object is the %s; the call needs the %s",
                          role == SL_ROLE_PRODUCER ? "consumer" : "producer",
                          role == SL_ROLE_PRODUCER ? "producer" : "consumer"),
               -1;
    if (self->busy)
        return raise_kind("state", NULL,
                          "ring is already in a blocking call in another thread (one thread per "
                          "side)"),
               -1;
    return 0;
}

/* Wait (GIL released, in slices) until the ring is readable / has room for n bytes. Returns a
 * core status, or SL_PYERR when a signal handler raised (e.g. KeyboardInterrupt). */
static int wait_loop(RingObject *self, int writable, uint64_t n, double timeout) {
    int64_t deadline = timeout < 0 ? -1 : mono_ns() + (int64_t)(timeout * 1e9);
    self->busy = 1;
    int result;
    for (;;) {
        int64_t slice = SIGNAL_SLICE_NS;
        if (deadline >= 0) {
            int64_t rem = deadline - mono_ns();
            if (rem < 0) rem = 0;
            if (rem < slice) slice = rem;
        }
        sl_status st;
        if (slice == 0) { /* a poll: not worth dropping the GIL */
            st = writable ? sl_ring_wait_writable(self->ring, n, 0) : sl_ring_wait_readable(self->ring, 0);
        } else {
            Py_BEGIN_ALLOW_THREADS
            st = writable ? sl_ring_wait_writable(self->ring, n, slice)
                          : sl_ring_wait_readable(self->ring, slice);
            Py_END_ALLOW_THREADS
        }
        if (st != SL_TIMEOUT) {
            result = st;
            break;
        }
        if (deadline >= 0 && mono_ns() >= deadline) {
            result = SL_TIMEOUT;
            break;
        }
        if (PyErr_CheckSignals() < 0) {
            result = SL_PYERR;
            break;
        }
        if (self->closed) { /* closed from another thread while we slept */
            result = SL_STATE;
            break;
        }
    }
    self->busy = 0;
    return result;
}

/* Reserve n bytes, waiting as allowed. On success *buf is set. NULL-returning error convention:
 * returns -1 with an exception set. */
static int reserve_blocking(RingObject *self, uint64_t n, double timeout, uint8_t **buf) {
    for (;;) {
        sl_status st = sl_ring_reserve(self->ring, n, buf);
        if (st == SL_OK) return 0;
        if (st == SL_AGAIN) {
            int w = wait_loop(self, 1, n, timeout);
            if (w == SL_OK) continue;
            if (w == SL_PYERR) return -1;
            st = (sl_status)w;
        }
        err_ctx ctx = {timeout, n,
                       st == SL_STATE ? "cannot reserve: a reservation is already pending "
                                        "(commit or abort it first) or the ring is closed"
                                      : NULL};
        raise_status(self, st, ctx);
        return -1;
    }
}

static int parse_type(int type) {
    if (type != SL_REC_DATA && type != SL_REC_ERROR && type != SL_REC_EOS) {
        raise_kind("invalid", NULL, "record type must be DATA (1), ERROR (2) or EOS (3), got %d", type);
        return -1;
    }
    return 0;
}

static int parse_seq(RingObject *self, PyObject *seq_obj, uint64_t *seq) {
    if (seq_obj == NULL || seq_obj == Py_None) {
        *seq = self->next_seq;
        return 0;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(seq_obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    *seq = v;
    return 0;
}

/* ------------------------------------------------------------------ RingCore */

static PyObject *Ring_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"role", "capacity", "max_record", "fd", NULL};
    int role;
    unsigned long long capacity = 0, max_record = 0;
    int fd = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|KKi:RingCore", kwlist, &role, &capacity,
                                     &max_record, &fd))
        return NULL;
    if (role != SL_ROLE_PRODUCER && role != SL_ROLE_CONSUMER)
        return raise_kind("invalid", NULL, "role must be PRODUCER (1) or CONSUMER (2), got %d", role);
    RingObject *self = (RingObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->owner_pid = getpid();
    sl_oserr oserr = {0, NULL};
    sl_status st;
    Py_BEGIN_ALLOW_THREADS /* MAP_POPULATE of a large ring takes a while */
    st = fd < 0 ? sl_ring_create(capacity, max_record, (sl_role)role, &self->ring, &oserr)
                : sl_ring_attach(fd, (sl_role)role, &self->ring, &oserr);
    Py_END_ALLOW_THREADS
    if (st == SL_OK) return (PyObject *)self;
    Py_DECREF(self);
    if (st == SL_OS) {
        errno = oserr.err;
        unsigned long long size = SL_HEADER_SIZE + capacity;
        if (fd < 0)
            return raise_kind("os", Py_BuildValue("{s:i,s:K}", "errno", oserr.err, "size", size),
                              "cannot allocate a %llu-byte shared-memory ring (%s failed: %s); "
                              "lower ring_size or num_workers, or raise the memory limit "
                              "(cgroup) of this process",
                              size, oserr.call, strerror(oserr.err));
        return raise_kind("os", Py_BuildValue("{s:i}", "errno", oserr.err),
                          "cannot map ring from fd %d (%s failed: %s)", fd, oserr.call,
                          strerror(oserr.err));
    }
    if (st == SL_INVALID && fd < 0)
        return raise_kind("invalid", NULL,
                          "invalid ring geometry capacity=%llu max_record=%llu: capacity must be a "
                          "power of two in [%u, 2**40] and max_record in [1, min(capacity/2 - %u, 2**32 - 64)]",
                          capacity, max_record, SL_MIN_CAPACITY, SL_PAYLOAD_OFFSET);
    if (st == SL_INVALID)
        return raise_kind("invalid", NULL, "fd %d is not a streamload ring (bad %s)", fd,
                          oserr.call ? oserr.call : "argument");
    if (st == SL_STATE)
        return raise_kind("state", NULL,
                          "the ring already has a live %s process; a ring has exactly one of each",
                          role == SL_ROLE_PRODUCER ? "producer" : "consumer");
    return raise_kind("state", NULL, "cannot open ring: %s", sl_status_name(st));
}

static void Ring_close_shared(RingObject *self) {
    if (self->ring && !self->closed && self->owner_pid == getpid()) sl_ring_close(self->ring);
    self->closed = 1;
}

static void Ring_dealloc(RingObject *self) {
    if (self->weakrefs) PyObject_ClearWeakRefs((PyObject *)self);
    if (self->ring) {
        Ring_close_shared(self);
        sl_ring_destroy(self->ring);
        self->ring = NULL;
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Ring_close(RingObject *self, PyObject *unused) {
    if (self->ring) {
        Ring_close_shared(self);
        sl_ring_close_fd(self->ring);
    }
    Py_RETURN_NONE;
}

static PyObject *Ring_fileno(RingObject *self, PyObject *unused) {
    if (!self->ring || self->closed) return raise_kind("state", NULL, "this ring object is closed");
    return PyLong_FromLong(sl_ring_fd(self->ring));
}

static PyObject *Ring_reserve(RingObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"nbytes", "timeout", NULL};
    Py_ssize_t n;
    PyObject *timeout_obj = Py_None;
    double timeout;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n|O:reserve", kwlist, &n, &timeout_obj)) return NULL;
    if (n < 0) return raise_kind("invalid", NULL, "nbytes must be >= 0, got %zd", n);
    if (parse_timeout(timeout_obj, &timeout) < 0 || check_usable(self, SL_ROLE_PRODUCER) < 0) return NULL;
    uint8_t *buf;
    if (reserve_blocking(self, (uint64_t)n, timeout, &buf) < 0) return NULL;
    ReservationObject *res = PyObject_New(ReservationObject, &ReservationType);
    if (!res) {
        sl_ring_abort(self->ring);
        return NULL;
    }
    Py_INCREF(self);
    res->ring = self;
    res->buf = buf;
    res->len = n;
    res->exports = 0;
    res->done = 0;
    return (PyObject *)res;
}

static PyObject *Ring_put(RingObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"data", "type", "seq", "timeout", NULL};
    PyObject *data, *seq_obj = Py_None, *timeout_obj = Py_None;
    int type = SL_REC_DATA;
    double timeout;
    uint64_t seq;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|$iOO:put", kwlist, &data, &type, &seq_obj, &timeout_obj))
        return NULL;
    if (parse_type(type) < 0 || parse_timeout(timeout_obj, &timeout) < 0 ||
        parse_seq(self, seq_obj, &seq) < 0 || check_usable(self, SL_ROLE_PRODUCER) < 0)
        return NULL;
    /* One buffer, or a list/tuple of buffers written back to back. */
    PyObject *parts = (PyList_Check(data) || PyTuple_Check(data)) ? PySequence_Fast(data, "")
                                                                    : PyTuple_Pack(1, data);
    if (!parts) return NULL;
    Py_ssize_t nparts = PySequence_Fast_GET_SIZE(parts);
    Py_buffer *views = PyMem_Calloc(nparts ? (size_t)nparts : 1, sizeof(Py_buffer));
    PyObject *result = NULL;
    Py_ssize_t got = 0;
    uint64_t total = 0;
    if (!views) {
        PyErr_NoMemory();
        goto done;
    }
    for (; got < nparts; got++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(parts, got), &views[got], PyBUF_C_CONTIGUOUS) < 0)
            goto done;
        total += (uint64_t)views[got].len;
    }
    uint8_t *buf;
    if (reserve_blocking(self, total, timeout, &buf) < 0) goto done;
    if (total >= NOGIL_COPY_BYTES) {
        self->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        uint8_t *p = buf;
        for (Py_ssize_t i = 0; i < nparts; i++) {
            memcpy(p, views[i].buf, (size_t)views[i].len);
            p += views[i].len;
        }
        Py_END_ALLOW_THREADS
        self->busy = 0;
    } else {
        uint8_t *p = buf;
        for (Py_ssize_t i = 0; i < nparts; i++) {
            memcpy(p, views[i].buf, (size_t)views[i].len);
            p += views[i].len;
        }
    }
    sl_status st = sl_ring_commit(self->ring, total, (uint16_t)type, seq);
    if (st != SL_OK) {
        raise_simple(self, st, "commit failed");
        goto done;
    }
    self->next_seq = seq + 1;
    result = PyLong_FromUnsignedLongLong(seq);
done:
    for (Py_ssize_t i = 0; i < got; i++) PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    Py_DECREF(parts);
    return result;
}

static PyObject *Ring_get(RingObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout_obj = Py_None;
    double timeout;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:get", kwlist, &timeout_obj)) return NULL;
    if (parse_timeout(timeout_obj, &timeout) < 0 || check_usable(self, SL_ROLE_CONSUMER) < 0) return NULL;
    sl_record rec;
    for (;;) {
        sl_status st = sl_ring_get(self->ring, &rec);
        if (st == SL_OK) break;
        if (st == SL_AGAIN) {
            int w = wait_loop(self, 0, 0, timeout);
            if (w == SL_OK) continue;
            if (w == SL_PYERR) return NULL;
            st = (sl_status)w;
        }
        err_ctx ctx = {timeout, 0, "this ring object is closed"};
        return raise_status(self, st, ctx);
    }
    RecordObject *r = PyObject_New(RecordObject, &RecordType);
    if (!r) {
        sl_ring_release(self->ring, rec.pos);
        return NULL;
    }
    Py_INCREF(self);
    r->ring = self;
    r->pos = rec.pos;
    r->data = rec.data;
    r->len = (Py_ssize_t)rec.len;
    r->type = rec.type;
    r->seq = rec.seq;
    r->exports = 0;
    r->released = 0;
    r->release_pending = 0;
    r->allow_write = 0;
    self->outstanding++;
    return (PyObject *)r;
}

static PyObject *Ring_stats(RingObject *self, PyObject *unused) {
    if (!self->ring) return raise_kind("state", NULL, "this ring object is closed");
    sl_stats s;
    sl_ring_stats(self->ring, &s);
    return Py_BuildValue(
        "{s:s,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:n,s:i,"
        "s:i,s:O,s:O}",
        "role", sl_ring_role(self->ring) == SL_ROLE_PRODUCER ? "producer" : "consumer",
        "capacity", (unsigned long long)s.capacity, "max_record", (unsigned long long)s.max_record,
        "head", (unsigned long long)s.head, "tail", (unsigned long long)s.tail,
        "read_pos", (unsigned long long)s.read_pos,
        "bytes_in_use", (unsigned long long)(s.head - s.tail),
        "bytes_held", (unsigned long long)(s.read_pos - s.tail),
        "bytes_ready", (unsigned long long)(s.head - s.read_pos),
        "records", (unsigned long long)s.records_written,
        "bytes", (unsigned long long)s.bytes_written,
        "records_read", (unsigned long long)s.records_read,
        "bytes_read", (unsigned long long)s.bytes_read,
        "producer_waits", (unsigned long long)s.producer_waits,
        "producer_wait_ns", (unsigned long long)s.producer_wait_ns,
        "consumer_waits", (unsigned long long)s.consumer_waits,
        "consumer_wait_ns", (unsigned long long)s.consumer_wait_ns,
        "producer_missed_wakes", (unsigned long long)s.producer_missed_wakes,
        "consumer_missed_wakes", (unsigned long long)s.consumer_missed_wakes,
        "records_in_flight", (unsigned long long)(s.records_written - s.records_read),
        "next_seq", (unsigned long long)self->next_seq,
        "records_held", self->outstanding,
        "producer_pid", (int)s.producer_pid, "consumer_pid", (int)s.consumer_pid,
        "producer_closed", s.producer_closed ? Py_True : Py_False,
        "consumer_closed", s.consumer_closed ? Py_True : Py_False);
}

static PyObject *Ring_set_producer_pid(RingObject *self, PyObject *arg) {
    long pid = PyLong_AsLong(arg);
    if (pid == -1 && PyErr_Occurred()) return NULL;
    if (check_usable(self, SL_ROLE_CONSUMER) < 0) return NULL;
    sl_status st = sl_ring_set_producer_pid(self->ring, (int32_t)pid);
    if (st != SL_OK) return raise_simple(self, st, "pid must be > 0");
    Py_RETURN_NONE;
}

static PyObject *Ring_reopen(RingObject *self, PyObject *unused) {
    (void)unused;
    if (check_usable(self, SL_ROLE_CONSUMER) < 0) return NULL;
    sl_status st = sl_ring_reopen(self->ring);
    if (st != SL_OK)
        return raise_simple(self, st,
                            "reopen needs the producer closed or dead and every record released");
    Py_RETURN_NONE;
}

static PyObject *Ring_set_spin(RingObject *self, PyObject *arg) {
    long spin = PyLong_AsLong(arg);
    if (spin == -1 && PyErr_Occurred()) return NULL;
    if (!self->ring) return raise_kind("state", NULL, "this ring object is closed");
    if (spin < 0) return raise_kind("invalid", NULL, "spin must be >= 0, got %ld", spin);
    sl_ring_set_spin(self->ring, (uint32_t)spin);
    Py_RETURN_NONE;
}

static PyObject *Ring_get_role(RingObject *self, void *c) {
    return PyLong_FromLong(self->ring ? (long)sl_ring_role(self->ring) : 0);
}
static PyObject *Ring_get_capacity(RingObject *self, void *c) {
    return PyLong_FromUnsignedLongLong(self->ring ? sl_ring_capacity(self->ring) : 0);
}
static PyObject *Ring_get_max_record(RingObject *self, void *c) {
    return PyLong_FromUnsignedLongLong(self->ring ? sl_ring_max_record(self->ring) : 0);
}
static PyObject *Ring_get_closed(RingObject *self, void *c) { return PyBool_FromLong(self->closed); }

static PyMethodDef Ring_methods[] = {
    {"fileno", (PyCFunction)Ring_fileno, METH_NOARGS, "fileno() -> int: the memfd (creator only; -1 after attach)."},
    {"reserve", (PyCFunction)(void (*)(void))Ring_reserve, METH_VARARGS | METH_KEYWORDS,
     "reserve(nbytes, timeout=None) -> Reservation: writable space for one record (producer)."},
    {"put", (PyCFunction)(void (*)(void))Ring_put, METH_VARARGS | METH_KEYWORDS,
     "put(data, *, type=DATA, seq=None, timeout=None) -> int: copy a buffer (or list of buffers) "
     "in as one record; returns its seq (producer)."},
    {"get", (PyCFunction)(void (*)(void))Ring_get, METH_VARARGS | METH_KEYWORDS,
     "get(timeout=None) -> Record: the next record (consumer)."},
    {"stats", (PyCFunction)Ring_stats, METH_NOARGS, "stats() -> dict of positions and counters."},
    {"reopen", (PyCFunction)Ring_reopen, METH_NOARGS,
     "reopen(): take a new producer after the previous one closed or died (consumer)."},
    {"set_producer_pid", (PyCFunction)Ring_set_producer_pid, METH_O,
     "set_producer_pid(pid): watch this process as the producer before it attaches (consumer)."},
    {"set_spin", (PyCFunction)Ring_set_spin, METH_O, "set_spin(n): spin iterations before sleeping."},
    {"_close_core", (PyCFunction)Ring_close, METH_NOARGS,
     "_close_core(): mark this side closed, wake the peer, close the fd. Idempotent."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Ring_getset[] = {
    {"role", (getter)Ring_get_role, NULL, "PRODUCER (1) or CONSUMER (2).", NULL},
    {"capacity", (getter)Ring_get_capacity, NULL, "Data area size in bytes.", NULL},
    {"max_record", (getter)Ring_get_max_record, NULL, "Largest record payload in bytes.", NULL},
    {"closed", (getter)Ring_get_closed, NULL, "True once this object was closed.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "streamload.transport._ring.RingCore",
    .tp_basicsize = sizeof(RingObject),
    .tp_dealloc = (destructor)Ring_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "RingCore(role, capacity=0, max_record=0, fd=-1): one side of a shared-memory ring.",
    .tp_methods = Ring_methods,
    .tp_getset = Ring_getset,
    .tp_new = Ring_new,
    .tp_weaklistoffset = offsetof(RingObject, weakrefs),
};

/* ------------------------------------------------------------------ Record */

static int record_do_release(RecordObject *self, int raise) {
    if (self->released) return 0;
    self->released = 1;
    RingObject *ring = self->ring;
    ring->outstanding--;
    if (!ring->ring || ring->owner_pid != getpid()) return 0;
    sl_status st = sl_ring_release(ring->ring, self->pos);
    if (st != SL_OK && st != SL_CORRUPT && raise) {
        raise_simple(ring, st, "release failed");
        return -1;
    }
    if (st == SL_CORRUPT && raise) {
        raise_simple(ring, st, NULL);
        return -1;
    }
    return 0;
}

static void Record_dealloc(RecordObject *self) {
    record_do_release(self, 0); /* exports hold references, so none are alive here */
    Py_DECREF(self->ring);
    PyObject_Free(self);
}

static PyObject *Record_release(RecordObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"deferred", NULL};
    int deferred = 0;
    if (args && !PyArg_ParseTupleAndKeywords(args, kwds, "|$p:release", kwlist, &deferred)) return NULL;
    if (self->released) Py_RETURN_NONE;
    if (self->exports > 0) {
        if (deferred) {
            self->release_pending = 1;
            Py_RETURN_NONE;
        }
        PyErr_Format(PyExc_BufferError,
                     "cannot release record seq=%llu: %zd buffer export(s) (memoryviews, numpy "
                     "arrays, tensors) still use it; drop them, copy the data first, or use "
                     "release(deferred=True)",
                     (unsigned long long)self->seq, self->exports);
        return NULL;
    }
    if (record_do_release(self, 1) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Record_view(RecordObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"writable", NULL};
    int writable = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$p:view", kwlist, &writable)) return NULL;
    self->allow_write = writable;
    PyObject *mv = PyMemoryView_FromObject((PyObject *)self);
    self->allow_write = 0;
    return mv;
}

static PyObject *Record_enter(RecordObject *self, PyObject *unused) {
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *Record_exit(RecordObject *self, PyObject *args) { return Record_release(self, NULL, NULL); }

static int Record_getbuffer(RecordObject *self, Py_buffer *view, int flags) {
    if (self->released) {
        PyErr_SetString(PyExc_BufferError, "record was released");
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, (void *)self->data, self->len,
                          !self->allow_write, flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void Record_releasebuffer(RecordObject *self, Py_buffer *view) {
    self->exports--;
    if (self->exports == 0 && self->release_pending) record_do_release(self, 0);
}

static Py_ssize_t Record_len(RecordObject *self) { return self->len; }

static PyObject *Record_repr(RecordObject *self) {
    return PyUnicode_FromFormat("<Record seq=%llu type=%d nbytes=%zd%s>", (unsigned long long)self->seq,
                                (int)self->type, self->len, self->released ? " released" : "");
}

static PyObject *Record_get_seq(RecordObject *self, void *c) { return PyLong_FromUnsignedLongLong(self->seq); }
static PyObject *Record_get_type(RecordObject *self, void *c) { return PyLong_FromLong(self->type); }
static PyObject *Record_get_nbytes(RecordObject *self, void *c) { return PyLong_FromSsize_t(self->len); }
static PyObject *Record_get_released(RecordObject *self, void *c) { return PyBool_FromLong(self->released); }
static PyObject *Record_get_pending(RecordObject *self, void *c) { return PyBool_FromLong(self->release_pending); }
static PyObject *Record_get_exports(RecordObject *self, void *c) { return PyLong_FromSsize_t(self->exports); }

static PyMethodDef Record_methods[] = {
    {"release", (PyCFunction)(void (*)(void))Record_release, METH_VARARGS | METH_KEYWORDS,
     "release(*, deferred=False): give the space back. While exports are alive: BufferError, "
     "or with deferred=True release when the last export dies. Idempotent."},
    {"view", (PyCFunction)(void (*)(void))Record_view, METH_VARARGS | METH_KEYWORDS,
     "view(*, writable=False) -> memoryview holding an export. The consumer owns the payload "
     "until release, so writing into it cannot disturb the ring."},
    {"__enter__", (PyCFunction)Record_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Record_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Record_getset[] = {
    {"seq", (getter)Record_get_seq, NULL, "Producer's sequence number.", NULL},
    {"type", (getter)Record_get_type, NULL, "DATA (1), ERROR (2) or EOS (3).", NULL},
    {"nbytes", (getter)Record_get_nbytes, NULL, "Payload size.", NULL},
    {"released", (getter)Record_get_released, NULL, "True once released.", NULL},
    {"release_pending", (getter)Record_get_pending, NULL, "release(deferred=True) awaits the last export.", NULL},
    {"exports", (getter)Record_get_exports, NULL, "Live buffer exports.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyBufferProcs Record_as_buffer = {(getbufferproc)Record_getbuffer, (releasebufferproc)Record_releasebuffer};
static PySequenceMethods Record_as_sequence = {.sq_length = (lenfunc)Record_len};

static PyTypeObject RecordType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "streamload.transport._ring.Record",
    .tp_basicsize = sizeof(RecordObject),
    .tp_dealloc = (destructor)Record_dealloc,
    .tp_repr = (reprfunc)Record_repr,
    .tp_as_sequence = &Record_as_sequence,
    .tp_as_buffer = &Record_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A consumed record: a read-only buffer over ring memory until release().",
    .tp_methods = Record_methods,
    .tp_getset = Record_getset,
};

/* ------------------------------------------------------------------ Reservation */

static int reservation_check(ReservationObject *self) {
    if (self->done) {
        raise_kind("state", NULL, "reservation was already committed or aborted");
        return -1;
    }
    if (self->ring->owner_pid != getpid()) {
        raise_kind("state", NULL, "reservation belongs to another process");
        return -1;
    }
    return 0;
}

static void reservation_abort(ReservationObject *self) {
    if (self->done) return;
    self->done = 1;
    if (self->ring->ring && self->ring->owner_pid == getpid()) sl_ring_abort(self->ring->ring);
}

static void Reservation_dealloc(ReservationObject *self) {
    reservation_abort(self);
    Py_DECREF(self->ring);
    PyObject_Free(self);
}

static PyObject *Reservation_commit(ReservationObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"nbytes", "type", "seq", NULL};
    PyObject *n_obj = Py_None, *seq_obj = Py_None;
    int type = SL_REC_DATA;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O$iO:commit", kwlist, &n_obj, &type, &seq_obj))
        return NULL;
    if (reservation_check(self) < 0 || parse_type(type) < 0) return NULL;
    Py_ssize_t n = self->len;
    if (n_obj != Py_None) {
        n = PyLong_AsSsize_t(n_obj);
        if (n == -1 && PyErr_Occurred()) return NULL;
        if (n < 0 || n > self->len)
            return raise_kind("invalid", NULL, "commit(nbytes=%zd): must be in [0, %zd] (the reserved size)", n, self->len);
    }
    if (self->exports > 0) {
        PyErr_Format(PyExc_BufferError,
                     "cannot commit: %zd buffer export(s) of the reservation are still alive; "
                     "release memoryviews/arrays over it first (they would write into a "
                     "published record)",
                     self->exports);
        return NULL;
    }
    uint64_t seq;
    if (parse_seq(self->ring, seq_obj, &seq) < 0) return NULL;
    sl_status st = sl_ring_commit(self->ring->ring, (uint64_t)n, (uint16_t)type, seq);
    if (st != SL_OK) return raise_simple(self->ring, st, "commit failed");
    self->done = 1;
    self->ring->next_seq = seq + 1;
    return PyLong_FromUnsignedLongLong(seq);
}

static PyObject *Reservation_abort(ReservationObject *self, PyObject *unused) {
    reservation_abort(self);
    Py_RETURN_NONE;
}

static PyObject *Reservation_enter(ReservationObject *self, PyObject *unused) {
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *Reservation_exit(ReservationObject *self, PyObject *args) {
    reservation_abort(self); /* no-op after commit */
    Py_RETURN_FALSE;
}

static int Reservation_getbuffer(ReservationObject *self, Py_buffer *view, int flags) {
    if (self->done) {
        PyErr_SetString(PyExc_BufferError, "reservation was already committed or aborted");
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->buf, self->len, 0, flags) < 0) return -1;
    self->exports++;
    return 0;
}

static void Reservation_releasebuffer(ReservationObject *self, Py_buffer *view) { self->exports--; }

static Py_ssize_t Reservation_len(ReservationObject *self) { return self->len; }

static PyObject *Reservation_get_nbytes(ReservationObject *self, void *c) { return PyLong_FromSsize_t(self->len); }
static PyObject *Reservation_get_done(ReservationObject *self, void *c) { return PyBool_FromLong(self->done); }
static PyObject *Reservation_get_exports(ReservationObject *self, void *c) { return PyLong_FromSsize_t(self->exports); }

static PyMethodDef Reservation_methods[] = {
    {"commit", (PyCFunction)(void (*)(void))Reservation_commit, METH_VARARGS | METH_KEYWORDS,
     "commit(nbytes=None, *, type=DATA, seq=None) -> int: publish the first nbytes (default: "
     "all) as one record; returns its seq. BufferError while exports are alive."},
    {"abort", (PyCFunction)Reservation_abort, METH_NOARGS, "abort(): drop the reservation unpublished."},
    {"__enter__", (PyCFunction)Reservation_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Reservation_exit, METH_VARARGS, "Abort unless committed."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Reservation_getset[] = {
    {"nbytes", (getter)Reservation_get_nbytes, NULL, "Reserved size.", NULL},
    {"done", (getter)Reservation_get_done, NULL, "True once committed or aborted.", NULL},
    {"exports", (getter)Reservation_get_exports, NULL, "Live buffer exports.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyBufferProcs Reservation_as_buffer = {(getbufferproc)Reservation_getbuffer,
                                              (releasebufferproc)Reservation_releasebuffer};
static PySequenceMethods Reservation_as_sequence = {.sq_length = (lenfunc)Reservation_len};

static PyTypeObject ReservationType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "streamload.transport._ring.Reservation",
    .tp_basicsize = sizeof(ReservationObject),
    .tp_dealloc = (destructor)Reservation_dealloc,
    .tp_as_sequence = &Reservation_as_sequence,
    .tp_as_buffer = &Reservation_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Writable ring space for one record: commit() publishes it, abort() drops it.",
    .tp_methods = Reservation_methods,
    .tp_getset = Reservation_getset,
};

/* ------------------------------------------------------------------ module */

static PyObject *set_error_classes(PyObject *mod, PyObject *mapping) {
    if (!PyDict_Check(mapping)) {
        PyErr_SetString(PyExc_TypeError, "_set_error_classes expects a dict");
        return NULL;
    }
    Py_INCREF(mapping);
    Py_XSETREF(error_classes, mapping);
    Py_RETURN_NONE;
}

static PyObject *abi_version(PyObject *self, PyObject *args) { return PyLong_FromLong(sl_ring_abi_version()); }

static PyObject *record_size(PyObject *self, PyObject *arg) {
    unsigned long long n = PyLong_AsUnsignedLongLong(arg);
    if (n == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    return PyLong_FromUnsignedLongLong(sl_record_size(n));
}

/* split(data, offsets, text) -> list: item i is data[offsets[i]:offsets[i + 1]], as bytes, or as
 * str decoded from UTF-8 with surrogatepass (what the codec's encoder wrote). The codec's fast path
 * for str/bytes columns: one object per item straight from ring memory, no Python-level loop.
 * offsets: a contiguous buffer of n + 1 int64 positions, non-decreasing, within data; anything else
 * raises ValueError before an object is built. */
/* Whether n bytes are all ASCII (word at a time). */
static int all_ascii(const char *p, Py_ssize_t n) {
    uint64_t acc = 0;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, sizeof w);
        acc |= w;
    }
    for (; i < n; i++) acc |= (uint8_t)p[i];
    return (acc & 0x8080808080808080ull) == 0;
}

static PyObject *split_items(PyObject *mod, PyObject *args) {
    Py_buffer data, offs;
    int text;
    if (!PyArg_ParseTuple(args, "y*y*p:split", &data, &offs, &text)) return NULL;
    PyObject *out = NULL;
    Py_ssize_t count = offs.len / (Py_ssize_t)sizeof(int64_t) - 1;
    if (offs.len % (Py_ssize_t)sizeof(int64_t) != 0 || count < 0) {
        PyErr_SetString(PyExc_ValueError, "split: offsets must hold n + 1 int64 values");
        goto done;
    }
    const char *base = (const char *)data.buf;
    int64_t prev = 0;
    for (Py_ssize_t i = 0; i <= count; i++) {
        int64_t v;
        memcpy(&v, (const char *)offs.buf + i * (Py_ssize_t)sizeof v, sizeof v);
        if (v < prev || v > (int64_t)data.len || (i == 0 && v < 0)) {
            PyErr_Format(PyExc_ValueError,
                         "split: offset %zd (%lld) is decreasing or outside the %zd-byte buffer", i,
                         (long long)v, data.len);
            goto done;
        }
        prev = v;
    }
    /* ASCII text (the common case) skips the decoder: each str is a 1-byte-kind copy. */
    int64_t first;
    memcpy(&first, offs.buf, sizeof first);
    int ascii = text && all_ascii(base + first, (Py_ssize_t)(prev - first));
    out = PyList_New(count);
    if (!out) goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        int64_t a, b;
        memcpy(&a, (const char *)offs.buf + i * (Py_ssize_t)sizeof a, sizeof a);
        memcpy(&b, (const char *)offs.buf + (i + 1) * (Py_ssize_t)sizeof b, sizeof b);
        Py_ssize_t n = (Py_ssize_t)(b - a);
        PyObject *item;
        if (ascii) {
            item = PyUnicode_New(n, 127);
            if (item) memcpy(PyUnicode_DATA(item), base + a, (size_t)n);
        } else {
            item = text ? PyUnicode_DecodeUTF8(base + a, n, "surrogatepass")
                        : PyBytes_FromStringAndSize(base + a, n);
        }
        if (!item) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, item);
    }
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&offs);
    return out;
}

static PyMethodDef module_methods[] = {
    {"split", split_items, METH_VARARGS,
     "split(data, offsets, text) -> list of bytes (or str) items data[offsets[i]:offsets[i+1]]."},
    {"abi_version", abi_version, METH_NOARGS, "ABI version of the native ring core."},
    {"record_size", record_size, METH_O, "record_size(n) -> bytes a record with an n-byte payload occupies."},
    {"_set_error_classes", set_error_classes, METH_O, "Register the exception class for each error kind."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_ring",
    .m_doc = "Native SPSC shared-memory ring (see streamload.transport.ring).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__ring(void) {
    if (PyType_Ready(&RingType) < 0 || PyType_Ready(&RecordType) < 0 || PyType_Ready(&ReservationType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&RingType);
    Py_INCREF(&RecordType);
    Py_INCREF(&ReservationType);
    if (PyModule_AddObject(m, "RingCore", (PyObject *)&RingType) < 0 ||
        PyModule_AddObject(m, "Record", (PyObject *)&RecordType) < 0 ||
        PyModule_AddObject(m, "Reservation", (PyObject *)&ReservationType) < 0 ||
        PyModule_AddIntConstant(m, "PRODUCER", SL_ROLE_PRODUCER) < 0 ||
        PyModule_AddIntConstant(m, "CONSUMER", SL_ROLE_CONSUMER) < 0 ||
        PyModule_AddIntConstant(m, "DATA", SL_REC_DATA) < 0 ||
        PyModule_AddIntConstant(m, "ERROR", SL_REC_ERROR) < 0 ||
        PyModule_AddIntConstant(m, "EOS", SL_REC_EOS) < 0 ||
        PyModule_AddIntConstant(m, "HEADER_SIZE", SL_HEADER_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "PAYLOAD_OFFSET", SL_PAYLOAD_OFFSET) < 0 ||
        PyModule_AddIntConstant(m, "MIN_CAPACITY", SL_MIN_CAPACITY) < 0 ||
        PyModule_AddIntConstant(m, "ABI_VERSION", SL_RING_ABI_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
