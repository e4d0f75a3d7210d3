/* The serialized-map ("pairs") codec of the proxy-wasm ABI, in C.
 *
 * Part of proxywasm_host's sans-IO core: proxywasm_host/core/codec.py uses these functions
 * when this extension is built and keeps the same functions in Python otherwise (and when
 * PROXYWASM_HOST_NO_SPEEDUPS is set); tests/core/test_codec_speedups.py holds the two to the
 * same output on generated input.  No wasmtime, no I/O: bytes in, bytes out.  The rest of
 * the hot core is compiled by mypyc from its Python source; this stays hand-written C
 * because mypyc's build of codec.py's Python twin is several times slower (measured:
 * benchmarks/README.md, "Compiled core").
 *
 * The format (docs/abi-notes.md §6.1): u32 N, N x (u32 key_len, u32 value_len), then for each pair
 * key NUL value NUL; all integers little-endian.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* cpp-host parses a bigger map, or one with more pairs, as an empty map (codec.py says so too) */
#define MAX_PAIRS_BYTES (1 << 20)
#define MAX_PAIRS_COUNT 1024

static void put_u32(char *p, uint32_t v) {
    p[0] = (char)(v & 0xFF);
    p[1] = (char)((v >> 8) & 0xFF);
    p[2] = (char)((v >> 16) & 0xFF);
    p[3] = (char)((v >> 24) & 0xFF);
}

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* The key or value `obj` as (data, size): bytes directly, anything else through the
 * buffer protocol (view is then filled and must be released). */
