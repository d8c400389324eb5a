/* The compiled loop's core: plain C, no Python API, so that the fuzz harness (fuzz/fastpath_fuzz.c)
 * links it as it is.  It checks received psample messages against the usual layout, accounts them
 * (GROUP_SEQ gaps, sequence, pool, drops) and packs compact sFlow flow samples into a datagram buffer.
 * Both layouts come from Python at start (psample.USUAL_FIXED / USUAL_FIELDS, sflow.FLOW_COMPACT_AT):
 * nothing here repeats their offsets.  Every read and write is checked against its buffer's length. */
#ifndef HWSFLOW_FASTPATH_CORE_H
#define HWSFLOW_FASTPATH_CORE_H

#include <stddef.h>
#include <stdint.h>

/* the psample values the loop reads, named as in psample.USUAL_FIELDS */
enum hws_in_field { HWS_IN_LENGTH, HWS_IN_IIF, HWS_IN_RATE, HWS_IN_ORIG_SIZE, HWS_IN_GROUP, HWS_IN_SEQ,
              HWS_IN_DATA_NLA_LEN, HWS_IN_COUNT };
/* the compact flow sample's fields, named as in sflow.FLOW_COMPACT_FIELDS */
enum hws_out_field { HWS_OUT_TAG, HWS_OUT_LENGTH, HWS_OUT_SEQUENCE, HWS_OUT_SOURCE_ID, HWS_OUT_RATE, HWS_OUT_POOL,
               HWS_OUT_DROPS, HWS_OUT_INPUT, HWS_OUT_OUTPUT, HWS_OUT_RECORDS, HWS_OUT_RECORD_TAG,
               HWS_OUT_RECORD_LENGTH, HWS_OUT_PROTOCOL, HWS_OUT_FRAME_LENGTH, HWS_OUT_STRIPPED,
               HWS_OUT_HEADER_LENGTH, HWS_OUT_COUNT };

extern const char *const hws_in_names[HWS_IN_COUNT];
extern const char *const hws_out_names[HWS_OUT_COUNT];
/* 1 for the fields hws_pack computes, 0 for those the layout's constants fill */
extern const unsigned char hws_out_computed[HWS_OUT_COUNT];

#define HWS_MAX_CHECKS 32
#define HWS_MAX_FLOW 256 /* bytes of the fixed part of a flow sample */
#define HWS_NLA_HDR 4

/* at and size as the tables give them; hws_layout_finish derives the rest: where the 4-byte word that ends
 * with the value starts, and the shift and mask that take the value out of it (one load per value) */
struct hws_check { uint32_t at, size, value, word, shift, mask; };
struct hws_field { uint32_t at, size, word, shift, mask; };

struct hws_layout {
    struct hws_check checks[HWS_MAX_CHECKS];
    uint32_t nchecks;
    struct hws_field in[HWS_IN_COUNT];
    uint32_t data_at;          /* DATA's value starts here; every check and field lies before it */
    uint32_t out_at[HWS_OUT_COUNT];
    uint32_t out_size;         /* the flow sample's fixed part; the header bytes follow */
    uint8_t out_template[HWS_MAX_FLOW]; /* the constants in place, network byte order */
    uint32_t computed[HWS_OUT_COUNT]; /* the offsets hws_pack writes, in hws_out_field order */
};

/* 0 when the layout is sound (sizes 1, 2 or 4, everything inside its part, no flow field overlapping
 * another), with what hws_decode needs derived; -1 otherwise.  Call it after setting data_at, the checks,
 * the fields, out_size and out_at, before the constants. */
int hws_layout_finish(struct hws_layout *layout);
void hws_layout_init(struct hws_layout *layout);
int hws_layout_add_check(struct hws_layout *layout, uint32_t at, uint32_t size, uint32_t value);
int hws_layout_set_out_constant(struct hws_layout *layout, int field, uint32_t value);

struct hws_usual {
    uint32_t group, seq, rate, orig_size, iif;
    size_t data_len;           /* DATA's value: at layout.data_at, data_len bytes, inside the message */
};

/* 1 when msg[0:len] is exactly one message in the usual layout (its nlmsg_len is len), else 0. */
int hws_decode(const struct hws_layout *layout, const uint8_t *msg, size_t len,
               struct hws_usual *out);

struct hws_source { uint64_t flow_seq, pool, drops, resync_credit, pool_hold; };
struct hws_group {
    uint32_t ifindex;          /* the source's: its compact source_id and input */
    uint32_t header;           /* header bytes exported */
    int has_last;              /* last_seq is set */
    uint32_t last_seq;
    uint32_t last_rate;        /* the last sample's rate, 0 when none: a gap counts at the lower of two rates */
    uint64_t drops;
    struct hws_source *source;
};

/* GroupBinding.account: 1 when done, 0 (nothing changed) when a counter would pass 2**64. */
int hws_account(struct hws_group *group, uint32_t seq, uint32_t rate);

/* The room one sample needs in the datagram. */
size_t hws_sample_size(const struct hws_layout *layout, const struct hws_group *group,
                       const struct hws_usual *usual);

struct hws_out {
    uint8_t *buf;
    size_t pos, max;           /* the next sample goes at pos; max is the datagram's limit */
    size_t samples;            /* packed since the caller last committed */
};

/* Pack the (accounted) sample of msg at out->pos: 1, or 0 when it does not fit (nothing written). */
int hws_pack(const struct hws_layout *layout, struct hws_out *out, const struct hws_group *group,
             const struct hws_usual *usual, const uint8_t *msg);

/* A group's state, or NULL: not the loop's to pack (foreign, egress, expanded, not loadable). */
typedef struct hws_group *(*hws_lookup)(void *ctx, uint32_t group);

struct hws_batch {
    const uint8_t *area;
    size_t area_len;
    const size_t *lengths;     /* bytes of each slot */
    size_t count, stride;      /* slot i starts at i * stride */
};

/* The datagram header's last three fields, named as in sflow.DATAGRAM_TAIL_FIELDS: at their offsets from the
 * builder's tail_at, 4 bytes each in network byte order. */
enum hws_tail_field { HWS_TAIL_SEQUENCE, HWS_TAIL_UPTIME, HWS_TAIL_SAMPLES, HWS_TAIL_COUNT };
extern const char *const hws_tail_names[HWS_TAIL_COUNT];

struct hws_tail {
    uint32_t at[HWS_TAIL_COUNT];   /* from the header's start: the builder's tail_at plus the field's offset */
    uint32_t header_len;           /* where the first sample goes: every field lies before it */
};

/* 0 when every field lies inside header_len without overlapping another; -1 otherwise. */
int hws_tail_check(const struct hws_tail *tail);

/* Finish the datagram in buf[0:len]: its sequence number, uptime and sample count written into its header.
 * 1, or 0 (nothing written) when len is shorter than the header. */
int hws_finish(const struct hws_tail *tail, uint8_t *buf, size_t len, uint32_t sequence, uint32_t uptime_ms,
               uint32_t samples);

enum hws_stop {
    HWS_DONE,                  /* every slot packed */
    HWS_LEAVE,                 /* slot *index is not the loop's: the caller handles it */
    HWS_FULL,                  /* slot *index needs *need bytes the datagram lacks: finish it, rerun */
};

/* Slots from *index on: decode, look up, account and pack each until one cannot be; *index is then
 * that slot.  Nothing of a slot it stops at has been accounted or written. */
enum hws_stop hws_run(const struct hws_layout *layout, const struct hws_batch *batch,
                      size_t *index, struct hws_out *out, hws_lookup lookup, void *ctx, size_t *need);

#endif
