/* The runtime layer's crossings into and out of wasmtime, in C.
 *
 * Part of proxywasm_host's runtime layer (only proxywasm_host/runtime/_capi.py imports it).
 * It does what ctypes does slowly:
 *
 *   Boundary      the one object the C side reads per instance (one per WasmInstance): the
 *                 store context, the memory, the bound AbiHost methods by callback index,
 *                 the cached memory view, the exception a host callback parked, and the
 *                 level below which proxy_log is dropped here.  Declared fields, read as a
 *                 struct: nothing is looked up by attribute name on the hot path.  The
 *                 runtime updates it through its setters (set_memory, set_log_filter, which
 *                 the AbiHost calls when its log level or observer changes).  _capi.py has
 *                 its Python twin (PyBoundary) for the ctypes crossings;
 *   call()        a guest export through wasmtime_func_call_unchecked: the arguments go
 *                 into a raw-value buffer on the C stack, and the Boundary whose guest runs
 *                 is remembered per thread.  The GIL stays held while the guest runs: a
 *                 guest call takes microseconds and nearly every one calls back into Python,
 *                 so handing the GIL off and taking it back around the call and each
 *                 hostcall cost ~10 % of a request (benchmarks/README.md); the epoch ticker
 *                 that interrupts a looping guest is a C thread here (start_ticker), which
 *                 never needs the GIL.  Another Python thread waits while a guest runs (a
 *                 runaway guest: until its deadline traps it);
 *   trampoline    the one C host callback every imported host function is defined with
 *                 (wasmtime_linker_define_func_unchecked): it reads the raw argument
 *                 slots as its hostcall's spec says (i32 masked unsigned, i64 signed or
 *                 unsigned), calls the running Boundary's bound AbiHost method and writes
 *                 the i32 result back; an exception becomes a wasm trap (the exception is
 *                 parked on the Boundary by a Python handler) and never crosses into C;
 *   read(), give(), write_u32_pair()
 *                 copies out of and into guest memory for the hostcalls (AbiHost.read,
 *                 .give and .write_u32_pair, which keep the Python versions).
 *
 * It does not link against wasmtime: _capi.py hands over the addresses of the C API
 * functions from the library the `wasmtime` package already loaded.  It knows one rule of
 * the proxy-wasm ABI, because filters log far below the host's level on every request
 * (the tutorial filter: 6 trace lines per request): a proxy_log whose level is below the
 * Boundary's drop level (the host's log level while no observer is attached: the AbiHost
 * says which, see AbiHostBase.dropped_log_level) is answered OK here without entering
 * Python, as Envoy drops it without copying the message.  Everything else (a level above
 * critical, a range outside guest memory, a log that is kept) goes to AbiHost.proxy_log,
 * which applies the same rule.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <pthread.h>
#include <time.h>

typedef void *(*call_unchecked_fn)(void *ctx, const void *func, uint64_t *args, size_t nargs, void **trap);
typedef void *(*trap_new_fn)(const char *msg, size_t len);
typedef uint8_t *(*memory_data_fn)(const void *ctx, const void *mem);
typedef size_t (*memory_data_size_fn)(const void *ctx, const void *mem);
typedef void (*set_epoch_deadline_fn)(void *ctx, uint64_t ticks_beyond_current);

static call_unchecked_fn p_call_unchecked;
static trap_new_fn p_trap_new;
static memory_data_fn p_memory_data;
static memory_data_size_fn p_memory_data_size;
static set_epoch_deadline_fn p_set_epoch_deadline;

/* (boundary, exc) -> address of a wasm_trap_t*; parks exc on the boundary.  Must not raise. */
static PyObject *exception_handler;

/* wasmtime_val_raw_t is 16 bytes: argument i is at u64 slot 2*i */
#define RAW_STRIDE 2
#define MAX_PARAMS 16

typedef struct {
    Py_ssize_t index;        /* into the Boundary's host_fns */
    int nparams;
    int has_result;
    int log_filter;          /* proxy_log: (level, ptr, size), see dropped_log() */
    char kinds[MAX_PARAMS];  /* 'u': i32 (masked, unsigned), 'q': i64 signed, 'Q': i64 unsigned */
} hostcall_spec;

