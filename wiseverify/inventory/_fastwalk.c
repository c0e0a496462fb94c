/*
 * The two hot loops of the source walk, without a Python object per entry.
 *
 * Why this exists: on a page-cached tree one statx(2) costs 1.5-2 us, and the
 * walk spent another 1-2 us per entry calling it through ctypes and 1-2 us
 * turning each name into a Python str and back into an Arrow key.  GNU find
 * spends about 2.5 us per entry in all, so the walk could not keep up with it.
 * Here a directory is listed into one bytes object of NUL-terminated keys, and
 * its names are stat'ed into the caller's buffer of struct statx records, each
 * in one call with the GIL released (so the stat threads of a task, and the
 * other tasks of the worker process, run while a directory is being read).
 *
 * Everything else (errors as rows, rate caps, threads, keys and NFC, Arrow)
 * stays in wiseverify/inventory.py, which falls back to os.listdir and ctypes
 * when this module is not built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* list_dir(dirfd, prefix) -> bytes: prefix + name + NUL for every entry but . and .. */
static PyObject *
list_dir(PyObject *self, PyObject *args)
{
    int fd;
    Py_buffer prefix;
    if (!PyArg_ParseTuple(args, "iy*", &fd, &prefix))
        return NULL;

    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    int err = 0;
    DIR *dir = NULL;
    if (buf == NULL) {
        PyBuffer_Release(&prefix);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    /* a directory stream of its own: the caller's descriptor stays open for statx */
    int dfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dfd < 0 || (dir = fdopendir(dfd)) == NULL) {
        err = errno;
        if (dfd >= 0)
            close(dfd);
    } else {
        rewinddir(dir); /* the duplicate shares the file offset */
        for (;;) {
            errno = 0;
            struct dirent *e = readdir(dir);
            if (e == NULL) {
                err = errno;
                break;
            }
            const char *n = e->d_name;
            if (n[0] == '.' && (n[1] == 0 || (n[1] == '.' && n[2] == 0)))
                continue;
            size_t nl = strlen(n), need = len + (size_t)prefix.len + nl + 1;
            if (need > cap) {
                while (need > cap)
                    cap *= 2;
                char *grown = realloc(buf, cap);
                if (grown == NULL) {
                    err = ENOMEM;
                    break;
                }
                buf = grown;
            }
            memcpy(buf + len, prefix.buf, (size_t)prefix.len);
            len += (size_t)prefix.len;
            memcpy(buf + len, n, nl + 1);
            len += nl + 1;
        }
        closedir(dir);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&prefix);
    if (err) {
        free(buf);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *out = PyBytes_FromStringAndSize(buf, (Py_ssize_t)len);
    free(buf);
    return out;
}

/*
 * stat_names(dirfd, blob, skip, records, flags, mask) -> bytes
 *
 * blob: NUL-terminated keys; the name relative to dirfd starts ``skip`` bytes
 * into each.  records: a writable buffer of at least one struct statx per
 * name.  Returns one int32 per name: 0, or the errno of its statx call.
 */
static PyObject *
stat_names(PyObject *self, PyObject *args)
{
    int fd, flags;
    unsigned int mask;
    Py_ssize_t skip;
    Py_buffer blob, recs;
    if (!PyArg_ParseTuple(args, "iy*nw*iI", &fd, &blob, &skip, &recs, &flags, &mask))
        return NULL;

    const char *p = blob.buf, *end = p + blob.len;
    Py_ssize_t n = 0;
    for (const char *q = p; q < end; q++)
        n += (*q == 0);
    if (blob.len && end[-1] != 0) {
        PyErr_SetString(PyExc_ValueError, "blob must end with a NUL");
        goto fail;
    }
    if ((size_t)recs.len < (size_t)n * sizeof(struct statx)) {
        PyErr_Format(PyExc_ValueError, "records hold %zd entries, blob has %zd",
                     recs.len / (Py_ssize_t)sizeof(struct statx), n);
        goto fail;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int32_t));
    if (out == NULL)
        goto fail;
    int32_t *rc = (int32_t *)PyBytes_AS_STRING(out);
    struct statx *r = recs.buf;
    int bad_skip = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        size_t kl = strlen(p);
        if ((size_t)skip > kl) {
            bad_skip = 1;
            break;
        }
        rc[i] = statx(fd, p + skip, flags, mask, &r[i]) == 0 ? 0 : errno;
        p += kl + 1;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&blob);
    PyBuffer_Release(&recs);
    if (bad_skip) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_ValueError, "a key is shorter than skip");
        return NULL;
    }
    return out;

fail:
    PyBuffer_Release(&blob);
    PyBuffer_Release(&recs);
    return NULL;
}

static PyMethodDef methods[] = {
    {"list_dir", list_dir, METH_VARARGS,
     "list_dir(dirfd, prefix) -> bytes of prefix+name+NUL per entry (no . or ..)"},
    {"stat_names", stat_names, METH_VARARGS,
     "stat_names(dirfd, blob, skip, records, flags, mask) -> int32 errno per name"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastwalk",
    "Directory listing and statx loops of the source walk, GIL released.", -1, methods,
};

PyMODINIT_FUNC
PyInit__fastwalk(void)
{
    if (sizeof(struct statx) != 256) {
        PyErr_SetString(PyExc_ImportError, "unexpected struct statx size");
        return NULL;
    }
    return PyModule_Create(&module);
}
