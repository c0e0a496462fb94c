/*
 * Multi-buffer MD5: many independent MD5 streams hashed at once in SIMD lanes.
 *
 * Why: one MD5 stream is a serial chain of 64 dependent steps per block, about
 * 0.9 GB/s on one core with the best scalar code.  The digest stage always has
 * many independent streams (the small files of a unit, the parts of a
 * multipart object), and a vector register holds 8 (AVX2) or 16 (AVX-512)
 * 32-bit lanes, each running the same step for its own stream.
 *
 * Kernels, chosen at run time from the CPU's flags (or forced by name):
 *   avx512  16 lanes in one AVX-512 register;
 *   avx2x2  16 lanes as two interleaved groups of 8 in AVX2 registers;
 *   avx2    8 lanes;
 *   scalar  one lane.
 * All kernels are one source (_md5mb_kernel.h).  At import the scalar kernel is
 * checked against RFC 1321's test suite and every kernel the CPU can run
 * against the scalar one on 40 streams of every length class; a kernel that
 * disagrees is not offered.  The tests check all of them against hashlib.
 *
 * Design (the submit/flush design of isa-l's md5_mb): an MD5Lanes object holds
 * streams (state, length, a partial block).  update([(id, buffer), ...]) queues
 * the buffers, and with the GIL released hands each stream's chain of buffers
 * to a free lane; all lanes advance in lockstep by the smallest number of
 * whole blocks any lane has left, then empty lanes take the next stream.  The
 * partial block of a stream and its padding are fed from the stream's own
 * 128-byte tail, so streams of any length (0 bytes included) end in lanes
 * too.  When a single lane is left busy, it finishes on the scalar path (a
 * lone stream is not faster in SIMD).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "_md5mb assumes a little-endian host (MD5 words are little-endian)"
#endif

#define MAXLANES 16

/* --- the kernels -------------------------------------------------------------- */

/* one lane, no target: the unrolled scalar MD5 (the reference is hashlib, in the tests) */
#define KNAME md5_scalar
#define KLANES 1
#include "_md5mb_kernel.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_X86 1
#define KNAME md5_avx2
#define KLANES 8
#define KTARGET "avx2"
#define KTRANSPOSE8
#include "_md5mb_kernel.h"
#define KNAME md5_avx2x2
#define KLANES 16
#define KTARGET "avx2"
#define KTRANSPOSE8
#include "_md5mb_kernel.h"
#define KNAME md5_avx512
#define KLANES 16
#define KTARGET "avx512f"
#define KTRANSPOSE8
#include "_md5mb_kernel.h"
#else
#define HAVE_X86 0
#endif

typedef void (*kernel_fn)(uint32_t *, const uint8_t *const *, size_t);

typedef struct {
    const char *name;
    int lanes;
    kernel_fn fn;
    const char *cpu; /* the __builtin_cpu_supports feature it needs, or NULL */
    int ok;          /* the CPU has it and it passed the known answers */
} kernel_t;

static kernel_t KERNELS[] = {
#if HAVE_X86
    {"avx512", 16, md5_avx512, "avx512f", 0},
    {"avx2x2", 16, md5_avx2x2, "avx2", 0},
    {"avx2", 8, md5_avx2, "avx2", 0},
#endif
    {"scalar", 1, md5_scalar, NULL, 0},
};
#define NKERNELS ((int)(sizeof KERNELS / sizeof KERNELS[0]))

/* --- streams and the lane scheduler -------------------------------------------- */

typedef struct {
    uint32_t h[4];
    uint64_t nbytes;    /* bytes fed so far */
    uint8_t tail[128];  /* the partial block; room for the padding */
    uint32_t ntail;
    uint8_t finished;
    uint8_t busy;       /* in a lane (during one update) */
} stream_t;

typedef struct {
    Py_ssize_t sid;
    Py_ssize_t order;   /* position in the call, for a stable sort */
    Py_buffer view;
} job_t;

