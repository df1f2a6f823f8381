/* comm_shm.c - the data plane of CPU ranks ("shm"): the gradient all-reduce through MPI-3
 * shared memory within a node and a ring over MPI point-to-point between nodes; broadcasts go
 * through MPI (comm_mpi.c).
 *
 * Why this shape (bench/allreduce and bench/scaling measure it; see bench/README.md):
 *
 * - Gradients live in ddtrain's allocator, private to each process, so a peer cannot read
 *   them where they are. Each rank streams its buffer through a small ring of slots in an
 *   MPI-3 shared window (MPI_Win_allocate_shared over the node): chunks of chunk_floats,
 *   slot_count slots per rank: about a megabyte per rank however large the model. With plain
 *   stores the slots stay in cache and pass from core to core; with streaming stores (chosen
 *   when that is slow, below) they pass through memory once. A window holding whole copies
 *   of the gradients would need shared memory in proportion to the model.
 * - A chunk is cut into one slice per owner (see below). Per chunk every rank (1) posts:
 *   copies the slices other ranks own into its slot; (2) reduces the slice it owns, summing
 *   it over the node's ranks straight from their slots and its own gradient (the
 *   reduce-scatter), and leaves the sum in its slot; (3) gathers: copies every owner's sum
 *   into its gradient (the all-gather). Progress is counted by three flags per rank, each on
 *   a cache line of its own, written by that rank alone with release stores and read by its
 *   peers with acquire loads: chunks posted, reduced and gathered. A slot is written again
 *   only after every peer has gathered the chunk it held.
 * - Across nodes it is hierarchical, as in NCCL and Horovod: between (2) and (3) the owners of
 *   a slice, one per node (a leader per slice, so every rank of a node carries a share of the
 *   network traffic), all-reduce it with a ring over MPI (reduce-scatter, then all-gather): a
 *   node sends and receives 2(P-1)/P of the gradient. With one node there is no ring, and the
 *   path is the intra-node one alone. Slices are owned by the first S ranks of each node, S the
 *   smallest node's rank count, so nodes of different sizes work too.
 * - Sums run in one fixed order: local ranks in order, then nodes in ring order, both fixed by
 *   the sizes alone; each sum is computed once and copied to every rank. Results do not
 *   depend on timing, are the same bits on every rank, and repeat run after run.
 * - What a peer reads is stored with plain or with streaming stores, whichever has cost less
 *   lately (measured as the all-reduce runs: "moving floats between cores" says why).
 * - Progress is made wherever ddtrain calls in: allreduce_start and allreduce_test advance
 *   whatever needs no waiting (during backward: the in-gap progress), allreduce_wait advances
 *   and waits. There is no thread of its own: on CPU ranks every core computes, and such a
 *   thread would take its time from the compute it overlaps (bench/allreduce, overlap).
 * - Every wait polls, under the communicator's timeout and wait hook (the watchdog), and it
 *   knows which rank it waits for: a timeout names that rank, and a local peer whose process
 *   is gone (killed, exited) ends the wait at once.
 *
 * Low-level knobs (environment, read when the communicator is made, the same on every rank):
 *   DDTRAIN_ALLREDUCE_CHUNK=SIZE  bytes per chunk (default 256KiB);
 *   DDTRAIN_ALLREDUCE_SLOTS=N     slots per rank, the chunks a rank may post ahead (default 4);
 *   DDTRAIN_ALLREDUCE_STORES=K    how what peers read is stored: auto (measured as it runs,
 *                                 the default), plain or streaming;
 *   DDTRAIN_NODE_RANKS=K          treat every K ranks of a node as a node of their own, so the
 *                                 hierarchical path runs on one machine (tests, measurements).
 */
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "comm/comm_backend.h"
#include "util/failpoint.h"
#include "util/units.h"
#include "util/clock.h"

enum {
    SHM_DEFAULT_SLOTS = 4, /* chunks a rank may have in flight */
    SHM_MAX_SLOTS = 64,
    SHM_LINE_BYTES = 64, /* a cache line: slots and slices start on one */
    SHM_LINE_FLOATS = (int)(SHM_LINE_BYTES / sizeof(float)),
    SHM_RING_TAG = 0x5d1,          /* point-to-point messages of the ring between nodes */
    SHM_DEFAULT_CHUNK = 256 << 10, /* bytes */
    SHM_MIN_CHUNK = 4 << 10,
    SHM_MAX_CHUNK = 64 << 20,
};

/* How a rank stores what its peers will read (see "moving floats between cores"). */
typedef enum { SHM_STORES_PLAIN = 0, SHM_STORES_STREAMING = 1, SHM_STORES_AUTO = 2 } shm_stores;

/* With SHM_STORES_AUTO, member 0 of each node chooses the stores for every epoch of
 * SHM_EPOCH_CHUNKS chunks from what the other kind cost in the last SHM_EXPLORE_CHUNKS of the
 * epochs before (see choose_stores). An epoch outlasts the slots (SHM_MAX_SLOTS), which is what
 * makes its choice visible to every member before any member stores a chunk of it. */
enum { SHM_EPOCH_CHUNKS = 128, SHM_EXPLORE_CHUNKS = 4, SHM_EPOCH_RING = 4 };
_Static_assert((int)SHM_EPOCH_CHUNKS >= (int)SHM_MAX_SLOTS, "an epoch must outlast the slots");

/* closing: what a rank does at comm_free. */
enum { SHM_OPEN = 0, SHM_CLOSING_TOGETHER = 1, SHM_CLOSING_ALONE = 2 };

/* A wait's polls: the first SHM_BUSY_POLLS spin without a look at the clock, then it spins
 * (checking the timeout) until spin_polls, then yields its core between polls. With more ranks
 * on the node than cores, spin_polls is SHM_SHARED_CORE_POLLS: the peer it waits for may need
 * its core. */
enum { SHM_BUSY_POLLS = 256, SHM_SPIN_POLLS = 4096, SHM_SHARED_CORE_POLLS = 256 + 16 };

/* The start of each rank's part of the window. Written by that rank only. */
typedef struct shm_header {
    alignas(64) _Atomic uint64_t posted;   /* chunks whose input this rank has put in its slot */
    alignas(64) _Atomic uint64_t reduced;  /* chunks whose slice this rank has summed (owners) */
    alignas(64) _Atomic uint64_t gathered; /* chunks this rank has copied out completely */
    alignas(64) _Atomic int closing;       /* SHM_OPEN, or how it leaves (shm_close) */
    alignas(64) uint64_t slot_floats[SHM_MAX_SLOTS]; /* the size of the chunk in each slot */
    /* what moving chunks cost this rank, by how they were stored (shm_stores) */
    alignas(64) _Atomic uint64_t spent_ns[2];
    _Atomic uint64_t moved_floats[2];
    /* member 0 only: how each epoch's chunks are stored, by epoch % SHM_EPOCH_RING */
    alignas(64) _Atomic int epoch_stores[SHM_EPOCH_RING];
} shm_header;

