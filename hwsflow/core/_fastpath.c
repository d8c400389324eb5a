/* CPython glue of the compiled loop: argument conversion, the group look-up against GroupTable.by_group
 * and the builder's public methods.  All parsing, accounting and packing is in fastpath_core.c.
 *
 * Accounting has one truth, the Python objects (GroupBinding, DataSource): a run loads the state of
 * each group it meets from them and writes it back before it returns, so that the Python path,
 * `hwsflow status`, pool re-syncs and bind/release see every change as soon as the run ends. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "fastpath_core.h"

#define CACHE 64 /* distinct groups one run keeps loaded; more and the run stops, writes back, restarts */

typedef struct {
    PyObject_HEAD
    struct hws_layout layout;
} LoopObject;

struct entry {
    uint32_t group;
    PyObject *binding;        /* NULL: not the loop's (foreign, egress, too big), cached as such */
    PyObject *source;
    struct hws_group state;
    int dirty;
};

struct run_ctx {
    uint32_t ids[CACHE];      /* entries[i].group: scanned by every look-up */
    PyObject *by_group;
    long header_room;
    struct entry entries[CACHE];
    struct hws_source sources[CACHE];
    PyObject *source_objs[CACHE];
    size_t nentries, nsources;
    int full;                 /* the cache is full: the look-up declines until the run restarts */
    int error;                /* a Python exception is set */
};

/* attribute names, interned once: a look-up by a C string would make a str object every time */
enum attr { A_DIRECTION, A_HEADER, A_DROPS, A_LAST_GROUP_SEQ, A_SOURCE, A_IFINDEX, A_FLOW_SEQ, A_POOL, A_RESYNC_CREDIT, A_POOL_HOLD, A_BUFFER, A_POSITION, A_COUNT };
static const char *const attr_text[A_COUNT] = {"direction", "header", "drops", "last_group_seq", "source", "ifindex", "flow_seq", "pool", "resync_credit", "pool_hold", "buffer", "position"};
static PyObject *attr[A_COUNT];

static int get_u64(PyObject *obj, enum attr name, uint64_t *out)
{
    PyObject *value = PyObject_GetAttr(obj, attr[name]);
    if (value == NULL)
        return -1;
    int ok = PyLong_Check(value);
    if (ok) {
        *out = PyLong_AsUnsignedLongLong(value);
        ok = !(*out == (uint64_t)-1 && PyErr_Occurred());
    }
    Py_DECREF(value);
    if (!ok) {
        /* negative, beyond 64 bits or not an int: the Python path keeps this group */
        if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        return 1;
    }
    return 0;
}

static int set_u64(PyObject *obj, enum attr name, uint64_t value)
{
    PyObject *v = PyLong_FromUnsignedLongLong(value);
    if (v == NULL)
        return -1;
    int rc = PyObject_SetAttr(obj, attr[name], v);
    Py_DECREF(v);
    return rc;
}

/* 0 loaded, 1 not the loop's, -1 error */
static int load(struct run_ctx *ctx, struct entry *e, PyObject *binding)
{
    PyObject *direction = PyObject_GetAttr(binding, attr[A_DIRECTION]);
    if (direction == NULL)
        return -1;
    int ingress = PyUnicode_Check(direction) && PyUnicode_CompareWithASCIIString(direction, "ingress") == 0;
    Py_DECREF(direction);
    if (!ingress)
        return 1;
    uint64_t header, ifindex, drops, last = 0;
    int rc;
    if ((rc = get_u64(binding, A_HEADER, &header)) != 0 || (rc = get_u64(binding, A_DROPS, &drops)) != 0)
        return rc;
    if ((long long)header > ctx->header_room)
        return 1;
    PyObject *last_obj = PyObject_GetAttr(binding, attr[A_LAST_GROUP_SEQ]);
    if (last_obj == NULL)
        return -1;
    int has_last = last_obj != Py_None;
    Py_DECREF(last_obj);
    if (has_last && ((rc = get_u64(binding, A_LAST_GROUP_SEQ, &last)) != 0 || last > UINT32_MAX))
        return rc ? rc : 1;
    PyObject *source = PyObject_GetAttr(binding, attr[A_SOURCE]);
    if (source == NULL)
        return -1;
    rc = get_u64(source, A_IFINDEX, &ifindex);
    if (rc == 0 && ifindex > 0xFFFFFF)
        rc = 1; /* the expanded form: the Python path */
    size_t s;
    for (s = 0; rc == 0 && s < ctx->nsources && ctx->source_objs[s] != source; s++)
        ;
    if (rc == 0 && s == ctx->nsources) {
        struct hws_source *st = &ctx->sources[s];
        if ((rc = get_u64(source, A_FLOW_SEQ, &st->flow_seq)) == 0 && (rc = get_u64(source, A_POOL, &st->pool)) == 0
            && (rc = get_u64(source, A_DROPS, &st->drops)) == 0
            && (rc = get_u64(source, A_RESYNC_CREDIT, &st->resync_credit)) == 0)
            rc = get_u64(source, A_POOL_HOLD, &st->pool_hold);
        if (rc == 0) {
            Py_INCREF(source);
            ctx->source_objs[ctx->nsources++] = source;
        }
    }
    if (rc != 0) {
        Py_DECREF(source);
        return rc;
    }
    Py_INCREF(binding);
    e->binding = binding;
    e->source = source; /* the reference GetAttr returned */
    e->state = (struct hws_group){.ifindex = (uint32_t)ifindex, .header = (uint32_t)header, .has_last = has_last,
                                  .last_seq = (uint32_t)last, .drops = drops, .source = &ctx->sources[s]};
    return 0;
}