/* one lane working through one stream's chain of jobs */
typedef struct {
    stream_t *s;
    job_t *job, *end;   /* the chain: jobs [job, end) of one stream */
    const uint8_t *pos; /* unconsumed bytes of *job */
    size_t left;        /* ... and how many */
    int phase;          /* 0 start of job, 1 tail block queued, 2 body queued, 3 pad queued */
    int final;          /* pad the stream after its last job */
} lane_t;

static const uint32_t IV[4] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476};

/*
 * The next run of whole blocks for lane L, or 0 blocks when its chain is done.
 * Each byte is consumed exactly once: a partial tail block is completed from
 * the job's first bytes and hashed from the tail, the job's whole blocks are
 * hashed in place, the rest becomes the new tail, and after the last job the
 * tail plus padding is hashed.  The tail is rewritten only after the block
 * queued from it has been hashed, since a lane asks for its next run only
 * then.
 */
static size_t next_run(lane_t *L, const uint8_t **out)
{
    stream_t *s = L->s;
    for (;;) {
        if (L->job == L->end) {
            if (L->phase == 3 || !L->final) {
                if (L->phase == 3)
                    s->finished = 1;
                return 0;
            }
            /* padding: 0x80, zeros, the bit length, to a whole block */
            uint32_t n = s->ntail;
            uint64_t bits = s->nbytes * 8;
            s->tail[n++] = 0x80;
            uint32_t total = (n <= 56) ? 64 : 128;
            memset(s->tail + n, 0, total - 8 - n);
            memcpy(s->tail + total - 8, &bits, 8);
            s->ntail = 0;
            L->phase = 3;
            *out = s->tail;
            return total / 64;
        }
        switch (L->phase) {
        case 0:
            L->pos = L->job->view.buf;
            L->left = (size_t)L->job->view.len;
            s->nbytes += L->left;
            if (s->ntail) {
                size_t take = 64 - s->ntail;
                if (take > L->left)
                    take = L->left;
                memcpy(s->tail + s->ntail, L->pos, take);
                s->ntail += (uint32_t)take;
                L->pos += take;
                L->left -= take;
                if (s->ntail == 64) {
                    s->ntail = 0;
                    L->phase = 1;
                    *out = s->tail;
                    return 1;
                }
            }
            /* fall through */
        case 1: {
            size_t nb = L->left / 64;
            L->phase = 2;
            if (nb) {
                *out = L->pos;
                L->pos += nb * 64;
                L->left -= nb * 64;
                return nb;
            }
        }
            /* fall through */
        case 2:
            memcpy(s->tail + s->ntail, L->pos, L->left);
            s->ntail += (uint32_t)L->left;
            L->left = 0;
            L->job++;
            L->phase = 0;
            break;
        default:
            return 0;
        }
    }
}

static int job_cmp(const void *x, const void *y)
{
    const job_t *a = x, *b = y;
    if (a->sid != b->sid)
        return a->sid < b->sid ? -1 : 1;
    return (a->order > b->order) - (a->order < b->order);
}

