/* libFuzzer harness of the compiled loop's core (hwsflow/core/fastpath_core.c), built with
 * -fsanitize=fuzzer,address,undefined by fuzz/fastpath_target.py, which also writes fastpath_layout.h
 * from the Python tables (psample.USUAL_FIXED / USUAL_FIELDS, sflow.FLOW_COMPACT_AT).
 *
 * An input: 4 bytes of setup (slots, header kept, datagram size, where the counters start, a slack
 * after each slot), then the bytes recvmmsg would have received, cut into the slots.  The area and the
 * datagram buffer are allocated to their exact size, so that AddressSanitizer sees any access past
 * either; the harness drives hws_run as the CPython glue does and checks what it can check in C:
 * every stop is one of the three, a full datagram is never asked for more room than an empty one has,
 * every sample packed leaves a well-formed flow sample, and each packed sample advances its source's
 * flow_seq by exactly one. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fastpath_core.h"
#include "fastpath_layout.h"

#define DGRAM_HEADER FUZZ_DGRAM_HEADER /* an IPv4 agent's datagram header: where the first sample goes */
#define GROUPS 4
#define GROUP_BASE 1000u

static struct hws_layout layout;
static struct hws_tail tail;
static int ready;

static int name_index(const char *const *names, int count, const char *name)
{
    for (int i = 0; i < count; i++)
        if (strcmp(names[i], name) == 0)
            return i;
    abort(); /* the Python table names a field the core does not know */
}

static void setup_layout(void)
{
    hws_layout_init(&layout);
    layout.data_at = FUZZ_DATA_AT;
    layout.out_size = FUZZ_FLOW_SIZE;
    for (size_t i = 0; i < sizeof fuzz_checks / sizeof fuzz_checks[0]; i++)
        if (hws_layout_add_check(&layout, fuzz_checks[i].at, fuzz_checks[i].size, fuzz_checks[i].value))
            abort();
    for (size_t i = 0; i < sizeof fuzz_in / sizeof fuzz_in[0]; i++) {
        int at = name_index(hws_in_names, HWS_IN_COUNT, fuzz_in[i].name);
        layout.in[at] = (struct hws_field){.at = fuzz_in[i].at, .size = fuzz_in[i].size};
    }
    for (size_t i = 0; i < sizeof fuzz_out / sizeof fuzz_out[0]; i++)
        layout.out_at[name_index(hws_out_names, HWS_OUT_COUNT, fuzz_out[i].name)] = fuzz_out[i].at;
    if (hws_layout_finish(&layout))
        abort();
    for (size_t i = 0; i < sizeof fuzz_constants / sizeof fuzz_constants[0]; i++)
        if (hws_layout_set_out_constant(&layout, name_index(hws_out_names, HWS_OUT_COUNT, fuzz_constants[i].name),
                                        fuzz_constants[i].value))
            abort();
    tail.header_len = DGRAM_HEADER;
    for (size_t i = 0; i < sizeof fuzz_tail / sizeof fuzz_tail[0]; i++)
        tail.at[name_index(hws_tail_names, HWS_TAIL_COUNT, fuzz_tail[i].name)] = FUZZ_TAIL_AT + fuzz_tail[i].at;
    if (hws_tail_check(&tail))
        abort();
    ready = 1;
}

struct ctx {
    struct hws_group groups[GROUPS];
    struct hws_source sources[GROUPS];
};

static struct hws_group *lookup(void *opaque, uint32_t group)
{
    struct ctx *ctx = opaque;
    /* GROUP_BASE + 3 is not the loop's (a foreign or egress group, as the glue would decline) */
    if (group < GROUP_BASE || group >= GROUP_BASE + GROUPS - 1)
        return NULL;
    return &ctx->groups[group - GROUP_BASE];
}

static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