/* The boundary struct: everything the C side reads of one instance. */
typedef struct {
    PyObject_HEAD
    void *ctx;                   /* wasmtime_context_t* of the instance's store */
    void *mem;                   /* wasmtime_memory_t* of its memory export; NULL until known */
    PyObject *host_fns;          /* list: the bound AbiHost method per callback index (or None) */
    PyObject *view;              /* the memory view handed out since guest code last ran, or NULL */
    PyObject *pending;           /* the exception a host callback raised, parked for the caller, or NULL */
    long drop_logs_below;        /* proxy_log below this level is answered OK here; 0: none is */
} Boundary;

static PyTypeObject BoundaryType;

/* per thread: the Boundary whose guest code runs (innermost) */
static _Thread_local Boundary *tl_inst;

static int ready(void) {
    if (p_call_unchecked == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "proxywasm_host.runtime._speedups used before init()");
        return 0;
    }
    return 1;
}

/* Boundary(ctx, host_fns: list) */
static PyObject *boundary_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *ctx_obj, *fns;
    static char *kwlist[] = {"ctx", "host_fns", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!:Boundary", kwlist, &ctx_obj, &PyList_Type, &fns))
        return NULL;
    void *ctx = PyLong_AsVoidPtr(ctx_obj);
    if (ctx == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "Boundary(): no store context (address 0)");
        return NULL;
    }
    Boundary *self = (Boundary *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->ctx = ctx;
    self->host_fns = Py_NewRef(fns);
    return (PyObject *)self;
}

static int boundary_traverse(Boundary *self, visitproc visit, void *arg) {
    Py_VISIT(self->host_fns);
    Py_VISIT(self->view);
    Py_VISIT(self->pending);
    return 0;
}

static int boundary_clear(Boundary *self) {
    Py_CLEAR(self->host_fns);
    Py_CLEAR(self->view);
    Py_CLEAR(self->pending);
    return 0;
}

static void boundary_dealloc(Boundary *self) {
    PyObject_GC_UnTrack(self);
    boundary_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* set_memory(address of the wasmtime_memory_t) */
static PyObject *boundary_set_memory(Boundary *self, PyObject *arg) {
    void *mem = PyLong_AsVoidPtr(arg);
    if (mem == NULL && PyErr_Occurred())
        return NULL;
    self->mem = mem;
    Py_CLEAR(self->view);
    Py_RETURN_NONE;
}

/* set_log_filter(level): proxy_log below level is dropped here (0: none is) */
static PyObject *boundary_set_log_filter(Boundary *self, PyObject *arg) {
    long level = PyLong_AsLong(arg);
    if (level == -1 && PyErr_Occurred())
        return NULL;
    self->drop_logs_below = level < 0 ? 0 : level;
    Py_RETURN_NONE;
}

/* memory() -> a writable memoryview of the whole linear memory as it is now (made once
 * per stretch of host code: dropped whenever guest code ran, which may grow memory) */
static PyObject *boundary_memory(Boundary *self, PyObject *unused) {
    if (self->view == NULL) {
        size_t size = self->mem ? p_memory_data_size(self->ctx, self->mem) : 0;
        self->view = size ? PyMemoryView_FromMemory((char *)p_memory_data(self->ctx, self->mem), (Py_ssize_t)size, PyBUF_WRITE)
                          : PyMemoryView_FromMemory("", 0, PyBUF_WRITE);
        if (self->view == NULL)
            return NULL;
    }
    return Py_NewRef(self->view);
}

static PyObject *boundary_get_pending(Boundary *self, void *closure) {
    return Py_NewRef(self->pending ? self->pending : Py_None);
}

static int boundary_set_pending(Boundary *self, PyObject *value, void *closure) {
    if (value == NULL || value == Py_None) {
        Py_CLEAR(self->pending);
        return 0;
    }
    if (!PyExceptionInstance_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "Boundary.pending must be an exception or None");
        return -1;
    }
    Py_XSETREF(self->pending, Py_NewRef(value));
    return 0;
}

static PyObject *boundary_get_host_fns(Boundary *self, void *closure) {
    return Py_NewRef(self->host_fns);
}

static PyObject *boundary_get_drop_logs_below(Boundary *self, void *closure) {
    return PyLong_FromLong(self->drop_logs_below);
}