static int as_bytes(PyObject *obj, const char **data, Py_ssize_t *size, Py_buffer *view, int *held) {
    *held = 0;
    if (PyBytes_CheckExact(obj)) {
        *data = PyBytes_AS_STRING(obj);
        *size = PyBytes_GET_SIZE(obj);
        return 0;
    }
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) {
        PyErr_Format(PyExc_TypeError, "encode_pairs(): keys and values must be bytes-like, not %.100s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    *held = 1;
    *data = (const char *)view->buf;
    *size = view->len;
    return 0;
}

/* A (key, value) pair's two items (borrowed). */
static int pair_items(PyObject *pair, PyObject **key, PyObject **value) {
    if (PyTuple_CheckExact(pair) && PyTuple_GET_SIZE(pair) == 2) {
        *key = PyTuple_GET_ITEM(pair, 0);
        *value = PyTuple_GET_ITEM(pair, 1);
        return 0;
    }
    if (PyList_CheckExact(pair) && PyList_GET_SIZE(pair) == 2) {
        *key = PyList_GET_ITEM(pair, 0);
        *value = PyList_GET_ITEM(pair, 1);
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "encode_pairs(): each pair must be a (key, value) tuple, not %.100s",
                 Py_TYPE(pair)->tp_name);
    return -1;
}

typedef struct {
    const char *data;
    Py_ssize_t size;
    int held;       /* view must be released */
    Py_buffer view;
    PyObject *obj;  /* a bytes object's own reference (it stays alive until written) */
} piece;

#define STACK_PIECES 64

/* encode_pairs(pairs) -> bytes: every key and value is looked at once (its bytes are held
 * in pieces[]), the output sized from them, then written. */
static PyObject *codec_encode_pairs(PyObject *self, PyObject *pairs) {
    PyObject *seq = PySequence_Fast(pairs, "encode_pairs() needs a sequence of (key, value) pairs");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *out = NULL;
    piece stack[STACK_PIECES];
    piece *pieces = stack;
    Py_ssize_t got = 0;
    if (n > (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "encode_pairs(): too many pairs");
        goto done;
    }
    if (2 * n > STACK_PIECES) {
        pieces = PyMem_Malloc((size_t)(2 * n) * sizeof *pieces);
        if (pieces == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    Py_ssize_t total = 4 + 8 * n;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *kv[2];
        if (pair_items(items[i], &kv[0], &kv[1]) < 0)
            goto done;
        for (int j = 0; j < 2; j++, got++) {
            piece *pc = &pieces[got];
            pc->obj = NULL;
            if (as_bytes(kv[j], &pc->data, &pc->size, &pc->view, &pc->held) < 0)
                goto done;
            if (!pc->held)
                pc->obj = Py_NewRef(kv[j]);
            if ((uint64_t)pc->size > UINT32_MAX) {
                got++;
                PyErr_SetString(PyExc_OverflowError, "encode_pairs(): a key or value is 4 GiB or more");
                goto done;
            }
            total += pc->size + 1;
        }
    }
    out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        goto done;
    char *lens = PyBytes_AS_STRING(out);
    char *text = lens + 4 + 8 * n;
    put_u32(lens, (uint32_t)n);
    lens += 4;
    for (Py_ssize_t k = 0; k < got; k++) {
        put_u32(lens, (uint32_t)pieces[k].size);
        lens += 4;
        memcpy(text, pieces[k].data, (size_t)pieces[k].size);
        text[pieces[k].size] = '\0';
        text += pieces[k].size + 1;
    }
done:
    for (Py_ssize_t k = 0; k < got; k++) {
        if (pieces[k].held)
            PyBuffer_Release(&pieces[k].view);
        Py_XDECREF(pieces[k].obj);
    }
    if (pieces != stack)
        PyMem_Free(pieces);
    Py_DECREF(seq);
    return out;
}

/* decode_pairs(buf, offset=0, size=None) -> list[(bytes, bytes)] | None */
static PyObject *codec_decode_pairs(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "decode_pairs(buf, offset=0, size=None)");
        return NULL;
    }
    Py_ssize_t offset = 0;
    if (nargs >= 2) {
        offset = PyLong_AsSsize_t(args[1]);
        if (offset == -1 && PyErr_Occurred())
            return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = NULL;
    Py_ssize_t size;
    if (nargs == 3 && args[2] != Py_None) {
        size = PyLong_AsSsize_t(args[2]);
        if (size == -1 && PyErr_Occurred())
            goto done;
    } else {
        size = view.len - offset;
    }
    if (offset < 0 || size < 0 || offset > view.len || size > view.len - offset) {
        PyErr_Format(PyExc_ValueError, "decode_pairs(): %zd bytes at offset %zd are outside the %zd-byte buffer",
                     size, offset, view.len); /* (offset + size might overflow) */
        goto done;
    }
    if (size < 4) {
        out = PyList_New(0);
        goto done;
    }
    if (size > MAX_PAIRS_BYTES)
        goto none;
    const unsigned char *p = (const unsigned char *)view.buf + offset;
    uint32_t n = get_u32(p);
    if (n > MAX_PAIRS_COUNT)
        goto none;
    Py_ssize_t data = 4 + 8 * (Py_ssize_t)n;
    if (data > size)
        goto none;
    /* validate first, then build: a malformed map allocates nothing */
    Py_ssize_t pos = data;
    for (uint32_t i = 0; i < n; i++) {
        Py_ssize_t klen = get_u32(p + 4 + 8 * i), vlen = get_u32(p + 8 + 8 * i);
        Py_ssize_t kend = pos + klen, vend = kend + 1 + vlen;
        if (vend + 1 > size || p[kend] != 0 || p[vend] != 0)
            goto none;
        pos = vend + 1;
    }
    if (pos != size)
        goto none;
    out = PyList_New((Py_ssize_t)n);
    if (out == NULL)
        goto done;
    pos = data;
    for (uint32_t i = 0; i < n; i++) {
        Py_ssize_t klen = get_u32(p + 4 + 8 * i), vlen = get_u32(p + 8 + 8 * i);
        PyObject *key = PyBytes_FromStringAndSize((const char *)p + pos, klen);
        PyObject *value = key ? PyBytes_FromStringAndSize((const char *)p + pos + klen + 1, vlen) : NULL;
        PyObject *pair = value ? PyTuple_New(2) : NULL;
        if (pair == NULL) {
            Py_XDECREF(key);
            Py_XDECREF(value);
            Py_CLEAR(out);
            goto done;
        }
        PyTuple_SET_ITEM(pair, 0, key);
        PyTuple_SET_ITEM(pair, 1, value);
        PyList_SET_ITEM(out, (Py_ssize_t)i, pair);
        pos += klen + vlen + 2;
    }
    goto done;
none:
    out = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&view);
    return out;
}

/* The lower-cased UTF-8 of header name `text` (new reference), from or into the names
 * cache (a dict, grown while it has fewer than names_max entries).  NULL with an exception
 * (UnicodeEncodeError for lone surrogates). */