/* the flow samples in buf[DGRAM_HEADER:end]: each one's length and record length agree with its header */
static void check_datagram(const uint8_t *buf, size_t end, size_t samples)
{
    size_t pos = DGRAM_HEADER, seen = 0;
    while (pos < end) {
        if (end - pos < layout.out_size)
            abort();
        const uint8_t *s = buf + pos;
        uint32_t hlen = be32(s + layout.out_at[HWS_OUT_HEADER_LENGTH]);
        size_t size = layout.out_size + ((hlen + 3u) & ~3u);
        if (be32(s + layout.out_at[HWS_OUT_LENGTH]) != size - (layout.out_at[HWS_OUT_LENGTH] + 4) || size > end - pos)
            abort();
        for (size_t pad = layout.out_size + hlen; pad < size; pad++)
            if (s[pad] != 0)
                abort();
        pos += size;
        seen++;
    }
    if (pos != end || seen != samples)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!ready)
        setup_layout();
    if (size < 4)
        return 0;
    static const uint32_t headers[] = {0, 14, 64, 128, 129, 1024};
    static const size_t maxes[] = {200, 300, 1400, 9000};
    static const uint64_t counters[] = {0, 0xFFFFFFFDu, UINT64_MAX - 40, UINT64_MAX};
    size_t slots = 1 + data[0] % 8;
    size_t max = maxes[data[1] % 4];
    uint32_t header = headers[(data[1] >> 2) % 6];
    uint64_t start = counters[data[2] % 4];
    size_t slack = data[3] % 8;
    data += 4;
    size -= 4;
    /* the room an empty datagram has: the glue declines groups whose header would not fit it */
    size_t room = (max - DGRAM_HEADER - layout.out_size) & ~(size_t)3;
    if (header > room)
        header = (uint32_t)room;

    size_t lengths[8], stride = 1;
    for (size_t i = 0; i < slots; i++) {
        lengths[i] = size * (i + 1) / slots - size * i / slots;
        if (lengths[i] + slack > stride)
            stride = lengths[i] + slack;
    }
    uint8_t *area = malloc(stride * slots);
    uint8_t *out_buf = malloc(max);
    if (area == NULL || out_buf == NULL)
        abort();
    memset(area, 0xA5, stride * slots); /* what lies past a slot's bytes must never be read as message */
    for (size_t i = 0; i < slots; i++)
        memcpy(area + i * stride, data + size * i / slots, lengths[i]);
    memset(out_buf, 0xEE, max);

    struct ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    for (int g = 0; g < GROUPS; g++) {
        /* a credit and a hold from earlier re-syncs: both are spent before the pool advances */
        ctx.sources[g] = (struct hws_source){.flow_seq = start, .pool = start, .drops = start, .resync_credit = start / 2,
                                             .pool_hold = start / 3};
        ctx.groups[g] = (struct hws_group){.ifindex = 7 + g, .header = header, .has_last = g % 2,
                                           .last_seq = 0xFFFFFFFEu, .source = &ctx.sources[g % 2 ? g : 0]};
    }
    struct hws_batch batch = {area, stride * slots, lengths, slots, stride};
    struct hws_out out = {out_buf, DGRAM_HEADER, max, 0};
    size_t index = 0, need = 0, rounds = 0;
    while (index < slots) {
        uint64_t before = ctx.sources[0].flow_seq + ctx.sources[1].flow_seq + ctx.sources[2].flow_seq;
        size_t samples_before = out.samples;
        enum hws_stop stop = hws_run(&layout, &batch, &index, &out, lookup, &ctx, &need);
        uint64_t after = ctx.sources[0].flow_seq + ctx.sources[1].flow_seq + ctx.sources[2].flow_seq;
        if (after - before != out.samples - samples_before || out.pos > max)
            abort();
        if (stop == HWS_DONE)
            break;
        if (stop == HWS_LEAVE) {
            index++; /* the Python path's */
        } else if (stop == HWS_FULL) {
            if (need > max - DGRAM_HEADER || out.samples == 0)
                abort(); /* an empty datagram must hold any sample the loop packs */
            check_datagram(out_buf, out.pos, out.samples);
            /* finished as the glue finishes it: the header's tail says which datagram, when and how many */
            uint32_t values[HWS_TAIL_COUNT] = {[HWS_TAIL_SEQUENCE] = 0xFFFFFFFFu - (uint32_t)rounds,
                                               [HWS_TAIL_UPTIME] = (uint32_t)start, [HWS_TAIL_SAMPLES] = (uint32_t)out.samples};
            if (!hws_finish(&tail, out_buf, out.pos, values[0], values[1], values[2]))
                abort();
            for (int f = 0; f < HWS_TAIL_COUNT; f++)
                if (be32(out_buf + tail.at[f]) != values[f])
                    abort();
            out.pos = DGRAM_HEADER;
            out.samples = 0;
        } else {
            abort();
        }
        if (++rounds > 4 * slots + 4)
            abort(); /* no progress */
    }
    check_datagram(out_buf, out.pos, out.samples);
    if (hws_finish(&tail, out_buf, DGRAM_HEADER - 1, 1, 1, 1))
        abort(); /* shorter than its header: nothing to finish */
    free(area);
    free(out_buf);
    return 0;
}
