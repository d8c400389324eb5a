/* CPython glue of the compiled loop: argument conversion, the group look-up against GroupTable.by_group
 * and the builder's public methods.  All parsing, accounting and packing is in fastpath_core.c.
 *
 * Accounting has one truth, the Python objects (GroupBinding, DataSource): a run loads the state of
 * each group it meets from them and writes it back before it returns, so that the Python path,
 * `hwsflow status`, pool re-syncs and bind/release see every change as soon as the run ends. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <sys/socket.h>
#include <sys/uio.h>

#include "fastpath_core.h"

#define CACHE 64 /* distinct groups one run keeps loaded; more and the run stops, writes back, restarts */

typedef struct {
    PyObject_HEAD
    struct hws_layout layout;
    uint32_t tail_at[HWS_TAIL_COUNT]; /* each datagram header field's offset from the builder's tail_at */
    struct run_ctx *ctx;       /* a run's look-up cache, allocated at the first: ~10 KB, zeroed once, not per run */
    int busy;                  /* a run is under way (it calls Python, which must not start another) */
} LoopObject;

/* ---------------------------------------------------------------- Outbox: finished datagrams, sent by sendmmsg */

#define SEND_CHUNK 1024 /* UIO_MAXIOV: the most messages one sendmmsg call takes */

typedef struct {
    PyObject_HEAD
    uint8_t *area;             /* the datagrams back to back */
    size_t used, area_cap;
    size_t *offsets, *lengths; /* of each datagram in area */
    size_t count, cap;
    struct mmsghdr *hdrs;      /* SEND_CHUNK of each, built at every send: area may have moved since */
    struct iovec *iov;
} OutboxObject;

static PyTypeObject OutboxType;