/* hash every job; jobs sorted by stream; GIL released by the caller */
static void run_jobs(const kernel_t *k, stream_t *streams, job_t *jobs, Py_ssize_t njobs,
                     int final)
{
    const int W = k->lanes;
    lane_t lanes[MAXLANES];
    uint32_t st[4 * MAXLANES] __attribute__((aligned(64)));
    const uint8_t *ptr[MAXLANES];
    size_t nleft[MAXLANES];
    static const uint8_t zero_block[64 * 2];
    Py_ssize_t next = 0; /* first job of the next chain */
    int active = 0;

    memset(st, 0, sizeof st);
    for (int l = 0; l < W; l++) {
        lanes[l].s = NULL;
        nleft[l] = 0;
        ptr[l] = zero_block;
    }
    for (;;) {
        /* refill empty lanes with the next chains */
        for (int l = 0; l < W; l++) {
            while (nleft[l] == 0) {
                lane_t *L = &lanes[l];
                if (L->s) {
                    const uint8_t *p;
                    size_t nb = next_run(L, &p);
                    if (nb) {
                        ptr[l] = p;
                        nleft[l] = nb;
                        break;
                    }
                    for (int j = 0; j < 4; j++)
                        L->s->h[j] = st[j * W + l];
                    L->s->busy = 0;
                    L->s = NULL;
                    active--;
                }
                if (next >= njobs)
                    break;
                Py_ssize_t e = next + 1;
                while (e < njobs && jobs[e].sid == jobs[next].sid)
                    e++;
                L->s = &streams[jobs[next].sid];
                L->job = &jobs[next];
                L->end = &jobs[e];
                L->phase = 0;
                L->final = final;
                next = e;
                for (int j = 0; j < 4; j++)
                    st[j * W + l] = L->s->h[j];
                active++;
            }
        }
        if (active == 0)
            return;
        if (active == 1 && next >= njobs && W > 1) {
            /* a lone stream: the scalar path, without the idle lanes */
            for (int l = 0; l < W; l++) {
                lane_t *L = &lanes[l];
                if (!L->s)
                    continue;
                uint32_t one[4];
                for (int j = 0; j < 4; j++)
                    one[j] = st[j * W + l];
                const uint8_t *p = ptr[l];
                size_t nb = nleft[l];
                while (nb) {
                    md5_scalar(one, &p, nb);
                    nb = next_run(L, &p);
                }
                for (int j = 0; j < 4; j++)
                    L->s->h[j] = one[j];
                L->s->busy = 0;
                L->s = NULL;
            }
            return;
        }
        /* lockstep: every busy lane has at least this many blocks queued */
        size_t step = SIZE_MAX;
        const uint8_t *any = NULL;
        for (int l = 0; l < W; l++)
            if (lanes[l].s && nleft[l] < step) {
                step = nleft[l];
                any = ptr[l];
            }
        /* idle lanes hash a busy lane's bytes into their unused state */
        for (int l = 0; l < W; l++)
            if (!lanes[l].s)
                ptr[l] = any;
        k->fn(st, ptr, step);
        for (int l = 0; l < W; l++)
            if (lanes[l].s) {
                ptr[l] += 64 * step;
                nleft[l] -= step;
            }
    }
}

/* --- known answers ------------------------------------------------------------- */

static void digest_of(const stream_t *s, uint8_t out[16]) { memcpy(out, s->h, 16); }

static int self_test(const kernel_t *k)
{
    /* needs the scalar kernel checked first (check_kernels goes from the end) */
    /* 40 streams of lengths 0..(39*37) over a fixed pattern, against the scalar path */
    enum { N = 40 };
    static uint8_t data[N * 37 + 1];
    stream_t ref[N], got[N];
    job_t jobs[N];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 131 + 7);
    for (int pass = 0; pass < 2; pass++) {
        stream_t *ss = pass ? got : ref;
        const kernel_t *kk = pass ? k : &KERNELS[NKERNELS - 1];
        for (int i = 0; i < N; i++) {
            memset(&ss[i], 0, sizeof ss[i]);
            memcpy(ss[i].h, IV, 16);
            jobs[i].sid = i;
            jobs[i].order = i;
            jobs[i].view.buf = data + i;
            jobs[i].view.len = i * 37;
        }
        run_jobs(kk, ss, jobs, N, 1);
    }
    for (int i = 0; i < N; i++) {
        uint8_t a[16], b[16];
        digest_of(&ref[i], a);
        digest_of(&got[i], b);
        if (memcmp(a, b, 16))
            return 0;
    }
    return 1;
}

/* RFC 1321, appendix A.5 */
static const char *RFC_IN[] = {
    "", "a", "abc", "message digest", "abcdefghijklmnopqrstuvwxyz",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
    "12345678901234567890123456789012345678901234567890123456789012345678901234567890"};
static const char *RFC_OUT[] = {
    "d41d8cd98f00b204e9800998ecf8427e", "0cc175b9c0f1b6a831c399e269772661",
    "900150983cd24fb0d6963f7d28e17f72", "f96b697d7cb7938d525a2f31aaf161d0",
    "c3fcd3d76192e4007dfb496cca67e13b", "d174ab98d277d9f5a5611c2c9f419d9f",
    "57edf4a22be3c955ac49da2e2107b67a"};