/* A queued all-reduce: its chunks have sequence numbers first_seq .. first_seq+chunks-1. */
typedef struct shm_pending {
    float *buffer;
    size_t count;
    uint64_t first_seq, chunks;
} shm_pending;

/* A position in the queue: the chunk `seq` of entry `entry` (counted from the first ever). */
typedef struct shm_cursor {
    uint64_t seq, entry;
} shm_cursor;

/* A rank or node that the last progress could not go past, for messages. */
typedef struct shm_blocker {
    uint64_t seq; /* the chunk; UINT64_MAX: none */
    int rank;     /* world rank waited for */
    const char *missing;
} shm_blocker;

/* The ring between nodes over one slice: 2(P-1) steps of one send and one receive. */
typedef struct shm_ring {
    bool active;
    int step;
    float *slice; /* the slice's sum so far, in this rank's slot */
    size_t length;
    MPI_Request requests[2]; /* receive, send */
} shm_ring;

typedef struct shm_state {
    int members, me; /* ranks of this (possibly emulated) node, and this rank's index */
    int owners;      /* slices per chunk: the smallest node's rank count */
    int nodes, node; /* P, and this node's index */
    int ring_previous, ring_next; /* world ranks owning this slice on the neighbouring nodes */
    int *member_rank;             /* world rank of each member */
    int *member_pid;              /* process id of each member; 0: not checkable here */
    /* the window, over every rank of the real node (comm->node) */
    MPI_Win window;
    bool locked;
    int node_ranks;
    shm_header **node_headers; /* every rank of the real node, for closing */
    shm_header **headers;      /* members */
    float **slots;             /* members: slot_count slots of chunk_floats each */
    float **parts;             /* members: what reduce_chunks sums, in member order */
    size_t chunk_floats;
    unsigned slot_count;                      /* slots per rank */
    shm_stores stores;                        /* the policy (DDTRAIN_ALLREDUCE_STORES) */
    unsigned char slot_stores[SHM_MAX_SLOTS]; /* how this rank stored each slot's chunk */
    /* member 0, choosing: each kind's cost per float (seconds; 0 unknown) and the node's
     * totals when last read */
    double cost_per_float[2];
    uint64_t seen_ns[2], seen_floats[2];
    size_t region_bytes;
    float *scratch; /* the ring's receive buffer */
    /* the queue of all-reduces in flight (FIFO) */
    shm_pending *queue;
    uint64_t queue_capacity, queue_head, queue_tail; /* entries, counted from the first ever */
    uint64_t enqueued;                               /* chunks ever queued */
    shm_cursor post, reduce, gather;                 /* this rank's progress */
    unsigned char *copied; /* per owner: its slice of chunk gather.seq is in the gradient */
    int copied_count;
    shm_ring ring;
    shm_blocker blocked[3]; /* post, reduce, gather */
    bool failed;            /* a wait failed: the peers may be gone */
    unsigned spin_polls;    /* polls before a wait yields the core; few when ranks share cores */
} shm_state;

/* ---- geometry ------------------------------------------------------------------------- */

/* Where part `part` of `parts` of n floats starts: cut evenly, on cache lines. */
static size_t part_start(size_t n, int part, int parts) {
    if (part >= parts) return n;
    size_t at = n / (size_t)parts * (size_t)part + n % (size_t)parts * (size_t)part / (size_t)parts;
    return at & ~(size_t)(SHM_LINE_FLOATS - 1);
}

static shm_pending *entry_of(shm_state *s, const shm_cursor *cursor) {
    return &s->queue[cursor->entry % s->queue_capacity];
}

/* The chunk under `cursor`: its floats in the caller's buffer. */
static float *chunk_of(shm_state *s, const shm_cursor *cursor, size_t *n) {
    shm_pending *e = entry_of(s, cursor);
    size_t offset = (size_t)(cursor->seq - e->first_seq) * s->chunk_floats;
    size_t left = e->count - offset;
    *n = left < s->chunk_floats ? left : s->chunk_floats;
    return e->buffer + offset;
}

static void advance(shm_state *s, shm_cursor *cursor) {
    cursor->seq++;
    while (cursor->entry < s->queue_tail) {
        shm_pending *e = entry_of(s, cursor);
        if (cursor->seq < e->first_seq + e->chunks) break;
        cursor->entry++;
    }
}

static float *slot_of(const shm_state *s, int member, uint64_t seq) {
    return s->slots[member] + (size_t)(seq % s->slot_count) * s->chunk_floats;
}

/* ---- moving floats between cores ------------------------------------------------------ */

/* A line one core has just written and another then reads moves cache to cache. That is the
 * fastest path when the two cores are close, but on the project's VM it runs, in phases of
 * seconds (when the hypervisor places the two vCPUs apart), at 1.2-1.6 GB/s where memory gives
 * 40+ GB/s. Streaming (non-temporal) stores send the lines to memory instead, dropping the other
 * cores' copies, and the reader, prefetching ahead, then gets them at memory speed: a lock-step
 * transfer between two cores measured 5-10 GB/s that way in every phase, against 1.2-4.5 GB/s
 * with plain stores; but in the fast phases the all-reduce moves 10-12 GB/s with plain stores
 * and 4-5 with streaming ones, the round trip through memory costing more than it saves
 * (bench/README.md, "bench/allreduce"). So the kind is chosen as the all-reduce runs (see
 * "choosing the stores"), and what is read from a peer is always read with prefetches ahead.
 * Streaming stores are not ordered with the stores after them: fence_streaming() orders them
 * before the flag that hands the data over. */
enum { SHM_PREFETCH_FLOATS = 512 /* how far ahead reads of shared memory prefetch: 2 KiB */ };

typedef float float4 __attribute__((vector_size(16)));                         /* aligned */
typedef float float4u __attribute__((vector_size(16), aligned(4), may_alias)); /* any */

static inline float4 load4(const float *at) {
    return *(const float4u *)at;
}

/* `to` is 16-byte aligned (slots and slices start on cache lines). */
static inline void store4(float *to, float4 v, shm_stores kind) {
#if defined(__SSE2__)
    if (kind == SHM_STORES_STREAMING) {
        _mm_stream_ps(to, v);
        return;
    }
#endif
    (void)kind;
    *(float4 *)to = v;
}

/* Orders every streaming store before the stores that follow (the flags). */
static inline void fence_streaming(void) {
#if defined(__SSE2__)
    _mm_sfence();
#endif
}

/* parts[0] + parts[1] + ... + parts[count-1] over whole lines, in that order (the bits depend
 * on the count alone; count 1 copies), stored `kind` into `shared` (line-aligned) and, when not
 * NULL, into `own` too. `own` may be one of the parts: each line is read whole before it is
 * written. Inlined for each kind, so that the loop has no branch on it. */