static PyMethodDef boundary_methods[] = {
    {"set_memory", (PyCFunction)boundary_set_memory, METH_O, "Set the address of the memory export."},
    {"set_log_filter", (PyCFunction)boundary_set_log_filter, METH_O, "Drop proxy_log below this level in C (0: none)."},
    {"memory", (PyCFunction)boundary_memory, METH_NOARGS, "A view over guest memory as it is now."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef boundary_getset[] = {
    {"pending", (getter)boundary_get_pending, (setter)boundary_set_pending, "The exception a host callback parked, or None.", NULL},
    {"host_fns", (getter)boundary_get_host_fns, NULL, "The bound AbiHost methods by callback index (a list).", NULL},
    {"drop_logs_below", (getter)boundary_get_drop_logs_below, NULL, "proxy_log below this level is dropped in C (0: none is).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BoundaryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "proxywasm_host.runtime._speedups.Boundary",
    .tp_doc = "What the C crossings read of one instance (see _speedups.c).",
    .tp_basicsize = sizeof(Boundary),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = boundary_new,
    .tp_traverse = (traverseproc)boundary_traverse,
    .tp_clear = (inquiry)boundary_clear,
    .tp_dealloc = (destructor)boundary_dealloc,
    .tp_methods = boundary_methods,
    .tp_getset = boundary_getset,
};

/* init(call_unchecked, trap_new, memory_data, memory_data_size, set_epoch_deadline,
 *      exception_handler) */
static PyObject *sp_init(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "init() takes 6 arguments");
        return NULL;
    }
    void *ptrs[5];
    for (int i = 0; i < 5; i++) {
        ptrs[i] = PyLong_AsVoidPtr(args[i]);
        if (ptrs[i] == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "init(): a C API function address is 0");
            return NULL;
        }
    }
    if (!PyCallable_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError, "init(): exception_handler must be callable");
        return NULL;
    }
    p_call_unchecked = (call_unchecked_fn)ptrs[0];
    p_trap_new = (trap_new_fn)ptrs[1];
    p_memory_data = (memory_data_fn)ptrs[2];
    p_memory_data_size = (memory_data_size_fn)ptrs[3];
    p_set_epoch_deadline = (set_epoch_deadline_fn)ptrs[4];
    Py_INCREF(args[5]);
    Py_XSETREF(exception_handler, args[5]);
    Py_RETURN_NONE;
}

/* call(on_trap, name, boundary, func, nslots, nparams, has_result, deadline_ticks, *args)
 *   -> int | None
 *
 * Runs the guest export `name` (the address of its wasmtime_func_t is func) in the store
 * of `boundary` with args (ints, kept modulo 2**64: a negative i32 arrives as its two's
 * complement) in raw slots 0, 2, 4, ... of a buffer on the C stack (so calls nest freely:
 * a host function may call the guest's allocator), and returns raw slot 0 masked to 32
 * bits, or None for an export without results.  The leading arguments are fixed per
 * export and instance (the runtime binds them once with functools.partial).
 *
 * When the guest trapped or wasmtime failed, on_trap(trap, error) is called with the
 * addresses of the wasm_trap_t* and wasmtime_error_t* (either may be 0; on_trap owns both)
 * and must raise; its exception is what the call raises.
 *
 * The epoch deadline is armed deadline_ticks ahead unless this boundary's guest is already
 * running on this thread (a nested call must not extend the outer call's deadline).
 * The boundary's memory view is dropped afterwards: the guest may have grown its memory. */