static int rfc_suite(const kernel_t *k)
{
    enum { N = sizeof RFC_IN / sizeof RFC_IN[0] };
    stream_t s[N];
    job_t jobs[N];
    for (int i = 0; i < N; i++) {
        memset(&s[i], 0, sizeof s[i]);
        memcpy(s[i].h, IV, 16);
        memset(&jobs[i], 0, sizeof jobs[i]);
        jobs[i].sid = i;
        jobs[i].order = i;
        jobs[i].view.buf = (void *)RFC_IN[i];
        jobs[i].view.len = (Py_ssize_t)strlen(RFC_IN[i]);
    }
    run_jobs(k, s, jobs, N, 1);
    for (int i = 0; i < N; i++) {
        char hex[33];
        const uint8_t *d = (const uint8_t *)s[i].h;
        for (int j = 0; j < 16; j++)
            snprintf(hex + 2 * j, 3, "%02x", d[j]);
        if (strcmp(hex, RFC_OUT[i]))
            return 0;
    }
    return 1;
}

static void check_kernels(void)
{
#if HAVE_X86
    __builtin_cpu_init();
#endif
    for (int i = NKERNELS - 1; i >= 0; i--) { /* scalar first: the others compare to it */
        kernel_t *k = &KERNELS[i];
        int has = 1;
#if HAVE_X86
        if (k->cpu && !strcmp(k->cpu, "avx512f"))
            has = __builtin_cpu_supports("avx512f");
        else if (k->cpu && !strcmp(k->cpu, "avx2"))
            has = __builtin_cpu_supports("avx2");
#endif
        k->ok = has && rfc_suite(k) && (k->lanes == 1 || self_test(k));
    }
}

/* --- the Python type ----------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    const kernel_t *kernel;
    stream_t *streams;
    Py_ssize_t n, cap;
} Lanes;

static const kernel_t *find_kernel(const char *name)
{
    for (int i = 0; i < NKERNELS; i++)
        if (!strcmp(KERNELS[i].name, name))
            return &KERNELS[i];
    return NULL;
}

static const kernel_t *best_kernel(void)
{
    /* the preference order is the table's order; avx2x2 before avx2 (see benchmarks/md5.py) */
    for (int i = 0; i < NKERNELS; i++)
        if (KERNELS[i].ok)
            return &KERNELS[i];
    return &KERNELS[NKERNELS - 1];
}

static int Lanes_init(Lanes *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"kernel", NULL};
    const char *name = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|z", kwlist, &name))
        return -1;
    const kernel_t *k = name ? find_kernel(name) : best_kernel();
    if (!k) {
        PyErr_Format(PyExc_ValueError, "unknown MD5 kernel '%s' (avx512, avx2x2, avx2 or scalar)",
                     name);
        return -1;
    }
    if (!k->ok) {
        PyErr_Format(PyExc_ValueError, "MD5 kernel %s is not available on this CPU", k->name);
        return -1;
    }
    self->kernel = k;
    return 0;
}