static struct hws_group *lookup(void *opaque, uint32_t group)
{
    struct run_ctx *ctx = opaque;
    for (size_t i = 0; i < ctx->nentries; i++) {
        if (ctx->ids[i] == group) {
            struct entry *e = &ctx->entries[i];
            if (e->binding == NULL)
                return NULL;
            e->dirty = 1; /* hws_run accounts what it looks up, or stops for a full datagram */
            return &e->state;
        }
    }
    if (ctx->error || ctx->nentries == CACHE) {
        ctx->full = 1;
        return NULL;
    }
    ctx->ids[ctx->nentries] = group;
    struct entry *e = &ctx->entries[ctx->nentries++];
    *e = (struct entry){.group = group};
    PyObject *key = PyLong_FromUnsignedLong(group);
    if (key == NULL) {
        ctx->error = 1;
        return NULL;
    }
    PyObject *binding = PyDict_GetItemWithError(ctx->by_group, key); /* borrowed */
    Py_DECREF(key);
    if (binding == NULL) {
        if (PyErr_Occurred())
            ctx->error = 1;
        return NULL;
    }
    int rc = load(ctx, e, binding);
    if (rc < 0)
        ctx->error = 1;
    if (rc != 0)
        return NULL;
    e->dirty = 1;
    return &e->state;
}

/* Write every touched group's state back and drop the references; -1 if an exception is set. */
static int store(struct run_ctx *ctx)
{
    int rc = ctx->error ? -1 : 0;
    for (size_t i = 0; i < ctx->nentries; i++) {
        struct entry *e = &ctx->entries[i];
        if (e->binding == NULL)
            continue;
        if (rc == 0 && e->dirty && e->state.has_last
            && (set_u64(e->binding, A_LAST_GROUP_SEQ, e->state.last_seq) < 0
                || set_u64(e->binding, A_DROPS, e->state.drops) < 0))
            rc = -1;
        Py_DECREF(e->binding);
        Py_DECREF(e->source);
    }
    for (size_t s = 0; s < ctx->nsources; s++) {
        const struct hws_source *st = &ctx->sources[s];
        PyObject *src = ctx->source_objs[s];
        if (rc == 0 && (set_u64(src, A_FLOW_SEQ, st->flow_seq) < 0 || set_u64(src, A_POOL, st->pool) < 0
                        || set_u64(src, A_DROPS, st->drops) < 0
                        || set_u64(src, A_RESYNC_CREDIT, st->resync_credit) < 0
                        || set_u64(src, A_POOL_HOLD, st->pool_hold) < 0))
            rc = -1;
        Py_DECREF(src);
    }
    ctx->nentries = ctx->nsources = 0;
    ctx->full = 0;
    return rc;
}

static PyObject *str_commit, *str_commit_and_flush; /* interned method names */