static inline __attribute__((always_inline)) void sum_lines(float *shared, float *own,
                                                            const float *const *parts, int count,
                                                            size_t n, shm_stores kind) {
    for (size_t i = 0; i + SHM_LINE_FLOATS <= n; i += SHM_LINE_FLOATS) {
        const float *p = parts[0] + i;
        __builtin_prefetch(p + SHM_PREFETCH_FLOATS);
        float4 a = load4(p), b = load4(p + 4), c = load4(p + 8), d = load4(p + 12);
        for (int k = 1; k < count; k++) {
            p = parts[k] + i;
            __builtin_prefetch(p + SHM_PREFETCH_FLOATS);
            a += load4(p);
            b += load4(p + 4);
            c += load4(p + 8);
            d += load4(p + 12);
        }
        store4(shared + i, a, kind);
        store4(shared + i + 4, b, kind);
        store4(shared + i + 8, c, kind);
        store4(shared + i + 12, d, kind);
        if (own) {
            *(float4u *)(own + i) = a;
            *(float4u *)(own + i + 4) = b;
            *(float4u *)(own + i + 8) = c;
            *(float4u *)(own + i + 12) = d;
        }
    }
}

/* sum_lines over any n: the floats after the last whole line are summed one by one. */
static void sum_to_shared(float *shared, float *own, const float *const *parts, int count, size_t n,
                          shm_stores kind) {
    if (kind == SHM_STORES_STREAMING)
        sum_lines(shared, own, parts, count, n, SHM_STORES_STREAMING);
    else
        sum_lines(shared, own, parts, count, n, SHM_STORES_PLAIN);
    for (size_t i = n & ~(size_t)(SHM_LINE_FLOATS - 1); i < n; i++) {
        float sum = parts[0][i];
        for (int k = 1; k < count; k++)
            sum += parts[k][i];
        shared[i] = sum;
        if (own) own[i] = sum;
    }
}

static void copy_to_shared(float *shared, const float *from, size_t n, shm_stores kind) {
    sum_to_shared(shared, NULL, &from, 1, n, kind);
}

/* Copies a peer's floats out of shared memory, prefetching ahead. */
static void copy_from_shared(float *to, const float *shared, size_t n) {
    size_t i = 0;
    for (; i + SHM_LINE_FLOATS <= n; i += SHM_LINE_FLOATS) {
        const float *p = shared + i;
        __builtin_prefetch(p + SHM_PREFETCH_FLOATS);
        float4 a = load4(p), b = load4(p + 4), c = load4(p + 8), d = load4(p + 12);
        *(float4u *)(to + i) = a;
        *(float4u *)(to + i + 4) = b;
        *(float4u *)(to + i + 8) = c;
        *(float4u *)(to + i + 12) = d;
    }
    for (; i < n; i++)
        to[i] = shared[i];
}

/* acc[i] += b[i] (the ring between nodes: the partial received plus this node's own). */
static void add_to(float *acc, const float *b, size_t n) {
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        *(float4u *)(acc + i) = load4(acc + i) + load4(b + i);
    for (; i < n; i++)
        acc[i] += b[i];
}

/* ---- flags ---------------------------------------------------------------------------- */

static uint64_t flag_posted(const shm_header *h) {
    return atomic_load_explicit(&((shm_header *)h)->posted, memory_order_acquire);
}
static uint64_t flag_reduced(const shm_header *h) {
    return atomic_load_explicit(&((shm_header *)h)->reduced, memory_order_acquire);
}
static uint64_t flag_gathered(const shm_header *h) {
    return atomic_load_explicit(&((shm_header *)h)->gathered, memory_order_acquire);
}

static void note_blocked(shm_state *s, int phase, uint64_t seq, int rank, const char *missing) {
    s->blocked[phase] = (shm_blocker){.seq = seq, .rank = rank, .missing = missing};
}

/* A peer wrote a chunk of another size than this rank expects: the ranks are not reducing
 * the same buffers (a bug), which must fail rather than sum garbage. */
static ddt_status check_size(const shm_state *s, int member, uint64_t seq, size_t expected) {
    uint64_t theirs = s->headers[member]->slot_floats[seq % s->slot_count];
    if (theirs == expected) return DDT_OK;
    return ddt_error(DDT_ERR_INTERNAL,
                     "gradient all-reduce: rank %d put %llu floats in chunk %llu where rank %d "
                     "has %zu: the ranks are not reducing the same buffers",
                     s->member_rank[member], (unsigned long long)theirs, (unsigned long long)seq,
                     s->member_rank[s->me], expected);
}

/* ---- choosing the stores ----------------------------------------------------------------- */

static const char *stores_name(shm_stores stores) {
    return stores == SHM_STORES_PLAIN       ? "plain"
           : stores == SHM_STORES_STREAMING ? "streaming"
                                            : "auto";
}

/* How every member stores chunk `seq`: the policy, or under SHM_STORES_AUTO the choice for its
 * epoch, except for the epoch's last SHM_EXPLORE_CHUNKS chunks, stored the other way so that
 * both kinds keep being measured. The same on every member: it depends on `seq` and member 0's
 * choice alone. */
static shm_stores stores_for(const shm_state *s, uint64_t seq) {
    if (s->stores != SHM_STORES_AUTO) return s->stores;
    uint64_t epoch = seq / SHM_EPOCH_CHUNKS;
    shm_stores chosen = SHM_STORES_STREAMING;
    if (epoch > 0)
        chosen = (shm_stores)atomic_load_explicit(
            &s->headers[0]->epoch_stores[epoch % SHM_EPOCH_RING], memory_order_relaxed);
    bool explore = seq % SHM_EPOCH_CHUNKS >= SHM_EPOCH_CHUNKS - SHM_EXPLORE_CHUNKS;
    if (!explore) return chosen;
    return chosen == SHM_STORES_STREAMING ? SHM_STORES_PLAIN : SHM_STORES_STREAMING;
}

/* When moving a chunk begins, for account(); only SHM_STORES_AUTO keeps accounts. */
static double account_start(const shm_state *s) {
    return s->stores == SHM_STORES_AUTO ? clock_now() : 0;
}

/* counter += amount, for a counter only this rank writes (so no atomic read-modify-write). */
static void add_own_counter(_Atomic uint64_t *counter, uint64_t amount) {
    atomic_store_explicit(counter, atomic_load_explicit(counter, memory_order_relaxed) + amount,
                          memory_order_relaxed);
}

/* Adds to this rank's account: `floats` of a chunk stored `kind` moved since `started`. Only
 * this rank writes its account; member 0 reads it. */
static void account(shm_state *s, shm_stores kind, double started, size_t floats) {
    if (s->stores != SHM_STORES_AUTO) return;
    shm_header *mine = s->headers[s->me];
    add_own_counter(&mine->spent_ns[kind], (uint64_t)((clock_now() - started) * 1e9));
    add_own_counter(&mine->moved_floats[kind], floats);
}

/* Member 0, before it stores the first chunk of `epoch`: chooses how epoch + 1 is stored, the
 * kind that has cost the node's ranks less time per float moved. Each kind's cost is its cost
 * since the last choice averaged with the cost before (half weight per epoch), so a change of
 * phase turns the choice within an epoch or two. The choice reaches every member before it
 * stores a chunk of epoch + 1: storing one needs every member to have gathered a chunk after
 * this one (an epoch outlasts the slots), and member 0 publishes that after this store. */