static void Lanes_dealloc(Lanes *self)
{
    PyMem_Free(self->streams);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Lanes_new_streams(Lanes *self, PyObject *args)
{
    Py_ssize_t count = 1;
    if (!PyArg_ParseTuple(args, "|n", &count))
        return NULL;
    if (count < 0) {
        PyErr_SetString(PyExc_ValueError, "count must be >= 0");
        return NULL;
    }
    if (self->n + count > self->cap) {
        Py_ssize_t cap = self->cap ? self->cap : 64;
        while (cap < self->n + count)
            cap *= 2;
        stream_t *s = PyMem_Realloc(self->streams, (size_t)cap * sizeof(stream_t));
        if (!s)
            return PyErr_NoMemory();
        self->streams = s;
        self->cap = cap;
    }
    Py_ssize_t first = self->n;
    for (Py_ssize_t i = 0; i < count; i++) {
        stream_t *s = &self->streams[first + i];
        memcpy(s->h, IV, 16);
        s->nbytes = 0;
        s->ntail = 0;
        s->finished = 0;
        s->busy = 0;
    }
    self->n += count;
    return PyLong_FromSsize_t(first);
}

static PyObject *Lanes_update(Lanes *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"pairs", "finish", NULL};
    PyObject *pairs;
    int finish = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|p", kwlist, &pairs, &finish))
        return NULL;
    PyObject *seq = PySequence_Fast(pairs, "pairs must be a sequence of (stream, buffer)");
    if (!seq)
        return NULL;
    Py_ssize_t njobs = PySequence_Fast_GET_SIZE(seq);
    job_t *jobs = PyMem_Calloc(njobs ? (size_t)njobs : 1, sizeof(job_t));
    Py_ssize_t got = 0;
    if (!jobs) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (; got < njobs; got++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, got);
        Py_ssize_t sid;
        PyObject *buf;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "each pair must be a (stream, buffer) tuple");
            goto fail;
        }
        sid = PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 0));
        if (sid == -1 && PyErr_Occurred())
            goto fail;
        if (sid < 0 || sid >= self->n) {
            PyErr_Format(PyExc_IndexError, "no stream %zd", sid);
            goto fail;
        }
        if (self->streams[sid].finished) {
            PyErr_Format(PyExc_ValueError, "stream %zd is already finished", sid);
            goto fail;
        }
        buf = PyTuple_GET_ITEM(item, 1);
        if (PyObject_GetBuffer(buf, &jobs[got].view, PyBUF_SIMPLE) < 0)
            goto fail;
        jobs[got].sid = sid;
        jobs[got].order = got;
    }
    qsort(jobs, (size_t)njobs, sizeof(job_t), job_cmp);
    Py_BEGIN_ALLOW_THREADS
    run_jobs(self->kernel, self->streams, jobs, njobs, finish);
    Py_END_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < njobs; i++)
        PyBuffer_Release(&jobs[i].view);
    PyMem_Free(jobs);
    Py_DECREF(seq);
    Py_RETURN_NONE;
fail:
    for (Py_ssize_t i = 0; i < got; i++)
        PyBuffer_Release(&jobs[i].view);
    PyMem_Free(jobs);
    Py_DECREF(seq);
    return NULL;
}

static PyObject *Lanes_finish(Lanes *self, PyObject *ids)
{
    /* every listed stream ends now: (id, b"") pairs with finish */
    PyObject *seq = PySequence_Fast(ids, "finish takes a sequence of stream ids");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *pairs = PyList_New(n);
    PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
    if (!pairs || !empty)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyTuple_Pack(2, PySequence_Fast_GET_ITEM(seq, i), empty);
        if (!t)
            goto fail;
        PyList_SET_ITEM(pairs, i, t);
    }
    PyObject *kw = Py_BuildValue("{s:O}", "finish", Py_True);
    PyObject *a = PyTuple_Pack(1, pairs);
    PyObject *r = (kw && a) ? Lanes_update(self, a, kw) : NULL;
    Py_XDECREF(kw);
    Py_XDECREF(a);
    Py_DECREF(pairs);
    Py_DECREF(empty);
    Py_DECREF(seq);
    return r;
fail:
    Py_XDECREF(pairs);
    Py_XDECREF(empty);
    Py_DECREF(seq);
    return NULL;
}

static PyObject *Lanes_digest(Lanes *self, PyObject *arg)
{
    Py_ssize_t sid = PyLong_AsSsize_t(arg);
    if (sid == -1 && PyErr_Occurred())
        return NULL;
    if (sid < 0 || sid >= self->n) {
        PyErr_Format(PyExc_IndexError, "no stream %zd", sid);
        return NULL;
    }
    if (!self->streams[sid].finished) {
        PyErr_Format(PyExc_ValueError, "stream %zd is not finished", sid);
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)self->streams[sid].h, 16);
}

static PyObject *Lanes_reset(Lanes *self, PyObject *Py_UNUSED(ignored))
{
    self->n = 0;
    Py_RETURN_NONE;
}