#define MAX_SLOTS 64
#define FIXED_ARGS 8
static PyObject *sp_call(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < FIXED_ARGS) {
        PyErr_SetString(PyExc_TypeError, "call() takes at least 8 arguments");
        return NULL;
    }
    if (!ready())
        return NULL;
    PyObject *on_trap = args[0];
    if (!PyObject_TypeCheck(args[2], &BoundaryType)) {
        PyErr_SetString(PyExc_TypeError, "call(): the third argument must be a Boundary");
        return NULL;
    }
    Boundary *b = (Boundary *)args[2];
    void *func = PyLong_AsVoidPtr(args[3]);
    size_t nslots = PyLong_AsSize_t(args[4]);
    Py_ssize_t nparams = PyLong_AsSsize_t(args[5]);
    int has_result = PyObject_IsTrue(args[6]);
    unsigned long long ticks = PyLong_AsUnsignedLongLong(args[7]);
    if (PyErr_Occurred())
        return NULL;
    Py_ssize_t n = nargs - FIXED_ARGS;
    if (n != nparams) {
        PyErr_Format(PyExc_TypeError, "%S takes %zd arguments, %zd given", args[1], nparams, n);
        return NULL;
    }
    if (nslots > MAX_SLOTS || (size_t)n > nslots) {
        PyErr_SetString(PyExc_ValueError, "call(): more arguments than raw slots, or too many slots");
        return NULL;
    }
    uint64_t buf[MAX_SLOTS * RAW_STRIDE];
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long v = PyLong_AsUnsignedLongLongMask(args[FIXED_ARGS + i]);
        if (v == (unsigned long long)-1 && PyErr_Occurred())
            return NULL;
        buf[i * RAW_STRIDE] = v;
    }
    void *ctx = b->ctx;
    Boundary *prev_inst = tl_inst;
    if (prev_inst != b)
        p_set_epoch_deadline(ctx, ticks);
    void *trap = NULL;
    Py_INCREF(b);
    tl_inst = b;
    void *err = p_call_unchecked(ctx, func, buf, nslots, &trap);
    tl_inst = prev_inst;

    Py_CLEAR(b->view);
    Py_DECREF(b);
    if (err != NULL || trap != NULL) {
        PyErr_Clear();
        PyObject *res = PyObject_CallFunction(on_trap, "NN", PyLong_FromVoidPtr(trap), PyLong_FromVoidPtr(err));
        if (res != NULL) {
            Py_DECREF(res);
            PyErr_SetString(PyExc_RuntimeError, "call(): on_trap returned instead of raising");
        }
        return NULL;
    }
    if (!has_result)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLong((unsigned long)(buf[0] & 0xFFFFFFFFu));
}

/* Turn the pending Python exception into a trap (the handler parks it on the boundary). */
static void *exception_to_trap(Boundary *b) {
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (exc != NULL && tb != NULL)
        PyException_SetTraceback(exc, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    void *trap = NULL;
    if (exception_handler != NULL) {
        PyObject *res = PyObject_CallFunctionObjArgs(exception_handler, b ? (PyObject *)b : Py_None,
                                                     exc ? exc : Py_None, NULL);
        if (res != NULL) {
            trap = PyLong_AsVoidPtr(res);
            Py_DECREF(res);
        }
        PyErr_Clear();
    }
    Py_XDECREF(exc);
    if (trap == NULL) {
        static const char msg[] = "host function raised an exception";
        trap = p_trap_new(msg, sizeof msg - 1);
    }
    return trap;
}

/* 1 when proxy_log(level, ptr, size) is dropped: level below the boundary's drop level
 * (which is 0, none, while an observer sees every hostcall; never above critical + 1) and
 * the message inside guest memory (a filtered log with a bad range still fails).  0 when
 * Python must answer (AbiHost.proxy_log decides the same way). */
static int dropped_log(const Boundary *b, const uint64_t *raw) {
    uint64_t level = raw[0] & 0xFFFFFFFFu;
    uint64_t ptr = raw[1 * RAW_STRIDE] & 0xFFFFFFFFu;
    uint64_t size = raw[2 * RAW_STRIDE] & 0xFFFFFFFFu;
    if (level > 5 || (long)level >= b->drop_logs_below)
        return 0;
    if (size != 0 && (b->mem == NULL || ptr + size > (uint64_t)p_memory_data_size(b->ctx, b->mem)))
        return 0;
    return 1;
}

static void *run_hostcall(const hostcall_spec *spec, uint64_t *raw) {
    Boundary *b = tl_inst;
    if (b == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "host function called with no instance running");
        return exception_to_trap(NULL);
    }
    if (spec->log_filter && dropped_log(b, raw)) {
        raw[0] = 0; /* Status OK */
        return NULL;
    }
    Py_CLEAR(b->view); /* (the guest wrote to memory: a view handed out before is stale if it grew) */
    PyObject *fns = b->host_fns;
    PyObject *fn = spec->index < PyList_GET_SIZE(fns) ? PyList_GET_ITEM(fns, spec->index) : NULL;
    if (fn == NULL || fn == Py_None) {
        PyErr_Format(PyExc_TypeError, "host function #%zd is not bound on this instance", spec->index);
        return exception_to_trap(b);
    }
    Py_INCREF(b);
    Py_INCREF(fn);
    PyObject *argv[MAX_PARAMS];
    int built = 0;
    for (; built < spec->nparams; built++) {
        uint64_t v = raw[built * RAW_STRIDE];
        PyObject *o;
        switch (spec->kinds[built]) {
        case 'u': o = PyLong_FromUnsignedLong((unsigned long)(v & 0xFFFFFFFFu)); break;
        case 'q': o = PyLong_FromLongLong((long long)v); break;
        default:  o = PyLong_FromUnsignedLongLong((unsigned long long)v); break;
        }
        if (o == NULL)
            break;
        argv[built] = o;
    }
    PyObject *res = NULL;
    if (built == spec->nparams)
        res = PyObject_Vectorcall(fn, argv, (size_t)spec->nparams, NULL);
    for (int i = 0; i < built; i++)
        Py_DECREF(argv[i]);
    Py_DECREF(fn);
    void *trap = NULL;
    if (res == NULL) {
        trap = exception_to_trap(b);
    } else {
        if (spec->has_result) {
            unsigned long long r = PyLong_AsUnsignedLongLongMask(res);
            if (r == (unsigned long long)-1 && PyErr_Occurred())
                trap = exception_to_trap(b);
            else
                raw[0] = r & 0xFFFFFFFFu;
        }
        Py_DECREF(res);
    }
    Py_DECREF(b);
    return trap;
}