static void choose_stores(shm_state *s, uint64_t epoch) {
    for (int kind = 0; kind < 2; kind++) {
        uint64_t ns = 0, floats = 0;
        for (int j = 0; j < s->members; j++) {
            ns += atomic_load_explicit(&s->headers[j]->spent_ns[kind], memory_order_relaxed);
            floats +=
                atomic_load_explicit(&s->headers[j]->moved_floats[kind], memory_order_relaxed);
        }
        if (floats == s->seen_floats[kind]) continue; /* nothing new: keep the estimate */
        double cost = (double)(ns - s->seen_ns[kind]) / (double)(floats - s->seen_floats[kind]);
        s->cost_per_float[kind] =
            s->cost_per_float[kind] > 0 ? 0.5 * (s->cost_per_float[kind] + cost) : cost;
        s->seen_ns[kind] = ns;
        s->seen_floats[kind] = floats;
    }
    shm_stores next = stores_for(s, epoch * SHM_EPOCH_CHUNKS); /* this epoch's */
    if (s->cost_per_float[SHM_STORES_PLAIN] > 0 && s->cost_per_float[SHM_STORES_STREAMING] > 0)
        next = s->cost_per_float[SHM_STORES_STREAMING] <= s->cost_per_float[SHM_STORES_PLAIN]
                   ? SHM_STORES_STREAMING
                   : SHM_STORES_PLAIN;
    atomic_store_explicit(&s->headers[0]->epoch_stores[(epoch + 1) % SHM_EPOCH_RING], (int)next,
                          memory_order_relaxed);
}

/* ---- the ring between nodes ----------------------------------------------------------- */

static void ring_block(const shm_ring *r, int nodes, int block, float **at, int *length) {
    int b = ((block % nodes) + nodes) % nodes;
    size_t start = part_start(r->length, b, nodes), end = part_start(r->length, b + 1, nodes);
    *at = r->slice + start;
    *length = (int)(end - start);
}

/* Posts step r->step: reduce-scatter steps send this node's partial of one block to the next
 * node and receive the previous node's partial of another into scratch; all-gather steps pass
 * finished blocks along. */
static ddt_status ring_post(comm *c, shm_state *s) {
    shm_ring *r = &s->ring;
    int p = s->node, n = s->nodes, k = r->step;
    bool scatter = k < n - 1;
    int send_block = scatter ? p - k : p + 1 - (k - (n - 1));
    int receive_block = scatter ? p - k - 1 : p - (k - (n - 1));
    float *send_at, *receive_at;
    int send_length, receive_length;
    ring_block(r, n, send_block, &send_at, &send_length);
    ring_block(r, n, receive_block, &receive_at, &receive_length);
    int rc = MPI_Irecv(scatter ? s->scratch : receive_at, receive_length, MPI_FLOAT,
                       s->ring_previous, SHM_RING_TAG, c->world, &r->requests[0]);
    if (rc == MPI_SUCCESS)
        rc = MPI_Isend(send_at, send_length, MPI_FLOAT, s->ring_next, SHM_RING_TAG, c->world,
                       &r->requests[1]);
    if (rc != MPI_SUCCESS) return comm_mpi_error(rc, "the all-reduce's ring between nodes");
    return DDT_OK;
}

static ddt_status ring_start(comm *c, shm_state *s, float *slice, size_t length) {
    s->ring = (shm_ring){.active = true, .slice = slice, .length = length};
    return ring_post(c, s);
}

/* Advances the ring without waiting; *done once the slice holds the sum over all nodes. */
static ddt_status ring_progress(comm *c, shm_state *s, bool *moved, bool *done) {
    shm_ring *r = &s->ring;
    *done = false;
    for (;;) {
        int complete = 0;
        int rc = MPI_Testall(2, r->requests, &complete, MPI_STATUSES_IGNORE);
        if (rc != MPI_SUCCESS) return comm_mpi_error(rc, "the all-reduce's ring between nodes");
        if (!complete) return DDT_OK;
        *moved = true;
        if (r->step < s->nodes - 1) {
            /* The partial that came in (nodes before this one, in ring order) plus this
             * node's own: the order is fixed by the ring alone. */
            float *at;
            int length;
            ring_block(r, s->nodes, s->node - r->step - 1, &at, &length);
            add_to(at, s->scratch, (size_t)length);
        }
        if (++r->step == 2 * (s->nodes - 1)) {
            r->active = false;
            *done = true;
            return DDT_OK;
        }
        DDT_CHECK(ring_post(c, s));
    }
}

/* ---- progress -------------------------------------------------------------------------- */

/* (1) Puts the slices other ranks own of every queued chunk into this rank's slots, as far as
 * free slots allow. */
static ddt_status post_chunks(shm_state *s, bool *moved) {
    while (s->post.seq < s->enqueued) {
        uint64_t seq = s->post.seq;
        if (seq >= s->slot_count) {
            uint64_t needed = seq - s->slot_count + 1; /* the slot's last chunk gathered by all */
            if (s->gather.seq < needed) return DDT_OK; /* this rank's own gather says why */
            for (int j = 0; j < s->members; j++)
                if (j != s->me && flag_gathered(s->headers[j]) < needed) {
                    note_blocked(s, 0, needed - 1, s->member_rank[j],
                                 "has not finished an earlier chunk (its slot is still in use)");
                    return DDT_OK;
                }
        }
        if (s->stores == SHM_STORES_AUTO && s->me == 0 && seq % SHM_EPOCH_CHUNKS == 0)
            choose_stores(s, seq / SHM_EPOCH_CHUNKS);
        shm_stores kind = stores_for(s, seq);
        s->slot_stores[seq % s->slot_count] = (unsigned char)kind;
        size_t n;
        const float *chunk = chunk_of(s, &s->post, &n);
        float *slot = slot_of(s, s->me, seq);
        double started = account_start(s);
        for (int j = 0; j < s->owners; j++) {
            if (j == s->me) continue; /* its own slice is summed from its gradient */
            size_t start = part_start(n, j, s->owners), end = part_start(n, j + 1, s->owners);
            copy_to_shared(slot + start, chunk + start, end - start, kind);
        }
        account(s, kind, started, n);
        shm_header *mine = s->headers[s->me];
        mine->slot_floats[seq % s->slot_count] = n;
        fence_streaming();
        atomic_store_explicit(&mine->posted, seq + 1, memory_order_release);
        advance(s, &s->post);
        *moved = true;
    }
    return DDT_OK;
}

/* Ends the reduction of chunk `seq`: this rank's slice is final in its slot (and gradient). */
static void publish_reduced(shm_state *s, uint64_t seq) {
    fence_streaming();
    atomic_store_explicit(&s->headers[s->me]->reduced, seq + 1, memory_order_release);
    advance(s, &s->reduce);
}

/* (2) Owners: sums this rank's slice of each posted chunk over the node's ranks, in member
 * order, into its slot (and, on one node, its gradient); across nodes, the ring follows. */