/* builder.commit(end, samples), or with uptime_ms (not NULL) builder.commit_and_flush(end, samples, uptime_ms) */
static PyObject *call_commit(PyObject *builder, size_t end, size_t samples, PyObject *uptime_ms)
{
    PyObject *args[4] = {builder, PyLong_FromSize_t(end), PyLong_FromSize_t(samples), uptime_ms};
    PyObject *result = NULL;
    if (args[1] != NULL && args[2] != NULL)
        result = PyObject_VectorcallMethod(uptime_ms ? str_commit_and_flush : str_commit, args,
                                           (uptime_ms ? 4 : 3) | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_XDECREF(args[1]);
    Py_XDECREF(args[2]);
    return result;
}

static int builder_state(PyObject *builder, Py_buffer *view, size_t *pos, long *room)
{
    PyObject *buffer = PyObject_GetAttr(builder, attr[A_BUFFER]);
    if (buffer == NULL)
        return -1;
    int rc = PyObject_GetBuffer(buffer, view, PyBUF_WRITABLE);
    Py_DECREF(buffer);
    if (rc < 0)
        return -1;
    PyObject *p = PyObject_GetAttr(builder, attr[A_POSITION]);
    PyObject *r = p ? PyObject_CallMethod(builder, "compact_header_room", NULL) : NULL;
    Py_ssize_t position = p ? PyLong_AsSsize_t(p) : -1;
    *room = r ? PyLong_AsLong(r) : -1;
    Py_XDECREF(p);
    Py_XDECREF(r);
    if (PyErr_Occurred() || position < 0 || (size_t)position > (size_t)view->len) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "builder position outside its buffer");
        PyBuffer_Release(view);
        return -1;
    }
    *pos = (size_t)position;
    return 0;
}

PyDoc_STRVAR(run_doc, "run(buf, lengths, stride, first, uptime_ms, builder, by_group) -> (stop, packed)");

static PyObject *Loop_run(LoopObject *self, PyObject *args)
{
    Py_buffer area, out_view;
    PyObject *lengths_obj, *builder, *by_group;
    Py_ssize_t stride, first;
    PyObject *uptime;
    if (!PyArg_ParseTuple(args, "y*OnnO!OO!", &area, &lengths_obj, &stride, &first, &PyLong_Type, &uptime,
                          &builder, &PyDict_Type, &by_group))
        return NULL;
    PyObject *seq = PySequence_Fast(lengths_obj, "lengths must be a sequence");
    if (seq == NULL || stride < 1 || first < 0) {
        if (seq != NULL)
            PyErr_SetString(PyExc_ValueError, "stride must be positive and first not negative");
        Py_XDECREF(seq);
        PyBuffer_Release(&area);
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    size_t *lengths = PyMem_Malloc(sizeof(size_t) * (size_t)(count ? count : 1));
    struct run_ctx *ctx = PyMem_Calloc(1, sizeof *ctx);
    PyObject *result = NULL;
    if (lengths == NULL || ctx == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        Py_ssize_t n = PyLong_AsSsize_t(item);
        if (n < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "a negative slot length");
            goto out;
        }
        lengths[i] = (size_t)n;
    }
    struct hws_batch batch = {area.buf, (size_t)area.len, lengths, (size_t)count, (size_t)stride};
    struct hws_out out;
    long room;
    if (builder_state(builder, &out_view, &out.pos, &room) < 0)
        goto out;
    out.buf = out_view.buf;
    out.max = (size_t)out_view.len;
    out.samples = 0;
    ctx->by_group = by_group;
    ctx->header_room = room;
    size_t index = first < count ? (size_t)first : (size_t)count, need = 0, committed = 0;
    for (;;) {
        enum hws_stop stop = hws_run(&self->layout, &batch, &index, &out, lookup, ctx, &need);
        if (ctx->error)
            break;
        if (stop == HWS_LEAVE && ctx->full) {
            /* too many groups for one pass: store, then go on from this slot */
            if (store(ctx) < 0)
                break;
            continue;
        }
        if (stop != HWS_FULL)
            break;
        /* the datagram is full: the builder finishes it and says where the next sample goes */
        PyObject *at = call_commit(builder, out.pos, out.samples, uptime);
        committed += out.samples;
        out.samples = 0;
        if (at == NULL)
            break;
        Py_ssize_t pos = PyLong_AsSsize_t(at);
        Py_DECREF(at);
        if (pos < 0 || (size_t)pos > out.max) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "builder.commit_and_flush returned a position outside its buffer");
            break;
        }
        out.pos = (size_t)pos;
        if (need > out.max - out.pos) { /* the look-up admits no group whose samples an empty datagram lacks room for */
            PyErr_Format(PyExc_ValueError, "a sample of %zu bytes does not fit an empty datagram", need);
            break;
        }
    }
    int failed = PyErr_Occurred() != NULL;
    size_t packed = committed + out.samples;
    if (!failed && out.samples) {
        PyObject *r = call_commit(builder, out.pos, out.samples, NULL);
        failed = r == NULL;
        Py_XDECREF(r);
    }
    if (failed) {
        /* keep the first exception; still put the state back and release the references */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        ctx->error = 0;
        store(ctx);
        PyErr_Restore(type, value, tb);
    } else if (store(ctx) == 0) {
        result = Py_BuildValue("nn", (Py_ssize_t)index, (Py_ssize_t)packed);
    }
    PyBuffer_Release(&out_view);