/* size_t callback(void *env, wasmtime_caller_t *caller, wasmtime_val_raw_t *args_and_results, size_t n)
 * (wasmtime_func_unchecked_callback_t returns a wasm_trap_t*, NULL for none) */
static void *trampoline(void *env, void *caller, uint64_t *raw, size_t n) {
    (void)caller;
    (void)n;
    /* Inside call() this thread holds the GIL and Ensure only counts; a guest entered some
     * other way (e.g. a start function during instantiation, called by wasmtime-py, which
     * lets the GIL go) gets it here. */
    PyGILState_STATE gil = PyGILState_Ensure();
    void *trap = run_hostcall((const hostcall_spec *)env, raw);
    PyGILState_Release(gil);
    return trap;
}

/* hostcall_spec(index, kinds: str, has_result, log_filter) -> address of a process-lifetime
 * spec; log_filter is for proxy_log alone (kinds "uuu", has_result) */
static PyObject *sp_hostcall_spec(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "hostcall_spec() takes 4 arguments");
        return NULL;
    }
    Py_ssize_t index = PyLong_AsSsize_t(args[0]);
    if (index == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t len;
    const char *kinds = PyUnicode_AsUTF8AndSize(args[1], &len);
    if (kinds == NULL)
        return NULL;
    if (len > MAX_PARAMS) {
        PyErr_SetString(PyExc_ValueError, "hostcall_spec(): too many parameters");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        if (kinds[i] != 'u' && kinds[i] != 'q' && kinds[i] != 'Q') {
            PyErr_Format(PyExc_ValueError, "hostcall_spec(): unknown parameter kind %c", kinds[i]);
            return NULL;
        }
    }
    int has_result = PyObject_IsTrue(args[2]);
    int log_filter = PyObject_IsTrue(args[3]);
    if (has_result < 0 || log_filter < 0)
        return NULL;
    if (log_filter && (len != 3 || memcmp(kinds, "uuu", 3) != 0 || !has_result)) {
        PyErr_SetString(PyExc_ValueError, "hostcall_spec(): log_filter needs (i32, i32, i32) -> i32");
        return NULL;
    }
    hostcall_spec *spec = PyMem_RawCalloc(1, sizeof *spec); /* lives as long as the process */
    if (spec == NULL)
        return PyErr_NoMemory();
    spec->index = index;
    spec->nparams = (int)len;
    spec->has_result = has_result;
    spec->log_filter = log_filter;
    memcpy(spec->kinds, kinds, (size_t)len);
    return PyLong_FromVoidPtr(spec);
}

