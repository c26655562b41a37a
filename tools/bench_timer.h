/*
 * Per-family op timing for `dirmoe bench`: an op table that forwards every
 * call to a backend's own table and adds its wall time to one family
 * (attention, experts, router, loss, optimizer, other). GEMM, bias and layer
 * norm calls are assigned by the parameter they read or write, found by its
 * offset in the model's parameter and gradient buffers.
 */
#ifndef DM_BENCH_TIMER_H
#define DM_BENCH_TIMER_H

#include "dirmoe/loader.h"
#include "dirmoe/model.h"

enum dm_bench_family {
    DM_FAM_ATTENTION = 0, /* ln1, qkv and output projections, attention */
    DM_FAM_EXPERTS,       /* ln2, expert (or dense) FFNs, dispatch, gather, combine */
    DM_FAM_ROUTER,        /* router projection, routing, regularisers, balance loss */
    DM_FAM_LOSS,          /* embeddings, final layer norm, LM head, cross-entropy */
    DM_FAM_OPTIMIZER,     /* gradient norm, clipping, AdamW */
    DM_FAM_OTHER,         /* residual adds and copies, fills, transfers */
    DM_FAM_COUNT
};

/* Lower-case family names, indexed by enum dm_bench_family. */
extern const char *const dm_bench_family_names[DM_FAM_COUNT];

typedef struct dm_bench_times {
    double seconds[DM_FAM_COUNT];
    long calls[DM_FAM_COUNT];
} dm_bench_times;

/*
 * Replaces be->ops with the timing table. With sync_each set, every op is
 * followed by the backend's synchronize(), so asynchronous backends report
 * the time of each op instead of the time to queue it. One backend per process.
 */
void dm_bench_timer_install(dm_backend *be, int sync_each);
/* Gives the timer the model's parameter table, so parameter ops find their family. */
void dm_bench_timer_set_model(const dm_model *model);
/* Restores the backend's own op table. */
void dm_bench_timer_remove(dm_backend *be);

void dm_bench_timer_reset(void);
void dm_bench_timer_read(dm_bench_times *out);

/* Monotonic wall-clock time in seconds. */
double dm_bench_now(void);

#endif