static int grow(void **p, size_t *cap, size_t need, size_t item, size_t first)
{
    size_t n = *cap ? *cap : first;
    while (n < need) {
        if (n > (size_t)PY_SSIZE_T_MAX / 2 / item) {
            PyErr_NoMemory();
            return -1;
        }
        n *= 2;
    }
    void *q = PyMem_Realloc(*p, n * item);
    if (q == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *p = q;
    *cap = n;
    return 0;
}

/* Copy one finished datagram in: 0, or -1 with MemoryError. */
static int outbox_add(OutboxObject *o, const uint8_t *data, size_t len)
{
    if (o->count == o->cap) {
        size_t cap = o->cap, cap2 = o->cap;
        if (grow((void **)&o->offsets, &cap, o->count + 1, sizeof(size_t), 64) < 0
            || grow((void **)&o->lengths, &cap2, o->count + 1, sizeof(size_t), 64) < 0)
            return -1; /* cap unchanged: neither array is used past it */
        o->cap = cap < cap2 ? cap : cap2;
    }
    if (len > o->area_cap - o->used && grow((void **)&o->area, &o->area_cap, o->used + len, 1, 64 * 1500) < 0)
        return -1;
    memcpy(o->area + o->used, data, len);
    o->offsets[o->count] = o->used;
    o->lengths[o->count] = len;
    o->used += len;
    o->count++;
    return 0;
}

static void Outbox_dealloc(OutboxObject *o)
{
    PyMem_Free(o->area);
    PyMem_Free(o->offsets);
    PyMem_Free(o->lengths);
    PyMem_Free(o->hdrs);
    PyMem_Free(o->iov);
    Py_TYPE(o)->tp_free((PyObject *)o);
}

static PyObject *Outbox_append(OutboxObject *o, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int rc = outbox_add(o, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Outbox_datagrams(OutboxObject *o, PyObject *Py_UNUSED(ignored))
{
    PyObject *list = PyList_New((Py_ssize_t)o->count);
    for (size_t i = 0; list != NULL && i < o->count; i++) {
        PyObject *d = PyBytes_FromStringAndSize((const char *)o->area + o->offsets[i], (Py_ssize_t)o->lengths[i]);
        if (d == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, d);
    }
    return list;
}

static PyObject *Outbox_clear(OutboxObject *o, PyObject *Py_UNUSED(ignored))
{
    o->count = o->used = 0;
    Py_RETURN_NONE;
}

static PyObject *Outbox_send(OutboxObject *o, PyObject *args)
{
    int fd;
    Py_ssize_t first;
    if (!PyArg_ParseTuple(args, "in", &fd, &first))
        return NULL;
    if (first < 0 || (size_t)first > o->count) {
        PyErr_SetString(PyExc_ValueError, "first is outside the datagrams loaded");
        return NULL;
    }
    if (o->hdrs == NULL) {
        o->hdrs = PyMem_Calloc(SEND_CHUNK, sizeof *o->hdrs);
        o->iov = PyMem_Calloc(SEND_CHUNK, sizeof *o->iov);
        if (o->hdrs == NULL || o->iov == NULL) {
            PyMem_Free(o->hdrs);
            PyMem_Free(o->iov);
            o->hdrs = NULL;
            o->iov = NULL;
            return PyErr_NoMemory();
        }
    }
    size_t done = 0, todo = o->count - (size_t)first;
    while (done < todo) {
        size_t n = todo - done < SEND_CHUNK ? todo - done : SEND_CHUNK;
        for (size_t i = 0; i < n; i++) {
            size_t d = (size_t)first + done + i;
            o->iov[i] = (struct iovec){.iov_base = o->area + o->offsets[d], .iov_len = o->lengths[d]};
            o->hdrs[i] = (struct mmsghdr){.msg_hdr = {.msg_iov = &o->iov[i], .msg_iovlen = 1}};
        }
        int sent = sendmmsg(fd, o->hdrs, (unsigned int)n, MSG_DONTWAIT);
        if (sent < 0) {
            if (done == 0)
                return PyErr_SetFromErrno(PyExc_OSError);
            break; /* the first of this chunk failed: a short count, as one sendmmsg call reports it */
        }
        done += (size_t)sent;
        if ((size_t)sent < n)
            break;
    }
    return PyLong_FromSize_t(done);
}

static PyObject *Outbox_loaded(OutboxObject *o, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(o->count);
}

PyDoc_STRVAR(send_doc, "send(fd, first) -> int: datagrams first.. in order on a connected socket, never blocking; "
                       "how many the kernel took.  An error on the first raises OSError; a short count means "
                       "datagram first + count failed and its error code is not known.");

static PyMethodDef Outbox_methods[] = {
    {"append", (PyCFunction)Outbox_append, METH_O, "append(datagram): copy a finished datagram in"},
    {"datagrams", (PyCFunction)Outbox_datagrams, METH_NOARGS, "datagrams() -> list[bytes], oldest first"},
    {"clear", (PyCFunction)Outbox_clear, METH_NOARGS, "clear(): forget every datagram"},
    {"send", (PyCFunction)Outbox_send, METH_VARARGS, send_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Outbox_getset[] = {
    {"loaded", (getter)Outbox_loaded, NULL, "how many datagrams it holds", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject OutboxType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "hwsflow.core._fastpath.Outbox",
    .tp_basicsize = sizeof(OutboxObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Finished datagrams, copied back to back, sent to a connected socket with sendmmsg.",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)Outbox_dealloc,
    .tp_methods = Outbox_methods,
    .tp_getset = Outbox_getset,
};

/* ---------------------------------------------------------------- Loop */

struct entry {
    uint32_t group;
    PyObject *binding;        /* NULL: not the loop's (foreign, egress, too big), cached as such */
    PyObject *source;
    struct hws_group state;
    uint64_t loaded_drops;    /* what the binding held: store writes only what changed */
    uint32_t loaded_last_rate;
    int dirty;
};

struct run_ctx {
    uint32_t ids[CACHE];      /* entries[i].group: scanned by every look-up */
    PyObject *by_group;
    long header_room;
    struct entry entries[CACHE];
    struct hws_source sources[CACHE];
    struct hws_source loaded[CACHE]; /* what each source object held */
    PyObject *source_objs[CACHE];
    size_t nentries, nsources;
    int full;                 /* the cache is full: the look-up declines until the run restarts */
    int error;                /* a Python exception is set */
};

/* attribute names, interned once: a look-up by a C string would make a str object every time */
enum attr { A_DIRECTION, A_HEADER, A_DROPS, A_LAST_GROUP_SEQ, A_LAST_RATE, A_SOURCE, A_IFINDEX, A_FLOW_SEQ, A_POOL, A_RESYNC_CREDIT, A_POOL_HOLD, A_BUFFER, A_POSITION, A_OUTBOX, A_TAIL_AT, A_HEADER_LENGTH, A_SEQUENCE, A_PENDING, A_COUNT };
static const char *const attr_text[A_COUNT] = {"direction", "header", "drops", "last_group_seq", "last_rate", "source", "ifindex", "flow_seq", "pool", "resync_credit", "pool_hold", "buffer", "position", "outbox", "tail_at", "header_length", "sequence", "pending"};
static PyObject *attr[A_COUNT];

/* 0 with *out, 1 when value is not an int from 0 to 2**64 - 1 (the Python path keeps that group), -1 on error */
static int as_u64(PyObject *value, uint64_t *out)
{
    int ok = PyLong_Check(value);
    if (ok) {
        *out = PyLong_AsUnsignedLongLong(value);
        ok = !(*out == (uint64_t)-1 && PyErr_Occurred());
    }
    if (!ok) {
        if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        return 1;
    }
    return 0;
}

static int get_u64(PyObject *obj, enum attr name, uint64_t *out)
{
    PyObject *value = PyObject_GetAttr(obj, attr[name]);
    if (value == NULL)
        return -1;
    int rc = as_u64(value, out);
    Py_DECREF(value);
    return rc;
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
    uint64_t header, ifindex, drops, last = 0, last_rate;
    int rc;
    if ((rc = get_u64(binding, A_HEADER, &header)) != 0 || (rc = get_u64(binding, A_DROPS, &drops)) != 0
        || (rc = get_u64(binding, A_LAST_RATE, &last_rate)) != 0)
        return rc;
    if (last_rate > UINT32_MAX)
        return 1;
    if ((long long)header > ctx->header_room)
        return 1;
    PyObject *last_obj = PyObject_GetAttr(binding, attr[A_LAST_GROUP_SEQ]);
    if (last_obj == NULL)
        return -1;
    int has_last = last_obj != Py_None;
    rc = has_last ? as_u64(last_obj, &last) : 0;
    Py_DECREF(last_obj);
    if (rc != 0 || last > UINT32_MAX)
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
            ctx->loaded[s] = *st;
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
                                  .last_seq = (uint32_t)last, .last_rate = (uint32_t)last_rate,
                                  .drops = drops, .source = &ctx->sources[s]};
    e->loaded_drops = drops;
    e->loaded_last_rate = (uint32_t)last_rate;
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
                || (e->state.last_rate != e->loaded_last_rate
                    && set_u64(e->binding, A_LAST_RATE, e->state.last_rate) < 0)
                || (e->state.drops != e->loaded_drops && set_u64(e->binding, A_DROPS, e->state.drops) < 0)))
            rc = -1;
        Py_DECREF(e->binding);
        Py_DECREF(e->source);
    }
    for (size_t s = 0; s < ctx->nsources; s++) {
        const struct hws_source *st = &ctx->sources[s], *was = &ctx->loaded[s];
        PyObject *src = ctx->source_objs[s];
        /* the object still holds what was loaded (no Python ran on it since): write what changed */
#define STORE(field, name) (st->field != was->field && set_u64(src, name, st->field) < 0)
        if (rc == 0 && (STORE(flow_seq, A_FLOW_SEQ) || STORE(pool, A_POOL) || STORE(drops, A_DROPS)
                        || STORE(resync_credit, A_RESYNC_CREDIT) || STORE(pool_hold, A_POOL_HOLD)))
            rc = -1;
#undef STORE
        Py_DECREF(src);
    }
    ctx->nentries = ctx->nsources = 0;
    ctx->full = 0;
    return rc;
}

static PyObject *str_finished_elsewhere; /* interned method name */

/* builder.finished_elsewhere(datagrams, end, samples) */
static int call_finished(PyObject *builder, size_t datagrams, size_t end, size_t samples)
{
    PyObject *args[4] = {builder, PyLong_FromSize_t(datagrams), PyLong_FromSize_t(end), PyLong_FromSize_t(samples)};
    PyObject *result = NULL;
    if (args[1] != NULL && args[2] != NULL && args[3] != NULL)
        result = PyObject_VectorcallMethod(str_finished_elsewhere, args, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    for (int i = 1; i < 4; i++)
        Py_XDECREF(args[i]);
    Py_XDECREF(result);
    return result == NULL ? -1 : 0;
}

/* a builder attribute that is an int from 0 to max: 0, or -1 with an exception */
static int builder_u32(PyObject *builder, enum attr name, uint32_t max, uint32_t *out)
{
    PyObject *v = PyObject_GetAttr(builder, attr[name]);
    if (v == NULL)
        return -1;
    unsigned long n = PyLong_Check(v) ? PyLong_AsUnsignedLong(v) : (unsigned long)-1;
    Py_DECREF(v);
    if (n > max) {
        if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "builder.%U is not an int from 0 to %lu", attr[name], (unsigned long)max);
        }
        return -1;
    }
    *out = (uint32_t)n;
    return 0;
}

/* What finishing a datagram needs from the builder: its outbox, the header's layout, the next sequence number
 * and the samples already in the open datagram. */
struct finishing {
    OutboxObject *outbox;      /* borrowed from the builder, which holds it */
    struct hws_tail tail;
    uint32_t sequence, pending;
};

static int builder_finishing(LoopObject *self, PyObject *builder, size_t max, struct finishing *f)
{
    PyObject *outbox = PyObject_GetAttr(builder, attr[A_OUTBOX]);
    if (outbox == NULL)
        return -1;
    int ok = PyObject_TypeCheck(outbox, &OutboxType);
    f->outbox = (OutboxObject *)outbox;
    Py_DECREF(outbox); /* the builder keeps it alive for the run */
    if (!ok) {
        PyErr_SetString(PyExc_TypeError, "the compiled loop finishes datagrams into a _fastpath.Outbox: builder.outbox "
                                         "is not one");
        return -1;
    }
    uint32_t tail_at;
    if (builder_u32(builder, A_TAIL_AT, UINT32_MAX / 2, &tail_at) < 0
        || builder_u32(builder, A_HEADER_LENGTH, (uint32_t)(max < UINT32_MAX ? max : UINT32_MAX), &f->tail.header_len) < 0
        || builder_u32(builder, A_SEQUENCE, UINT32_MAX, &f->sequence) < 0
        || builder_u32(builder, A_PENDING, UINT32_MAX, &f->pending) < 0)
        return -1;
    for (int i = 0; i < HWS_TAIL_COUNT; i++)
        f->tail.at[i] = tail_at + self->tail_at[i];
    if (hws_tail_check(&f->tail) < 0) {
        PyErr_SetString(PyExc_ValueError, "the builder's datagram header does not hold its tail fields");
        return -1;
    }
    return 0;
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

/* The open datagram is full: finish it into the outbox (no Python call) and start the next.  0, or -1 with an
 * exception. */
static int finish_datagram(struct finishing *f, struct hws_out *out, uint32_t uptime_ms, size_t need)
{
    size_t samples = (size_t)f->pending + out->samples;
    if (samples == 0 || samples > UINT32_MAX) {
        /* the look-up admits no group whose samples an empty datagram lacks room for */
        PyErr_Format(PyExc_ValueError, "a sample of %zu bytes does not fit an empty datagram", need);
        return -1;
    }
    if (!hws_finish(&f->tail, out->buf, out->pos, f->sequence, uptime_ms, (uint32_t)samples)) {
        PyErr_SetString(PyExc_ValueError, "the builder's position is inside its datagram header");
        return -1;
    }
    if (outbox_add(f->outbox, out->buf, out->pos) < 0)
        return -1;
    f->sequence += 1; /* sFlow's datagram sequence wraps at 2**32 */
    f->pending = 0;
    out->pos = f->tail.header_len;
    out->samples = 0;
    if (need > out->max - out->pos) {
        PyErr_Format(PyExc_ValueError, "a sample of %zu bytes does not fit an empty datagram", need);
        return -1;
    }
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
    /* as the builder packs it: the uptime's low 32 bits */
    uint32_t uptime_ms = (uint32_t)PyLong_AsUnsignedLongLongMask(uptime);
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    size_t *lengths = PyMem_Malloc(sizeof(size_t) * (size_t)(count ? count : 1));
    if (self->ctx == NULL)
        self->ctx = PyMem_Calloc(1, sizeof *self->ctx);
    struct run_ctx *ctx = self->ctx;
    PyObject *result = NULL;
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Loop.run called again from inside a run");
        PyMem_Free(lengths);
        Py_DECREF(seq);
        PyBuffer_Release(&area);
        return NULL;
    }
    self->busy = 1;
    if (PyErr_Occurred())
        goto out;
    if (lengths == NULL || ctx == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    /* what lookup and store rely on: no entry, no source, no flag (store leaves them so) */
    ctx->nentries = ctx->nsources = 0;
    ctx->full = ctx->error = 0;
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
    struct finishing fin;
    if (builder_finishing(self, builder, out.max, &fin) < 0) {
        PyBuffer_Release(&out_view);
        goto out;
    }
    ctx->by_group = by_group;
    ctx->header_room = room;
    size_t index = first < count ? (size_t)first : (size_t)count, need = 0, committed = 0, finished = 0;
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
        size_t samples = out.samples;
        if (finish_datagram(&fin, &out, uptime_ms, need) < 0)
            break;
        committed += samples;
        finished += 1;
    }
    size_t packed = committed + out.samples;
    int failed = PyErr_Occurred() != NULL;
    PyObject *type, *value, *tb;
    if (!failed && (finished || out.samples)) {
        failed = call_finished(builder, finished, out.pos, out.samples) < 0;
    } else if (failed && finished) {
        /* the datagrams in the outbox are the builder's still; the open one's samples are lost with the error */
        PyErr_Fetch(&type, &value, &tb);
        call_finished(builder, finished, fin.tail.header_len, 0);
        PyErr_Clear();
        PyErr_Restore(type, value, tb);
    }
    if (failed) {
        /* keep the first exception; still put the state back and release the references */
        PyErr_Fetch(&type, &value, &tb);
        ctx->error = 0;
        store(ctx);
        PyErr_Clear();
        PyErr_Restore(type, value, tb);
    } else if (store(ctx) == 0) {
        result = Py_BuildValue("nn", (Py_ssize_t)index, (Py_ssize_t)packed);
    }
    PyBuffer_Release(&out_view);
out:
    self->busy = 0;
    PyMem_Free(lengths);
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
    static char *kwlist[] = {"checks", "fields", "data_at", "flow_at", "flow_size", "flow_constants", "tail_at", NULL};
    PyObject *checks, *fields, *flow_at, *constants, *tail_at;
    unsigned int data_at, flow_size;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOIOIOO", kwlist, &checks, &fields, &data_at, &flow_at,
                                     &flow_size, &constants, &tail_at))
        return -1;
    for (int i = 0; i < HWS_TAIL_COUNT; i++)
        if (mapping_u32(tail_at, hws_tail_names[i], &self->tail_at[i]) < 0)
            return -1;
    if (PyMapping_Length(tail_at) != HWS_TAIL_COUNT || self->tail_at[0] > 4096 || self->tail_at[1] > 4096
        || self->tail_at[2] > 4096) {
        PyErr_SetString(PyExc_ValueError, "tail_at names fields the compiled loop does not know, or is beyond 4096");
        return -1;
    }
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

static void Loop_dealloc(LoopObject *self)
{
    PyMem_Free(self->ctx);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject LoopType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "hwsflow.core._fastpath.Loop",
    .tp_basicsize = sizeof(LoopObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The usual psample layout and the compact flow sample's, for run().",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Loop_init,
    .tp_dealloc = (destructor)Loop_dealloc,
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
    if (PyType_Ready(&LoopType) < 0 || PyType_Ready(&OutboxType) < 0)
        return NULL;
    for (int i = 0; i < A_COUNT; i++)
        if ((attr[i] = PyUnicode_InternFromString(attr_text[i])) == NULL)
            return NULL;
    if ((str_finished_elsewhere = PyUnicode_InternFromString("finished_elsewhere")) == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&LoopType);
    Py_INCREF(&OutboxType);
    if (PyModule_AddObject(m, "Loop", (PyObject *)&LoopType) < 0
        || PyModule_AddObject(m, "Outbox", (PyObject *)&OutboxType) < 0
        || PyModule_AddObject(m, "TAIL_FIELDS", names(hws_tail_names, HWS_TAIL_COUNT)) < 0
        || PyModule_AddObject(m, "IN_FIELDS", names(hws_in_names, HWS_IN_COUNT)) < 0
        || PyModule_AddObject(m, "FLOW_FIELDS", names(hws_out_names, HWS_OUT_COUNT)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