static PyObject *sp_trampoline_address(PyObject *self, PyObject *unused) {
    return PyLong_FromVoidPtr((void *)trampoline);
}

/* set_active(boundary) -> the previous one: which Boundary host callbacks act for when a
 * guest is entered other than through call() (instantiation).  Like call(), it keeps a
 * borrowed pointer: the caller keeps the boundary alive and restores the previous one
 * before letting go. */
static PyObject *sp_set_active(PyObject *self, PyObject *arg) {
    if (arg != Py_None && !PyObject_TypeCheck(arg, &BoundaryType)) {
        PyErr_SetString(PyExc_TypeError, "set_active(): a Boundary or None");
        return NULL;
    }
    PyObject *prev = tl_inst ? (PyObject *)tl_inst : Py_None;
    Py_INCREF(prev);
    tl_inst = arg == Py_None ? NULL : (Boundary *)arg;
    return prev;
}

/* The common start of the memory functions: nargs == want, the C API handed over, and
 * args[at], args[at + 1] as the store context and the memory.  0, or -1 with an exception. */
static int memory_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, const char *name, int at,
                       void **ctx, void **mem) {
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments", name, want);
        return -1;
    }
    if (!ready())
        return -1;
    *ctx = PyLong_AsVoidPtr(args[at]);
    *mem = PyLong_AsVoidPtr(args[at + 1]);
    if (PyErr_Occurred())
        return -1;
    if (*ctx == NULL || *mem == NULL) {
        PyErr_Format(PyExc_ValueError, "%s(): no store context or no memory (address 0)", name);
        return -1;
    }
    return 0;
}

/* read(ctx, memory, error, ptr, size) -> bytes: a copy of guest memory [ptr, ptr + size);
 * raises error() when the range is not inside the memory (size 0 is always b""). */
static PyObject *sp_read(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    void *ctx, *mem;
    if (memory_args(args, nargs, 5, "read", 0, &ctx, &mem) < 0)
        return NULL;
    unsigned long long ptr = PyLong_AsUnsignedLongLong(args[3]);
    unsigned long long size = PyLong_AsUnsignedLongLong(args[4]);
    if (PyErr_Occurred())
        return NULL;
    if (size == 0)
        return PyBytes_FromStringAndSize(NULL, 0);
    size_t have = p_memory_data_size(ctx, mem);
    if (ptr > have || size > have - ptr) {
        PyErr_SetNone(args[2]);
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)p_memory_data(ctx, mem) + ptr, (Py_ssize_t)size);
}

/* give(allocate, ctx, memory, error, data) -> ptr: allocate(len(data)) in the guest (its
 * exceptions pass through), then copy data there; raises error() when the allocator gave 0
 * or a range outside the memory.  data is non-empty bytes-like. */
