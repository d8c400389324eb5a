/* See fastpath_core.h.  The Python reference of each function: hws_decode is psample.fast_decode,
 * hws_account GroupBinding.account (with DataSource.add_lost), hws_pack DatagramBuilder.add_flow_sample's
 * compact case; tests/unit/core/test_fastpath.py holds them equal. */
#include "fastpath_core.h"

#include <string.h>

const char *const hws_in_names[HWS_IN_COUNT] = {
    "length", "iif", "rate", "orig_size", "group", "seq", "data_nla_len",
};
const char *const hws_out_names[HWS_OUT_COUNT] = {
    "tag", "length", "sequence", "source_id", "rate", "pool", "drops", "input", "output", "records",
    "record_tag", "record_length", "protocol", "frame_length", "stripped", "header_length",
};
const unsigned char hws_out_computed[HWS_OUT_COUNT] = {
    [HWS_OUT_LENGTH] = 1, [HWS_OUT_SEQUENCE] = 1, [HWS_OUT_SOURCE_ID] = 1, [HWS_OUT_RATE] = 1,
    [HWS_OUT_POOL] = 1, [HWS_OUT_DROPS] = 1, [HWS_OUT_INPUT] = 1, [HWS_OUT_RECORD_LENGTH] = 1,
    [HWS_OUT_FRAME_LENGTH] = 1, [HWS_OUT_HEADER_LENGTH] = 1,
};

const char *const hws_tail_names[HWS_TAIL_COUNT] = {"sequence", "uptime", "samples"};

#define U32_MAX_ 0xFFFFFFFFu
#define HALF_U32 0x80000000u
#define FCS_ORIG_MAX (0xFFFFFFFFu - 4u) /* ORIGSIZE above this clamps frame_length (pipeline._MAX_ORIG) */
#define FCS_LEN 4u

static uint32_t load32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4); /* one unaligned load */
    return v;
}

