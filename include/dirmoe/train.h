/*
 * dirmoe: data, training step, evaluation, router schedules and checkpoints.
 */
#ifndef DIRMOE_TRAIN_H
#define DIRMOE_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "dirmoe/config.h"
#include "dirmoe/model.h"
#include "dirmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Data: byte-level text (vocabulary 256).                                  */

typedef struct dm_dataset {
    uint8_t *bytes;
    size_t n;               /* tokens (bytes) */
    char path[1024];        /* source file, for messages */
} dm_dataset;

typedef struct dm_data {
    dm_dataset train;
    dm_dataset val;         /* n = 0 when there is no validation split */
} dm_data;

/*
 * Reads `train_path` as bytes. With `val_path` NULL the last val_fraction of
 * the file becomes the validation split (val_fraction 0: none); otherwise
 * val_path is read whole and train_path is used whole. Each part must hold at
 * least seq_len + 1 tokens. Errors (missing, unreadable or empty file, data
 * shorter than one sequence) name the file and say what to do.
 */
dm_status dm_data_load(const char *train_path, const char *val_path, double val_fraction,
                       int seq_len, dm_data *out);
void dm_data_free(dm_data *data);

/* B sequences of T input tokens and their next-token targets (int32, (B,T)). */
typedef struct dm_batch {
    int b, t;
    int32_t *inputs;
    int32_t *targets;
} dm_batch;

dm_status dm_batch_alloc(dm_batch *batch, int b, int t);
void dm_batch_free(dm_batch *batch);

/* Streams of data sampling: counter word 2 = (stream << 8) | DM_RNG_DATA. */
enum { DM_DATA_STREAM_TRAIN = 0, DM_DATA_STREAM_VAL = 1 };

/*
 * Fills `batch` (batch->b x batch->t) from `ds`: sequence i starts at
 * ((w1 << 32) | w0) mod (n - t) with the Philox block (key seed, counter
 * {i, 0, (stream << 8) | DM_RNG_DATA, step}). Training uses stream TRAIN and
 * the training step; evaluation uses stream VAL with step = the evaluation
 * batch index, so every evaluation reads the same batches.
 */
dm_status dm_data_sample(const dm_dataset *ds, uint64_t seed, uint32_t stream, uint32_t step,
                         dm_batch *batch);

/* ------------------------------------------------------------------------ */
/* Router schedules (host, double precision).                               */

typedef struct dm_router_coefs {
    double progress;        /* p = step / steps in [0, 1] */
    double tau;             /* tau(p) */
    double alpha0;          /* alpha0(p) */
    double ramp;            /* exploration ramp r = clamp((p - explore) / explore, 0, 1), 1 when explore = 0 */
    double p0;              /* Bernoulli prior p0 solving E p0 + (1 - p0)^E = k, clamped */
    double log_p0, log_1mp0;
} dm_router_coefs;

/* Computes the DirMoE schedule values at `step`. */
void dm_router_coefs_at(const dm_config *cfg, int64_t step, dm_router_coefs *out);

/* Learning rate at `step` (0-based): linear warm-up over `warmup` steps to lr,
 * then cosine decay to lr * lr_min_frac at `steps`. */
double dm_lr_at(const dm_config *cfg, int64_t step);

/* ------------------------------------------------------------------------ */
/* Training state and steps.                                                */

typedef struct dm_train_state {
    int64_t step;           /* optimiser steps completed */
    uint64_t seed;          /* run seed (Philox key) */
    double mu[DM_MAX_LAYERS];         /* adaptive sparsity dual variable per block (0 for non-MoE) */
    uint64_t gamma_fallbacks[DM_MAX_LAYERS]; /* Gamma draws that exhausted 64 attempts, cumulative */
} dm_train_state;

/* Starts a run: step 0, seed from the model's configuration, mu = 0. */
void dm_train_state_init(const dm_model *model, dm_train_state *state);

/*
 * Forward and backward of one training batch at state->step without the
 * update: zeroes and fills the gradient buffer, fills `stats` (may be NULL).
 * Returns DM_ERR_NUMERIC, naming the step and the MoE layer whose router
 * output or regulariser was non-finite first, when the loss is NaN or Inf.
 */
dm_status dm_model_forward_backward(dm_model *model, const dm_train_state *state,
                                    const dm_batch *batch, const dm_run_opts *opts,
                                    dm_step_stats *stats);

/*
 * One training step: forward_backward, global gradient-norm clipping, AdamW
 * with the scheduled learning rate, then the adaptive mu update of every
 * DirMoE layer (mu += dual_step (Kbar - k) when sparsity = adaptive and the
 * exploration phase is over) and state->step += 1. On DM_ERR_NUMERIC the
 * parameters are left unchanged.
 */
dm_status dm_train_step(dm_model *model, dm_train_state *state, const dm_batch *batch,
                        const dm_run_opts *opts, dm_step_stats *stats);

/*
 * Evaluation forward with deterministic routing (dirmoe: the n = round(K)
 * experts with the largest s, Dirichlet-mean weights; topk/switch as in
 * training). stats->loss = stats->ce, the mean cross-entropy in nats;
 * per-layer counts and active_mean are those of the evaluation routing.
 */
dm_status dm_model_evaluate(dm_model *model, const dm_batch *batch, const dm_run_opts *opts,
                            dm_step_stats *stats);

/* ------------------------------------------------------------------------ */
/* Checkpoints (safetensors).                                               */

/*
 * Writes every parameter by name, the AdamW moments as "adam_m.NAME" and
 * "adam_v.NAME", and in __metadata__: "config" (dm_config JSON), "step",
 * "seed", "mu" (JSON array per block), "gamma_fallbacks", "format" =
 * "dirmoe-checkpoint-1". Written to PATH.tmp, flushed and renamed.
 */
dm_status dm_checkpoint_save(const char *path, dm_model *model, const dm_train_state *state);

/*
 * Loads a checkpoint into a model created with a matching configuration.
 * Every option that changes the computation must match (eval_every,
 * eval_batches, log_every and save_every may differ); the error names the
 * first differing option and both values. With state NULL only the weights
 * are loaded (evaluation, sampling). Truncated or corrupt files are
 * DM_ERR_FORMAT.
 */
dm_status dm_checkpoint_load(const char *path, dm_model *model, dm_train_state *state);

/* Reads only the configuration of a checkpoint, to create its model. */
dm_status dm_checkpoint_read_config(const char *path, dm_config *out);

#ifdef __cplusplus
}
#endif
#endif