static PyObject *sp_give(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    void *ctx, *mem;
    if (memory_args(args, nargs, 5, "give", 1, &ctx, &mem) < 0)
        return NULL;
    Py_buffer data;
    if (PyObject_GetBuffer(args[4], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = NULL;
    PyObject *size = PyLong_FromSsize_t(data.len);
    PyObject *got = size ? PyObject_Vectorcall(args[0], &size, 1, NULL) : NULL;
    Py_XDECREF(size);
    if (got == NULL)
        goto done;
    unsigned long long ptr = PyLong_AsUnsignedLongLong(got);
    Py_DECREF(got);
    if (ptr == (unsigned long long)-1 && PyErr_Occurred())
        goto done;
    size_t have = p_memory_data_size(ctx, mem); /* after the allocator: it may have grown memory */
    if (ptr == 0 || ptr > have || (size_t)data.len > have - ptr) {
        PyErr_SetNone(args[3]);
        goto done;
    }
    memcpy(p_memory_data(ctx, mem) + ptr, data.buf, (size_t)data.len);
    result = PyLong_FromUnsignedLongLong(ptr);
done:
    PyBuffer_Release(&data);
    return result;
}

/* write_u32_pair(ctx, memory, error, ptr1, value1, ptr2, value2): little-endian u32s, the
 * first written before the second is checked; raises error() at the first outside memory. */
static PyObject *sp_write_u32_pair(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    void *ctx, *mem;
    if (memory_args(args, nargs, 7, "write_u32_pair", 0, &ctx, &mem) < 0)
        return NULL;
    size_t have = p_memory_data_size(ctx, mem);
    uint8_t *base = p_memory_data(ctx, mem);
    for (int i = 0; i < 2; i++) {
        unsigned long long ptr = PyLong_AsUnsignedLongLong(args[3 + 2 * i]);
        unsigned long value = PyLong_AsUnsignedLongMask(args[4 + 2 * i]);
        if (PyErr_Occurred())
            return NULL;
        if (have < 4 || ptr > have - 4) {
            PyErr_SetNone(args[2]);
            return NULL;
        }
        uint8_t *p = base + ptr;
        p[0] = (uint8_t)(value & 0xFF);
        p[1] = (uint8_t)((value >> 8) & 0xFF);
        p[2] = (uint8_t)((value >> 16) & 0xFF);
        p[3] = (uint8_t)((value >> 24) & 0xFF);
    }
    Py_RETURN_NONE;
}

/* The epoch ticker: a plain C thread that advances the engine's epoch every interval, so a
 * guest running past its deadline is interrupted.  It never touches Python (a Python thread
 * would take the GIL 100 times a second from whoever is running tests). */
typedef void (*increment_epoch_fn)(void *engine);
static struct {
    increment_epoch_fn increment;
    void *engine;
    long interval_ns;
} ticker;
static int ticker_started;

static void *ticker_main(void *unused) {
    (void)unused;
    struct timespec ts = {ticker.interval_ns / 1000000000L, ticker.interval_ns % 1000000000L};
    for (;;) {
        nanosleep(&ts, NULL);
        ticker.increment(ticker.engine);
    }
    return NULL;
}

/* start_ticker(increment_epoch, engine, interval_ns, owner): once per process; False when a
 * ticker already runs.  owner is the Python object that frees the engine when it goes: a
 * reference to it is kept for good, so the engine outlives the interpreter's teardown and
 * the ticker never touches a freed engine. */
static PyObject *ticker_owner;
static PyObject *sp_start_ticker(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "start_ticker() takes 4 arguments");
        return NULL;
    }
    void *fn = PyLong_AsVoidPtr(args[0]);
    void *engine = PyLong_AsVoidPtr(args[1]);
    long interval = PyLong_AsLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    if (fn == NULL || engine == NULL || interval <= 0) {
        PyErr_SetString(PyExc_ValueError, "start_ticker(): null function or engine, or interval <= 0");
        return NULL;
    }
    if (ticker_started)
        Py_RETURN_FALSE;
    ticker.increment = (increment_epoch_fn)fn;
    ticker.engine = engine;
    ticker.interval_ns = interval;
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&thread, &attr, ticker_main, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    ticker_started = 1;
    Py_INCREF(args[3]);
    ticker_owner = args[3];
    Py_RETURN_TRUE;
}

static PyMethodDef methods[] = {
    {"start_ticker", (PyCFunction)(void (*)(void))sp_start_ticker, METH_FASTCALL, "Advance an engine's epoch from a C thread."},
    {"init", (PyCFunction)(void (*)(void))sp_init, METH_FASTCALL, "Hand over the C API's function addresses."},
    {"call", (PyCFunction)(void (*)(void))sp_call, METH_FASTCALL, "Call a guest export (unchecked)."},
    {"hostcall_spec", (PyCFunction)(void (*)(void))sp_hostcall_spec, METH_FASTCALL, "Describe one host function."},
    {"trampoline_address", sp_trampoline_address, METH_NOARGS, "The C host callback's address."},
    {"set_active", sp_set_active, METH_O, "Set this thread's running Boundary; return the previous."},
    {"read", (PyCFunction)(void (*)(void))sp_read, METH_FASTCALL, "Copy bytes out of guest memory."},
    {"give", (PyCFunction)(void (*)(void))sp_give, METH_FASTCALL, "Allocate in the guest and copy bytes there."},
    {"write_u32_pair", (PyCFunction)(void (*)(void))sp_write_u32_pair, METH_FASTCALL, "Write two u32s into guest memory."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "proxywasm_host.runtime._speedups",
    "C crossings into and out of wasmtime for proxywasm_host's runtime layer.", -1, methods,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    if (PyType_Ready(&BoundaryType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Boundary", (PyObject *)&BoundaryType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