/* a native value of size bytes at `at`, read as the 4-byte word that ends with it: 0 when it fits */
static int place(uint32_t at, uint32_t size, uint32_t *word, uint32_t *shift, uint32_t *mask)
{
    if (at + size < 4)
        return -1;
    *word = at + size - 4;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    *shift = 0;
#else
    *shift = 8 * (4 - size);
#endif
    *mask = size == 4 ? UINT32_MAX : (1u << (8 * size)) - 1u;
    return 0;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static int size_ok(uint32_t size) { return size == 1 || size == 2 || size == 4; }

void hws_layout_init(struct hws_layout *layout)
{
    memset(layout, 0, sizeof *layout);
    for (int i = 0; i < HWS_OUT_COUNT; i++)
        layout->out_at[i] = UINT32_MAX; /* unset: hws_layout_finish refuses it */
}

int hws_layout_add_check(struct hws_layout *layout, uint32_t at, uint32_t size, uint32_t value)
{
    if (layout->nchecks >= HWS_MAX_CHECKS || !size_ok(size))
        return -1;
    layout->checks[layout->nchecks++] = (struct hws_check){.at = at, .size = size, .value = value};
    return 0;
}

int hws_layout_set_out_constant(struct hws_layout *layout, int field, uint32_t value)
{
    if (field < 0 || field >= HWS_OUT_COUNT || hws_out_computed[field])
        return -1;
    uint32_t at = layout->out_at[field];
    if (at > HWS_MAX_FLOW - 4)
        return -1; /* set the offsets first */
    put_be32(layout->out_template + at, value);
    return 0;
}

int hws_layout_finish(struct hws_layout *layout)
{
    if (layout->data_at < HWS_NLA_HDR || layout->data_at > 4096)
        return -1;
    for (uint32_t i = 0; i < layout->nchecks; i++) {
        struct hws_check *c = &layout->checks[i];
        if (!size_ok(c->size) || c->at > layout->data_at - c->size || place(c->at, c->size, &c->word, &c->shift, &c->mask))
            return -1;
    }
    for (int i = 0; i < HWS_IN_COUNT; i++) {
        struct hws_field *f = &layout->in[i];
        if (!size_ok(f->size) || f->at > layout->data_at - f->size || place(f->at, f->size, &f->word, &f->shift, &f->mask))
            return -1;
    }
    if (layout->in[HWS_IN_LENGTH].size != 4 || layout->in[HWS_IN_DATA_NLA_LEN].at != layout->data_at - HWS_NLA_HDR)
        return -1; /* the message length and DATA's own nla_len: what the framing checks rest on */
    if (layout->out_size < 4 * HWS_OUT_COUNT || layout->out_size > HWS_MAX_FLOW || layout->out_size % 4)
        return -1;
    uint8_t used[HWS_MAX_FLOW] = {0};
    for (int i = 0; i < HWS_OUT_COUNT; i++) {
        uint32_t at = layout->out_at[i];
        if (at > layout->out_size - 4 || at % 4)
            return -1;
        for (uint32_t b = at; b < at + 4; b++)
            if (used[b]++)
                return -1; /* two fields overlap */
    }
    for (int i = 0; i < HWS_OUT_COUNT; i++)
        layout->computed[i] = hws_out_computed[i] ? layout->out_at[i] : UINT32_MAX;
    return 0;
}

int hws_decode(const struct hws_layout *layout, const uint8_t *msg, size_t len,
               struct hws_usual *out)
{
    if (len < layout->data_at)
        return 0;
    for (uint32_t i = 0; i < layout->nchecks; i++) {
        const struct hws_check *c = &layout->checks[i];
        if ((load32(msg + c->word) >> c->shift & c->mask) != c->value)
            return 0;
    }
    uint32_t v[HWS_IN_COUNT];
    for (int i = 0; i < HWS_IN_COUNT; i++)
        v[i] = load32(msg + layout->in[i].word) >> layout->in[i].shift & layout->in[i].mask;
    uint32_t nla_len = v[HWS_IN_DATA_NLA_LEN];
    /* DATA is the last attribute and ends the message exactly, which fills the read */
    if (nla_len < HWS_NLA_HDR || v[HWS_IN_LENGTH] != len)
        return 0;
    if ((size_t)layout->data_at - HWS_NLA_HDR + ((nla_len + 3u) & ~3u) != len)
        return 0;
    out->group = v[HWS_IN_GROUP];
    out->seq = v[HWS_IN_SEQ];
    out->rate = v[HWS_IN_RATE];
    out->orig_size = v[HWS_IN_ORIG_SIZE];
    out->iif = v[HWS_IN_IIF];
    out->data_len = nla_len - HWS_NLA_HDR;
    return 1;
}

int hws_account(struct hws_group *group, uint32_t seq, uint32_t rate)
{
    struct hws_source *s = group->source;
    uint64_t gap = 0, lost = 0, absorbed = 0;
    if (group->has_last) {
        gap = (uint32_t)(seq - group->last_seq - 1u);
        /* all-zero sequences (mlx5 hardware) are no gap; a jump backwards is a reset */
        if (gap >= HALF_U32 || (seq == 0 && group->last_seq == 0))
            gap = 0;
        uint32_t lost_rate = group->last_rate && group->last_rate < rate ? group->last_rate : rate;
        lost = gap * lost_rate; /* < 2**63 */
        absorbed = s->resync_credit < lost ? s->resync_credit : lost;
    }
    /* DataSource.add_lost then advance: lost packets then the sample's own, into the hold first while the
     * pool is ahead, all but the sampled packet itself at 1-in-N > 1 */
    uint64_t add = lost - absorbed + rate;
    uint64_t room = add - (rate > 1);
    uint64_t held = s->pool_hold < room ? s->pool_hold : room;
    add -= held;
    if (s->pool > UINT64_MAX - add || s->drops > UINT64_MAX - gap || group->drops > UINT64_MAX - gap
        || s->flow_seq == UINT64_MAX)
        return 0;
    group->drops += gap;
    s->drops += gap;
    s->resync_credit -= absorbed;
    s->pool_hold -= held;
    s->pool += add;
    group->last_seq = seq;
    group->last_rate = rate;
    group->has_last = 1;
    s->flow_seq += 1;
    return 1;
}

static size_t header_kept(const struct hws_group *group, const struct hws_usual *usual)
{
    return usual->data_len < group->header ? usual->data_len : group->header;
}

size_t hws_sample_size(const struct hws_layout *layout, const struct hws_group *group,
                       const struct hws_usual *usual)
{
    return layout->out_size + ((header_kept(group, usual) + 3u) & ~(size_t)3u);
}

int hws_pack(const struct hws_layout *layout, struct hws_out *out, const struct hws_group *group,
             const struct hws_usual *usual, const uint8_t *msg)
{
    size_t hlen = header_kept(group, usual);
    size_t padded = (hlen + 3u) & ~(size_t)3u;
    size_t size = layout->out_size + padded;
    if (out->pos > out->max || size > out->max - out->pos || size > U32_MAX_)
        return 0;
    const struct hws_source *s = group->source;
    uint8_t *p = out->buf + out->pos;
    uint32_t values[HWS_OUT_COUNT] = {0};
    values[HWS_OUT_LENGTH] = (uint32_t)(size - (layout->out_at[HWS_OUT_LENGTH] + 4u));
    values[HWS_OUT_SEQUENCE] = (uint32_t)s->flow_seq;  /* sFlow's 32-bit counters wrap */
    values[HWS_OUT_SOURCE_ID] = group->ifindex;        /* type 0 (ifIndex) in the top byte */
    values[HWS_OUT_RATE] = usual->rate;
    values[HWS_OUT_POOL] = (uint32_t)s->pool;
    values[HWS_OUT_DROPS] = (uint32_t)s->drops;
    values[HWS_OUT_INPUT] = group->ifindex;
    values[HWS_OUT_RECORD_LENGTH] = (uint32_t)(size - (layout->out_at[HWS_OUT_RECORD_LENGTH] + 4u));
    values[HWS_OUT_FRAME_LENGTH] = usual->orig_size <= FCS_ORIG_MAX ? usual->orig_size + FCS_LEN : U32_MAX_;
    values[HWS_OUT_HEADER_LENGTH] = (uint32_t)hlen;
    memcpy(p, layout->out_template, layout->out_size);
    for (int i = 0; i < HWS_OUT_COUNT; i++)
        if (layout->computed[i] != UINT32_MAX)
            put_be32(p + layout->computed[i], values[i]);
    memcpy(p + layout->out_size, msg + layout->data_at, hlen);
    memset(p + layout->out_size + hlen, 0, padded - hlen); /* the buffer is reused: write the padding */
    out->pos += size;
    out->samples += 1;
    return 1;
}

int hws_tail_check(const struct hws_tail *tail)
{
    for (int i = 0; i < HWS_TAIL_COUNT; i++) {
        if (tail->at[i] > tail->header_len || tail->header_len - tail->at[i] < 4)
            return -1;
        for (int j = 0; j < i; j++)
            if (tail->at[i] < tail->at[j] + 4 && tail->at[j] < tail->at[i] + 4)
                return -1; /* two fields overlap */
    }
    return 0;
}

int hws_finish(const struct hws_tail *tail, uint8_t *buf, size_t len, uint32_t sequence, uint32_t uptime_ms,
               uint32_t samples)
{
    if (len < tail->header_len)
        return 0;
    put_be32(buf + tail->at[HWS_TAIL_SEQUENCE], sequence);
    put_be32(buf + tail->at[HWS_TAIL_UPTIME], uptime_ms);
    put_be32(buf + tail->at[HWS_TAIL_SAMPLES], samples);
    return 1;
}

enum hws_stop hws_run(const struct hws_layout *layout, const struct hws_batch *batch,
                      size_t *index, struct hws_out *out, hws_lookup lookup, void *ctx, size_t *need)
{
    for (size_t i = *index; i < batch->count; i++) {
        *index = i;
        size_t start, len = batch->lengths[i];
        if (__builtin_mul_overflow(i, batch->stride, &start) || start > batch->area_len
            || len > batch->area_len - start)
            return HWS_LEAVE;
        const uint8_t *msg = batch->area + start;
        struct hws_usual usual;
        if (!hws_decode(layout, msg, len, &usual))
            return HWS_LEAVE;
        struct hws_group *group = lookup(ctx, usual.group);
        if (group == NULL)
            return HWS_LEAVE;
        size_t size = hws_sample_size(layout, group, &usual);
        if (out->pos > out->max || size > out->max - out->pos) {
            *need = size;
            return HWS_FULL;
        }
        if (!hws_account(group, usual.seq, usual.rate))
            return HWS_LEAVE;
        hws_pack(layout, out, group, &usual, msg); /* fits: checked above */
    }
    *index = batch->count;
    return HWS_DONE;
}