out:
    PyMem_Free(lengths);
    PyMem_Free(ctx);
    Py_DECREF(seq);
    PyBuffer_Release(&area);
    return result;
}

/* name -> int, for the names given, from a mapping; -1 and an exception when one is missing */
static int mapping_u32(PyObject *mapping, const char *name, uint32_t *out)
{
    PyObject *v = PyMapping_GetItemString(mapping, name);
    if (v == NULL)
        return -1;
    unsigned long n = PyLong_AsUnsignedLong(v);
    Py_DECREF(v);
    if (n == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    if (n > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "%s: %lu is beyond 32 bits", name, n);
        return -1;
    }
    *out = (uint32_t)n;
    return 0;
}

static int Loop_init(LoopObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"checks", "fields", "data_at", "flow_at", "flow_size", "flow_constants", NULL};
    PyObject *checks, *fields, *flow_at, *constants;
    unsigned int data_at, flow_size;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOIOIO", kwlist, &checks, &fields, &data_at, &flow_at,
                                     &flow_size, &constants))
        return -1;
    struct hws_layout *l = &self->layout;
    hws_layout_init(l);
    l->data_at = data_at;
    l->out_size = flow_size;
    PyObject *seq = PySequence_Fast(checks, "checks must be a sequence of (offset, size, value)");
    if (seq == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        unsigned int at, size, value;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "III", &at, &size, &value)
            || hws_layout_add_check(l, at, size, value) < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "too many checks, or a size other than 1, 2 or 4");
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    for (int i = 0; i < HWS_IN_COUNT; i++) {
        PyObject *v = PyMapping_GetItemString(fields, hws_in_names[i]);
        if (v == NULL)
            return -1;
        int ok = PyArg_ParseTuple(v, "II", &l->in[i].at, &l->in[i].size);
        Py_DECREF(v);
        if (!ok)
            return -1;
    }
    for (int i = 0; i < HWS_OUT_COUNT; i++)
        if (mapping_u32(flow_at, hws_out_names[i], &l->out_at[i]) < 0)
            return -1;
    if (PyMapping_Length(flow_at) != HWS_OUT_COUNT) {
        PyErr_SetString(PyExc_ValueError, "flow_at names fields the compiled loop does not know");
        return -1;
    }
    if (hws_layout_finish(l) < 0) {
        PyErr_SetString(PyExc_ValueError, "the psample or flow sample layout is not one the compiled loop can use");
        return -1;
    }
    Py_ssize_t given = 0;
    for (int i = 0; i < HWS_OUT_COUNT; i++) {
        if (hws_out_computed[i])
            continue;
        uint32_t value;
        if (mapping_u32(constants, hws_out_names[i], &value) < 0 || hws_layout_set_out_constant(l, i, value) < 0)
            return -1;
        given++;
    }
    if (PyMapping_Length(constants) != given) {
        PyErr_SetString(PyExc_ValueError, "flow_constants names a field the compiled loop computes, or none at all");
        return -1;
    }
    return 0;
}

static PyMethodDef Loop_methods[] = {
    {"run", (PyCFunction)Loop_run, METH_VARARGS, run_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LoopType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "hwsflow.core._fastpath.Loop",
    .tp_basicsize = sizeof(LoopObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The usual psample layout and the compact flow sample's, for run().",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Loop_init,
    .tp_methods = Loop_methods,
};

static PyObject *names(const char *const *list, int count)
{
    PyObject *t = PyTuple_New(count);
    for (int i = 0; t != NULL && i < count; i++) {
        PyObject *s = PyUnicode_FromString(list[i]);
        if (s == NULL) {
            Py_CLEAR(t);
            break;
        }
        PyTuple_SET_ITEM(t, i, s);
    }
    return t;
}

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_fastpath",
    .m_doc = "The compiled per-sample loop (see hwsflow/core/fastpath.py).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    if (PyType_Ready(&LoopType) < 0)
        return NULL;
    for (int i = 0; i < A_COUNT; i++)
        if ((attr[i] = PyUnicode_InternFromString(attr_text[i])) == NULL)
            return NULL;
    str_commit = PyUnicode_InternFromString("commit");
    str_commit_and_flush = PyUnicode_InternFromString("commit_and_flush");
    if (str_commit == NULL || str_commit_and_flush == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&LoopType);
    if (PyModule_AddObject(m, "Loop", (PyObject *)&LoopType) < 0
        || PyModule_AddObject(m, "IN_FIELDS", names(hws_in_names, HWS_IN_COUNT)) < 0
        || PyModule_AddObject(m, "FLOW_FIELDS", names(hws_out_names, HWS_OUT_COUNT)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