static ddt_status reduce_chunks(comm *c, shm_state *s, bool *moved) {
    if (s->me >= s->owners) return DDT_OK;
    while (s->reduce.seq < s->post.seq) {
        uint64_t seq = s->reduce.seq;
        size_t n;
        float *chunk = chunk_of(s, &s->reduce, &n);
        size_t start = part_start(n, s->me, s->owners);
        size_t length = part_start(n, s->me + 1, s->owners) - start;
        float *sum = slot_of(s, s->me, seq) + start, *own = chunk + start;
        if (s->ring.active) {
            bool done = false;
            DDT_CHECK(ring_progress(c, s, moved, &done));
            if (!done) {
                note_blocked(s, 1, seq, s->ring_previous,
                             "(on another node) has not sent its part of the sum");
                return DDT_OK;
            }
            memcpy(own, sum, length * sizeof(float));
            publish_reduced(s, seq);
            continue;
        }
        for (int j = 0; j < s->members; j++)
            if (j != s->me && flag_posted(s->headers[j]) <= seq) {
                note_blocked(s, 1, seq, s->member_rank[j], "has not posted its part");
                return DDT_OK;
            }
        for (int j = 0; j < s->members; j++)
            if (j != s->me) DDT_CHECK(check_size(s, j, seq, n));
        failpoint_stall("allreduce", s->member_rank[s->me]);
        failpoint_kill("allreduce", s->member_rank[s->me]);
        bool across = s->nodes > 1;
        for (int j = 0; j < s->members; j++)
            s->parts[j] = j == s->me ? own : slot_of(s, j, seq) + start;
        shm_stores kind = (shm_stores)s->slot_stores[seq % s->slot_count];
        double started = account_start(s);
        sum_to_shared(sum, across ? NULL : own, (const float *const *)s->parts, s->members, length,
                      kind);
        account(s, kind, started, length);
        *moved = true;
        if (across && length > 0) {
            DDT_CHECK(ring_start(c, s, sum, length));
            continue; /* the ring's first test comes next round */
        }
        if (across) memcpy(own, sum, length * sizeof(float));
        publish_reduced(s, seq);
    }
    return DDT_OK;
}

/* (3) Copies every other owner's sum of each chunk into this rank's gradient, in whatever
 * order the sums become ready; a chunk complete, its queue entry may end. */
static ddt_status gather_chunks(shm_state *s, bool *moved) {
    while (s->gather.seq < s->post.seq) {
        uint64_t seq = s->gather.seq;
        if (s->me < s->owners && !s->copied[s->me]) {
            if (s->reduce.seq <= seq) return DDT_OK; /* its own slice first */
            s->copied[s->me] = 1;                    /* summed into the gradient in place */
            s->copied_count++;
        }
        size_t n;
        float *chunk = chunk_of(s, &s->gather, &n);
        for (int j = 0; j < s->owners; j++) {
            if (s->copied[j]) continue;
            if (flag_reduced(s->headers[j]) <= seq) {
                note_blocked(s, 2, seq, s->member_rank[j], "has not summed its slice");
                continue;
            }
            DDT_CHECK(check_size(s, j, seq, n));
            size_t start = part_start(n, j, s->owners), end = part_start(n, j + 1, s->owners);
            double started = account_start(s);
            copy_from_shared(chunk + start, slot_of(s, j, seq) + start, end - start);
            account(s, (shm_stores)s->slot_stores[seq % s->slot_count], started, end - start);
            s->copied[j] = 1;
            s->copied_count++;
            *moved = true;
        }
        if (s->copied_count < s->owners) return DDT_OK;
        memset(s->copied, 0, (size_t)s->owners);
        s->copied_count = 0;
        atomic_store_explicit(&s->headers[s->me]->gathered, seq + 1, memory_order_release);
        advance(s, &s->gather);
        while (s->queue_head < s->gather.entry)
            s->queue_head++;
        *moved = true;
    }
    return DDT_OK;
}

/* Advances every phase as far as it can go without waiting. */
static ddt_status progress(comm *c, shm_state *s, bool *moved) {
    for (int phase = 0; phase < 3; phase++)
        s->blocked[phase].seq = UINT64_MAX;
    for (;;) {
        bool again = false;
        DDT_CHECK(post_chunks(s, &again));
        DDT_CHECK(reduce_chunks(c, s, &again));
        DDT_CHECK(gather_chunks(s, &again));
        if (!again) return DDT_OK;
        *moved = true;
    }
}

/* ---- waiting --------------------------------------------------------------------------- */

/* Whether the process of a member on this node has ended (killed, exited; a zombie counts). */
static bool member_gone(const shm_state *s, int member) {
    int pid = s->member_pid[member];
    if (pid <= 0) return false;
    if (kill(pid, 0) != 0) return errno == ESRCH;
    char path[64], text[256];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return false;
    size_t got = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[got] = '\0';
    const char *paren = strrchr(text, ')'); /* "pid (name) STATE ..." */
    return paren && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X');
}

static const shm_blocker *first_blocker(const shm_state *s) {
    const shm_blocker *first = NULL;
    for (int phase = 0; phase < 3; phase++)
        if (s->blocked[phase].seq != UINT64_MAX && (!first || s->blocked[phase].seq < first->seq))
            first = &s->blocked[phase];
    return first;
}

static int member_index(const shm_state *s, int world_rank) {
    for (int j = 0; j < s->members; j++)
        if (s->member_rank[j] == world_rank) return j;
    return -1;
}

static ddt_status failed(shm_state *s, ddt_status status) {
    s->failed = true;
    return status;
}