static PyObject *Lanes_get_kernel(Lanes *self, void *Py_UNUSED(c))
{
    return PyUnicode_FromString(self->kernel->name);
}

static PyObject *Lanes_get_lanes(Lanes *self, void *Py_UNUSED(c))
{
    return PyLong_FromLong(self->kernel->lanes);
}

static PyObject *Lanes_get_streams(Lanes *self, void *Py_UNUSED(c))
{
    return PyLong_FromSsize_t(self->n);
}

static PyMethodDef Lanes_methods[] = {
    {"new", (PyCFunction)Lanes_new_streams, METH_VARARGS,
     "new(count=1) -> id of the first of count new streams (ids are consecutive)"},
    {"update", (PyCFunction)(void (*)(void))Lanes_update, METH_VARARGS | METH_KEYWORDS,
     "update(pairs, finish=False): feed (stream id, buffer) pairs, in order per stream, "
     "hashed in lanes with the GIL released; finish ends every stream named"},
    {"finish", (PyCFunction)Lanes_finish, METH_O, "finish(ids): end these streams"},
    {"digest", (PyCFunction)Lanes_digest, METH_O, "digest(id) -> the 16-byte MD5 of a finished stream"},
    {"reset", (PyCFunction)Lanes_reset, METH_NOARGS, "forget every stream (ids restart at 0)"},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Lanes_getset[] = {
    {"kernel", (getter)Lanes_get_kernel, NULL, "the kernel in use", NULL},
    {"lanes", (getter)Lanes_get_lanes, NULL, "streams hashed at once", NULL},
    {"streams", (getter)Lanes_get_streams, NULL, "streams created since the last reset", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject LanesType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "wiseverify.core._md5mb.MD5Lanes",
    .tp_basicsize = sizeof(Lanes),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "MD5Lanes(kernel=None): many MD5 streams hashed at once in SIMD lanes",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lanes_init,
    .tp_dealloc = (destructor)Lanes_dealloc,
    .tp_methods = Lanes_methods,
    .tp_getset = Lanes_getset,
};

static PyObject *mod_kernels(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(a))
{
    PyObject *out = PyList_New(0);
    for (int i = 0; out && i < NKERNELS; i++)
        if (KERNELS[i].ok) {
            PyObject *s = PyUnicode_FromString(KERNELS[i].name);
            if (!s || PyList_Append(out, s) < 0) {
                Py_XDECREF(s);
                Py_CLEAR(out);
                break;
            }
            Py_DECREF(s);
        }
    return out;
}

static PyObject *mod_all_kernels(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(a))
{
    PyObject *out = PyDict_New();
    for (int i = 0; out && i < NKERNELS; i++) {
        PyObject *v = Py_BuildValue("{s:i,s:O}", "lanes", KERNELS[i].lanes, "available",
                                    KERNELS[i].ok ? Py_True : Py_False);
        if (!v || PyDict_SetItemString(out, KERNELS[i].name, v) < 0) {
            Py_XDECREF(v);
            Py_CLEAR(out);
            break;
        }
        Py_DECREF(v);
    }
    return out;
}

static PyObject *mod_best(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(a))
{
    return PyUnicode_FromString(best_kernel()->name);
}

static PyMethodDef mod_methods[] = {
    {"kernels", mod_kernels, METH_NOARGS,
     "the kernels this CPU can run that passed their known answers, preferred first"},
    {"all_kernels", mod_all_kernels, METH_NOARGS, "every kernel built: lanes and availability"},
    {"best_kernel", mod_best, METH_NOARGS, "the kernel MD5Lanes() uses by default"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_md5mb",
                                    "Multi-buffer MD5 (see _md5mb.c).", -1, mod_methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__md5mb(void)
{
    check_kernels();
    if (PyType_Ready(&LanesType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (!m)
        return NULL;
    Py_INCREF(&LanesType);
    if (PyModule_AddObject(m, "MD5Lanes", (PyObject *)&LanesType) < 0) {
        Py_DECREF(&LanesType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