static PyObject *header_name(PyObject *text, PyObject *names, Py_ssize_t names_max) {
    PyObject *name = PyDict_GetItemWithError(names, text);
    if (name != NULL)
        return Py_NewRef(name);
    if (PyErr_Occurred())
        return NULL;
    Py_ssize_t len;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &len);
    if (utf8 == NULL)
        return NULL;
    /* A new object to lower-case in place: PyBytes_FromStringAndSize(utf8, 1) would hand
     * back CPython's shared one-byte singleton, and changing it changes every b"Q" in the
     * process.  (NULL, len) allocates a fresh one for any len > 0. */
    name = PyBytes_FromStringAndSize(NULL, len);
    if (name == NULL)
        return NULL;
    char *b = PyBytes_AS_STRING(name);
    for (Py_ssize_t i = 0; i < len; i++) {
        char c = utf8[i];
        b[i] = (c >= 'A' && c <= 'Z') ? (char)(c + ('a' - 'A')) : c; /* bytes.lower(): ASCII only */
    }
    if (PyDict_GET_SIZE(names) < names_max && PyDict_SetItem(names, text, name) < 0) {
        Py_DECREF(name);
        return NULL;
    }
    return name;
}

/* text_pairs(pairs: list, names: dict, names_max: int) -> tuple[(bytes, bytes), ...] | None
 *
 * A header map's entries from a list of (str, str) tuples: names lower-cased UTF-8 (see
 * header_name), values UTF-8.  None when an item is anything else or does not encode (lone
 * surrogates): the caller's general path handles, or reports, those. */
static PyObject *codec_text_pairs(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyList_CheckExact(args[0]) || !PyDict_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "text_pairs(pairs: list, names: dict, names_max: int)");
        return NULL;
    }
    PyObject *pairs = args[0], *names = args[1];
    Py_ssize_t names_max = PyLong_AsSsize_t(args[2]);
    if (names_max == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(pairs);
    for (Py_ssize_t i = 0; i < n; i++) { /* every item's shape first: nothing cached for a refused list */
        PyObject *item = PyList_GET_ITEM(pairs, i);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2 ||
            !PyUnicode_CheckExact(PyTuple_GET_ITEM(item, 0)) || !PyUnicode_CheckExact(PyTuple_GET_ITEM(item, 1)))
            Py_RETURN_NONE;
    }
    PyObject *out = PyTuple_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        /* (an allocation may run the GC, and a finalizer could change the list) */
        if (PyList_GET_SIZE(pairs) != n || !PyTuple_CheckExact(PyList_GET_ITEM(pairs, i)))
            goto general;
        PyObject *item = PyList_GET_ITEM(pairs, i); /* a tuple: its items cannot change */
        Py_INCREF(item);
        PyObject *name = header_name(PyTuple_GET_ITEM(item, 0), names, names_max);
        PyObject *value = name ? PyUnicode_AsUTF8String(PyTuple_GET_ITEM(item, 1)) : NULL;
        PyObject *entry = value ? PyTuple_New(2) : NULL;
        Py_DECREF(item);
        if (entry == NULL) {
            Py_XDECREF(name);
            Py_XDECREF(value);
            if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
                goto general;
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(entry, 0, name);
        PyTuple_SET_ITEM(entry, 1, value);
        PyTuple_SET_ITEM(out, i, entry);
    }
    return out;
general:
    PyErr_Clear();
    Py_DECREF(out);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"text_pairs", (PyCFunction)(void (*)(void))codec_text_pairs, METH_FASTCALL,
     "A header map's entries from (str, str) pairs, or None for anything else."},
    {"encode_pairs", codec_encode_pairs, METH_O, "Serialize (key, value) pairs in the proxy-wasm map format."},
    {"decode_pairs", (PyCFunction)(void (*)(void))codec_decode_pairs, METH_FASTCALL,
     "Parse a serialized map; None when malformed or over cpp-host's limits."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "proxywasm_host.core._codec",
    "The proxy-wasm serialized-map codec in C (used by proxywasm_host.core.codec).", -1, methods,
};

PyMODINIT_FUNC PyInit__codec(void) {
    return PyModule_Create(&module);
}
