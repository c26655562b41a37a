/*
 * Helpers for the model tests: a tiny configuration, the reference backend,
 * synthetic text written to a temporary file, and batch sampling.
 */
#ifndef DM_TEST_CORE_UTIL_H
#define DM_TEST_CORE_UTIL_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dirmoe/config.h"
#include "dirmoe/loader.h"
#include "dirmoe/model.h"
#include "dirmoe/status.h"
#include "dirmoe/train.h"

/* A model small enough that a reference-backend step takes milliseconds. */
static inline void tiny_config(dm_config *cfg, dm_router_kind router)
{
    dm_config_defaults(cfg);
    cfg->router = router;
    cfg->n_layer = 2;
    cfg->d_model = 32;
    cfg->n_head = 2;
    cfg->d_ff = 64;
    cfg->seq_len = 16;
    cfg->batch = 4;
    cfg->n_expert = 4;
    cfg->k = router == DM_ROUTER_SWITCH ? 1 : 2;
    cfg->steps = 30;
    cfg->warmup = 3;
    cfg->lr = 1e-2;
    cfg->seed = 42;
}

static inline dm_backend *open_reference(void)
{
    dm_backend *be = NULL;
    dm_status st = dm_backend_open("reference", &be);
    ck_assert_msg(st == DM_OK, "cannot open the reference backend: %s", dm_last_error());
    return be;
}

/* Writes `n` bytes of a repeated sentence into a new temporary file; returns its path (free it). */
static inline char *write_text_file(size_t n)
{
    static const char sentence[] = "the quick brown fox jumps over the lazy dog. ";
    char *path = strdup("/tmp/dirmoe-test-XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    FILE *f = fdopen(fd, "wb");
    ck_assert_ptr_nonnull(f);
    for (size_t i = 0; i < n; i++)
        fputc(sentence[i % (sizeof sentence - 1)], f);
    ck_assert_int_eq(fclose(f), 0);
    return path;
}

/* Loads synthetic data with a 10% validation split. */
static inline void load_synthetic(dm_data *data, int seq_len)
{
    char *path = write_text_file(4000);
    dm_status st = dm_data_load(path, NULL, 0.1, seq_len, data);
    ck_assert_msg(st == DM_OK, "dm_data_load: %s", dm_last_error());
    unlink(path);
    free(path);
}

static inline dm_model *create_model(dm_backend *be, const dm_config *cfg)
{
    dm_model *m = NULL;
    dm_status st = dm_model_create(be, cfg, &m);
    ck_assert_msg(st == DM_OK, "dm_model_create: %s", dm_last_error());
    return m;
}

/* Runs steps from state->step up to `until`, recording each loss in losses[step]. */
static inline void train_until(dm_model *m, dm_train_state *state, const dm_data *data, int until,
                               double *losses, dm_step_stats *last)
{
    const dm_config *cfg = dm_model_config(m);
    dm_batch batch;
    ck_assert_int_eq(dm_batch_alloc(&batch, cfg->batch, cfg->seq_len), DM_OK);
    while (state->step < until) {
        dm_step_stats stats;
        int64_t step = state->step;
        ck_assert_int_eq(dm_data_sample(&data->train, cfg->seed, DM_DATA_STREAM_TRAIN, (uint32_t)step,
                                        &batch), DM_OK);
        dm_status st = dm_train_step(m, state, &batch, NULL, &stats);
        ck_assert_msg(st == DM_OK, "step %lld: %s", (long long)step, dm_last_error());
        if (losses)
            losses[step] = stats.loss;
        if (last)
            *last = stats;
    }
    dm_batch_free(&batch);
}

#endif