static inline void pause_briefly(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Advances and waits until this rank has gathered every chunk before `end_seq`. A wait that
 * makes no progress for the timeout fails naming the rank it waits for; a peer on this node
 * whose process has ended fails it at once. Spins first (a peer is usually microseconds
 * away), then yields the core (to the reader thread, or to a peer sharing it) between polls:
 * SHM_BUSY_POLLS and spin_polls say when. */
static ddt_status wait_until(comm *c, shm_state *s, uint64_t end_seq, const char *what) {
    comm_wait w = comm_wait_begin(c);
    double last_check = w.started;
    bool progressed = false; /* since the last tick: the timeout counts from progress */
    for (unsigned idle = 0;;) {
        bool moved = false;
        ddt_status status = progress(c, s, &moved);
        if (status != DDT_OK) return failed(s, status);
        if (s->gather.seq >= end_seq) return DDT_OK;
        if (moved) {
            progressed = true;
            idle = 0;
            continue;
        }
        idle++;
        if (idle < SHM_BUSY_POLLS) {
            pause_briefly();
            continue;
        }
        if (idle % 16 == 0) {
            if (progressed) w.started = clock_now();
            progressed = false;
            const shm_blocker *b = first_blocker(s);
            status = comm_wait_tick_naming(c, &w, what, b ? b->rank : -1, b ? b->missing : "");
            if (status != DDT_OK) return failed(s, status);
            if (b && w.now - last_check >= 0.05) {
                last_check = w.now;
                int j = member_index(s, b->rank);
                if (j >= 0 && member_gone(s, j))
                    return failed(s, ddt_error(DDT_ERR_COMM,
                                               "%s: rank %d (process %d on this node) is gone: "
                                               "it exited or was killed while the others "
                                               "waited for it",
                                               what, b->rank, s->member_pid[j]));
            }
        }
        if (idle < s->spin_polls)
            pause_briefly();
        else
            sched_yield();
    }
}

/* ---- the backend's operations ---------------------------------------------------------- */

static ddt_status shm_reserve_requests(comm *c, int requests) {
    shm_state *s = c->backend;
    uint64_t wanted = (uint64_t)requests + 2; /* and comm_allreduce_floats */
    if (!s || wanted <= s->queue_capacity) return DDT_OK;
    if (s->queue_tail != s->queue_head)
        return ddt_error(DDT_ERR_INTERNAL, "all-reduce requests reserved while some are in flight");
    shm_pending *queue = realloc(s->queue, wanted * sizeof *queue);
    if (!queue) return ddt_error(DDT_ERR_MEMORY, "out of host memory for all-reduce requests");
    s->queue = queue;
    s->queue_capacity = wanted;
    /* Empty queue: renumber entries from 0 so positions stay valid under the new capacity. */
    s->post.entry = s->reduce.entry = s->gather.entry = 0;
    s->queue_head = s->queue_tail = 0;
    return DDT_OK;
}

static ddt_status shm_allreduce_start(comm *c, float *buffer, size_t count, comm_request *request) {
    shm_state *s = c->backend;
    if (!s || count == 0) { /* one rank, or nothing to sum */
        request->handle = NULL;
        return DDT_OK;
    }
    if (s->failed) return ddt_error(DDT_ERR_COMM, "the all-reduce's communicator failed earlier");
    if (s->queue_tail - s->queue_head >= s->queue_capacity)
        return ddt_error(DDT_ERR_INTERNAL, "more all-reduces in flight (%llu) than reserved",
                         (unsigned long long)(s->queue_tail - s->queue_head));
    uint64_t chunks = (count + s->chunk_floats - 1) / s->chunk_floats;
    s->queue[s->queue_tail % s->queue_capacity] =
        (shm_pending){.buffer = buffer, .count = count, .first_seq = s->enqueued, .chunks = chunks};
    s->queue_tail++;
    s->enqueued += chunks;
    request->handle = (void *)(uintptr_t)s->enqueued; /* done once gathered reaches it */
    bool moved = false;
    ddt_status status = progress(c, s, &moved);
    return status == DDT_OK ? DDT_OK : failed(s, status);
}

static ddt_status shm_allreduce_test(comm *c, comm_request *request, bool *done) {
    shm_state *s = c->backend;
    uint64_t end = (uint64_t)(uintptr_t)request->handle;
    if (!s || s->gather.seq >= end) {
        *done = true;
        return DDT_OK;
    }
    bool moved = false;
    ddt_status status = progress(c, s, &moved);
    if (status != DDT_OK) return failed(s, status);
    *done = s->gather.seq >= end;
    return DDT_OK;
}

static ddt_status shm_allreduce_wait(comm *c, comm_request *request) {
    shm_state *s = c->backend;
    uint64_t end = (uint64_t)(uintptr_t)request->handle;
    if (!s || s->gather.seq >= end) return DDT_OK;
    return wait_until(c, s, end, "a gradient all-reduce");
}

static ddt_status shm_allreduce(comm *c, float *buffer, size_t count) {
    comm_request request = {0};
    DDT_CHECK(shm_allreduce_start(c, buffer, count, &request));
    return shm_allreduce_wait(c, &request);
}

/* ---- set-up ---------------------------------------------------------------------------- */

/* What every rank tells every other at set-up. */
typedef struct shm_place {
    int node_leader; /* world rank of local rank 0: names the real node */
    int local_rank;  /* in comm->node */
    int pid;
    int node_ranks; /* DDTRAIN_NODE_RANKS (0: the whole node) */
    int refused;    /* its knobs were refused */
    int stores;     /* shm_stores (DDTRAIN_ALLREDUCE_STORES) */
    unsigned long long pid_namespace;
    unsigned long long chunk_floats;
    unsigned slot_count;
} shm_place;

static ddt_status read_knobs(shm_place *mine) {
    mine->chunk_floats = SHM_DEFAULT_CHUNK / sizeof(float);
    const char *text = getenv("DDTRAIN_ALLREDUCE_CHUNK");
    if (text && *text) {
        uint64_t bytes = 0;
        DDT_CHECK(units_parse_size("DDTRAIN_ALLREDUCE_CHUNK", text, &bytes));
        if (bytes < SHM_MIN_CHUNK || bytes > SHM_MAX_CHUNK)
            return ddt_error(DDT_ERR_USAGE, "DDTRAIN_ALLREDUCE_CHUNK=%s: give 4KiB to 64MiB", text);
        mine->chunk_floats = bytes / sizeof(float) & ~(uint64_t)(SHM_LINE_FLOATS - 1);
    }
    mine->slot_count = SHM_DEFAULT_SLOTS;
    text = getenv("DDTRAIN_ALLREDUCE_SLOTS");
    if (text && *text) {
        char *end = NULL;
        long k = strtol(text, &end, 10);
        if (*end || k < 2 || k > SHM_MAX_SLOTS)
            return ddt_error(DDT_ERR_USAGE, "DDTRAIN_ALLREDUCE_SLOTS=%s: give 2 to %d", text,
                             SHM_MAX_SLOTS);
        mine->slot_count = (unsigned)k;
    }
    mine->stores = SHM_STORES_AUTO;
    text = getenv("DDTRAIN_ALLREDUCE_STORES");
    if (text && *text) {
        if (strcmp(text, "plain") == 0)
            mine->stores = SHM_STORES_PLAIN;
        else if (strcmp(text, "streaming") == 0)
            mine->stores = SHM_STORES_STREAMING;
        else if (strcmp(text, "auto") != 0)
            return ddt_error(DDT_ERR_USAGE,
                             "DDTRAIN_ALLREDUCE_STORES=%s: give auto, plain or streaming", text);
    }
    mine->node_ranks = 0;
    text = getenv("DDTRAIN_NODE_RANKS");
    if (text && *text) {
        char *end = NULL;
        long k = strtol(text, &end, 10);
        if (*end || k < 1 || k > INT_MAX)
            return ddt_error(DDT_ERR_USAGE, "DDTRAIN_NODE_RANKS=%s: give a positive rank count",
                             text);
        mine->node_ranks = (int)k;
    }
    return DDT_OK;
}

static ddt_status shm_check_environment(void) {
    shm_place scratch;
    memset(&scratch, 0, sizeof scratch);
    return read_knobs(&scratch);
}

static bool same_node(const shm_place *a, const shm_place *b) {
    if (a->node_leader != b->node_leader) return false;
    return a->node_ranks == 0 || a->local_rank / a->node_ranks == b->local_rank / b->node_ranks;
}

/* Nodes, members, owners and ring neighbours from every rank's place. */
static ddt_status find_places(comm *c, shm_state *s, const shm_place *all) {
    int world = c->world_size;
    int *node_of = calloc((size_t)world, sizeof *node_of);
    int *size_of = calloc((size_t)world, sizeof *size_of);
    s->member_rank = malloc((size_t)world * sizeof *s->member_rank);
    s->member_pid = calloc((size_t)world, sizeof *s->member_pid);
    if (!node_of || !size_of || !s->member_rank || !s->member_pid) {
        free(node_of);
        free(size_of);
        return ddt_error(DDT_ERR_MEMORY, "out of host memory setting up the all-reduce");
    }
    s->nodes = 0;
    for (int q = 0; q < world; q++) { /* nodes numbered by their lowest world rank */
        node_of[q] = -1;
        for (int r = 0; r < q && node_of[q] < 0; r++)
            if (same_node(&all[q], &all[r])) node_of[q] = node_of[r];
        if (node_of[q] < 0) node_of[q] = s->nodes++;
        size_of[node_of[q]]++;
    }
    s->node = node_of[c->rank];
    s->owners = INT_MAX;
    for (int n = 0; n < s->nodes; n++)
        if (size_of[n] < s->owners) s->owners = size_of[n];
    s->members = 0;
    for (int q = 0; q < world; q++) {
        if (node_of[q] != s->node) continue;
        if (q == c->rank) s->me = s->members;
        s->member_rank[s->members] = q;
        /* Process ids mean something only in this rank's pid namespace. */
        if (all[q].pid_namespace == all[c->rank].pid_namespace &&
            all[q].node_leader == all[c->rank].node_leader)
            s->member_pid[s->members] = all[q].pid;
        s->members++;
    }
    s->ring_previous = s->ring_next = -1;
    if (s->nodes > 1 && s->me < s->owners) {
        int previous = (s->node + s->nodes - 1) % s->nodes, next = (s->node + 1) % s->nodes;
        int seen_previous = 0, seen_next = 0;
        for (int q = 0; q < world; q++) {
            if (node_of[q] == previous && seen_previous++ == s->me) s->ring_previous = q;
            if (node_of[q] == next && seen_next++ == s->me) s->ring_next = q;
        }
    }
    free(node_of);
    free(size_of);
    s->copied = calloc((size_t)s->owners, 1);
    if (!s->copied)
        return ddt_error(DDT_ERR_MEMORY, "out of host memory setting up the all-reduce");
    return DDT_OK;
}

/* A barrier over the node, polled under the communicator's timeout. */
static ddt_status node_barrier(comm *c, const char *what) {
    MPI_Request request;
    int rc = MPI_Ibarrier(c->node, &request);
    if (rc != MPI_SUCCESS) return comm_mpi_error(rc, what);
    return comm_mpi_wait(c, &request, what);
}

static unsigned long long pid_namespace(void) {
    struct stat st;
    return stat("/proc/self/ns/pid", &st) == 0 ? (unsigned long long)st.st_ino : 0;
}

/* The shared window over the real node: every rank's header and slots. */
static ddt_status map_window(comm *c, shm_state *s, const shm_place *all) {
    size_t header = (sizeof(shm_header) + 4095) & ~(size_t)4095;
    /* and a line's room: Open MPI's header before each part leaves it unaligned */
    s->region_bytes =
        header + (size_t)s->slot_count * s->chunk_floats * sizeof(float) + SHM_LINE_BYTES;
    /* Every rank is known to be here before the one blocking call. */
    DDT_CHECK(node_barrier(c, "setting up the shared-memory all-reduce"));
    MPI_Info info;
    MPI_Info_create(&info);
    MPI_Info_set(info, "alloc_shared_noncontig", "true"); /* each part in its rank's memory */
    void *base = NULL;
    int rc =
        MPI_Win_allocate_shared((MPI_Aint)s->region_bytes, 1, info, c->node, &base, &s->window);
    MPI_Info_free(&info);
    if (rc != MPI_SUCCESS) {
        s->window = MPI_WIN_NULL;
        return comm_mpi_error(rc, "MPI_Win_allocate_shared (the all-reduce's shared memory)");
    }
    MPI_Comm_size(c->node, &s->node_ranks);
    s->node_headers = calloc((size_t)s->node_ranks, sizeof *s->node_headers);
    s->headers = calloc((size_t)s->members, sizeof *s->headers);
    s->slots = calloc((size_t)s->members, sizeof *s->slots);
    s->parts = calloc((size_t)s->members, sizeof *s->parts);
    if (!s->node_headers || !s->headers || !s->slots || !s->parts)
        return ddt_error(DDT_ERR_MEMORY, "out of host memory setting up the all-reduce");
    for (int r = 0; r < s->node_ranks; r++) {
        MPI_Aint size = 0;
        int unit = 0;
        void *at = NULL;
        rc = MPI_Win_shared_query(s->window, r, &size, &unit, &at);
        if (rc != MPI_SUCCESS) return comm_mpi_error(rc, "MPI_Win_shared_query");
        /* Open MPI puts its own header first: each part starts on the next cache line. */
        at = (void *)(((uintptr_t)at + SHM_LINE_BYTES - 1) & ~(uintptr_t)(SHM_LINE_BYTES - 1));
        s->node_headers[r] = at;
    }
    for (int j = 0; j < s->members; j++) {
        char *at = (char *)s->node_headers[all[s->member_rank[j]].local_rank];
        s->headers[j] = (shm_header *)at;
        s->slots[j] = (float *)(at + header);
    }
    shm_header *mine = s->headers[s->me];
    memset(mine, 0, sizeof *mine);
    atomic_store(&mine->closing, SHM_OPEN);
    rc = MPI_Win_lock_all(MPI_MODE_NOCHECK, s->window); /* a passive epoch for loads and stores */
    if (rc != MPI_SUCCESS) return comm_mpi_error(rc, "MPI_Win_lock_all");
    s->locked = true;
    /* Every header is cleared before anybody reads one. */
    return node_barrier(c, "setting up the shared-memory all-reduce");
}

static void shm_release(comm *c, shm_state *s, bool together);

static ddt_status shm_open(comm *c) {
    c->backend = NULL;
    if (c->world_size == 1) return DDT_OK; /* nothing to reduce with */
    shm_state *s = calloc(1, sizeof *s);
    shm_place *all = calloc((size_t)c->world_size, sizeof *all);
    if (!s || !all) {
        free(s);
        free(all);
        return ddt_error(DDT_ERR_MEMORY, "out of host memory setting up the all-reduce");
    }
    s->window = MPI_WIN_NULL;
    shm_place mine = {
        .local_rank = c->local_rank, .pid = (int)getpid(), .pid_namespace = pid_namespace()};
    ddt_status status = read_knobs(&mine);
    char refused[512] = "";
    if (status != DDT_OK) {
        snprintf(refused, sizeof refused, "%s", ddt_error_message());
        mine.refused = 1;
    }
    /* Every rank learns every rank's place and knobs, so all decide alike below. */
    int leader = c->rank;
    MPI_Request request;
    int rc = MPI_Iallreduce(MPI_IN_PLACE, &leader, 1, MPI_INT, MPI_MIN, c->node, &request);
    if (rc != MPI_SUCCESS) {
        status = comm_mpi_error(rc, "MPI_Iallreduce (the node's ranks)");
        goto fail;
    }
    DDT_CHECK_GOTO(comm_mpi_wait(c, &request, "finding the node's ranks"), status, fail);
    mine.node_leader = leader;
    DDT_CHECK_GOTO(
        comm_allgather_bytes(c, &mine, sizeof mine, all, "the ranks' places for the all-reduce"),
        status, fail);
    for (int q = 0; q < c->world_size; q++) {
        if (all[q].refused) {
            status = mine.refused ? ddt_error(DDT_ERR_USAGE, "%s", refused)
                                  : ddt_error(DDT_ERR_USAGE,
                                              "rank %d refused its environment for the "
                                              "all-reduce (its message says why)",
                                              q);
            goto fail;
        }
        if (all[q].chunk_floats != mine.chunk_floats || all[q].node_ranks != mine.node_ranks ||
            all[q].slot_count != mine.slot_count || all[q].stores != mine.stores) {
            status = ddt_error(DDT_ERR_USAGE,
                               "ranks %d and %d were given different DDTRAIN_ALLREDUCE_CHUNK, "
                               "DDTRAIN_ALLREDUCE_SLOTS, DDTRAIN_ALLREDUCE_STORES or "
                               "DDTRAIN_NODE_RANKS: give every rank the same environment",
                               q < c->rank ? q : c->rank, q < c->rank ? c->rank : q);
            goto fail;
        }
    }
    s->chunk_floats = mine.chunk_floats;
    s->slot_count = mine.slot_count;
    s->stores = (shm_stores)mine.stores;
    DDT_CHECK_GOTO(find_places(c, s, all), status, fail);
    DDT_CHECK_GOTO(map_window(c, s, all), status, fail);
    /* More ranks on the node than cores to run them: a waiting rank may be holding up the very
     * peer it waits for, so it yields its core soon after it stops spinning. */
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    s->spin_polls = cores > 0 && s->node_ranks > cores ? SHM_SHARED_CORE_POLLS : SHM_SPIN_POLLS;
    if (s->nodes > 1) {
        s->scratch = malloc(s->chunk_floats * sizeof(float));
        if (!s->scratch) {
            status = ddt_error(DDT_ERR_MEMORY, "out of host memory for the all-reduce's ring");
            goto fail;
        }
    }
    s->queue_capacity = 16;
    s->queue = calloc(s->queue_capacity, sizeof *s->queue);
    if (!s->queue) {
        status = ddt_error(DDT_ERR_MEMORY, "out of host memory for the all-reduce's queue");
        goto fail;
    }
    free(all);
    for (int phase = 0; phase < 3; phase++)
        s->blocked[phase].seq = UINT64_MAX;
    c->backend = s;
    /* The window and the ring's buffer are the node's memory outside the allocator. */
    c->device_bytes_unrouted = s->region_bytes + (s->scratch ? s->chunk_floats * sizeof(float) : 0);
    if (c->rank == 0 && (getenv("DDTRAIN_ALLREDUCE_CHUNK") || getenv("DDTRAIN_ALLREDUCE_SLOTS") ||
                         getenv("DDTRAIN_ALLREDUCE_STORES") || getenv("DDTRAIN_NODE_RANKS")))
        fprintf(stderr,
                "ddtrain: all-reduce: %zu KiB chunks, %u slots, %s stores; %d node(s), %d "
                "slice(s) per chunk (DDTRAIN_ALLREDUCE_CHUNK, DDTRAIN_ALLREDUCE_SLOTS, "
                "DDTRAIN_ALLREDUCE_STORES, DDTRAIN_NODE_RANKS)\n",
                s->chunk_floats * sizeof(float) / 1024, s->slot_count, stores_name(s->stores),
                s->nodes, s->owners);
    return DDT_OK;
fail:
    free(all);
    /* A set-up that failed on one rank may leave others inside the window's creation: never
     * free it collectively here. */
    shm_release(c, s, false);
    return status;
}

/* Whether every rank of the node leaves together, so the window can be freed collectively:
 * each says how it leaves; waits (bounded) for all to say. */
static bool leave_together(comm *c, shm_state *s) {
    shm_header *mine = s->headers ? s->headers[s->me] : NULL;
    bool together = !s->failed && !c->abandoned && mine && s->node_headers;
    if (mine) atomic_store(&mine->closing, together ? SHM_CLOSING_TOGETHER : SHM_CLOSING_ALONE);
    if (!together) return false;
    comm_wait w = comm_wait_begin(c);
    for (int r = 0; r < s->node_ranks; r++) {
        for (unsigned polls = 0;; polls++) {
            int closing = atomic_load(&s->node_headers[r]->closing);
            if (closing == SHM_CLOSING_ALONE) return false;
            if (closing == SHM_CLOSING_TOGETHER) break;
            if (polls % 64 != 63) {
                pause_briefly();
                continue;
            }
            w.now = clock_now();
            double limit = c->timeout_seconds > 0 ? c->timeout_seconds : 1e300;
            if (w.now - w.started > limit) return false;
            sched_yield();
        }
    }
    return true;
}

static void shm_release(comm *c, shm_state *s, bool together) {
    if (!s) return;
    if (s->window != MPI_WIN_NULL && together) {
        if (s->locked) MPI_Win_unlock_all(s->window);
        MPI_Win_free(&s->window);
    }
    /* Otherwise the window stays mapped: a collective free could wait for a lost peer, and
     * the process is ending after a failure. */
    (void)c;
    free(s->member_rank);
    free(s->member_pid);
    free(s->copied);
    free(s->node_headers);
    free(s->headers);
    free(s->slots);
    free(s->parts);
    free(s->scratch);
    free(s->queue);
    free(s);
}

static void shm_close(comm *c) {
    shm_state *s = c->backend;
    if (!s) return;
    shm_release(c, s, leave_together(c, s));
    c->backend = NULL;
}

static void shm_describe(const comm *c, char *text, size_t size) {
    const shm_state *s = c->backend;
    if (!s) {
        snprintf(text, size, "one rank: nothing to reduce");
        return;
    }
    char nodes[64];
    if (s->nodes == 1)
        snprintf(nodes, sizeof nodes, "1 node x %d ranks", s->members);
    else if (s->owners * s->nodes == c->world_size)
        snprintf(nodes, sizeof nodes, "%d nodes x %d ranks, ring between nodes", s->nodes,
                 s->owners);
    else
        snprintf(nodes, sizeof nodes, "%d nodes of %d+ ranks, ring between nodes", s->nodes,
                 s->owners);
    snprintf(text, size, "%s, %zu KiB chunks", nodes, s->chunk_floats * sizeof(float) / 1024);
}

const comm_backend_ops comm_shm_ops = {
    .name = "shm",
    .open = shm_open,
    .check_environment = shm_check_environment,
    .reserve_requests = shm_reserve_requests,
    .broadcast = comm_mpi_broadcast,
    .allreduce = shm_allreduce,
    .allreduce_start = shm_allreduce_start,
    .allreduce_test = shm_allreduce_test,
    .allreduce_wait = shm_allreduce_wait,
    .describe = shm_describe,
    .close = shm_close,
};
