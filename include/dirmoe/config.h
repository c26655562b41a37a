/*
 * dirmoe: the run configuration. Every hyper-parameter of the model, the
 * routers and the training loop lives in one dm_config, so that a checkpoint
 * and the first metrics row can record the whole run.
 *
 * Each field has an option name (the CLI's --option-name, with dashes) and a
 * JSON key (the field name, with underscores). dm_config_set() parses any
 * option from text by its option name, so the CLI and config files share one
 * parser. dm_config_option_at() lists the options with their help text.
 */
#ifndef DIRMOE_CONFIG_H
#define DIRMOE_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "dirmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

struct cJSON;

typedef enum dm_router_kind {
    DM_ROUTER_DIRMOE = 0, /* Dirichlet-routed MoE: stochastic selection + Dirichlet weights */
    DM_ROUTER_TOPK = 1,   /* softmax, keep the top k, renormalise */
    DM_ROUTER_SWITCH = 2, /* softmax, keep the top 1, weight = its probability */
    DM_ROUTER_DENSE = 3   /* no MoE: every FFN is one dense FFN */
} dm_router_kind;

typedef enum dm_sparsity_mode {
    DM_SPARSITY_FIXED = 0,    /* mu = 0: only lambda_s (Kbar - k)^2 */
    DM_SPARSITY_ADAPTIVE = 1  /* mu += dual_step (Kbar - k) after each step */
} dm_sparsity_mode;

typedef enum dm_schedule_shape {
    DM_SCHEDULE_LINEAR = 0,
    DM_SCHEDULE_COSINE = 1,
    DM_SCHEDULE_EXP = 2       /* geometric interpolation; both ends must be > 0 */
} dm_schedule_shape;

/*
 * The run configuration. dm_config_defaults() fills every field; the comment
 * gives the option name and the default.
 *
 * DirMoE defaults and the measurements behind them (a PyTorch prototype:
 * 2 blocks, d_model 128, 8 experts, k = 2, seq-len 128, batch 16, KJV bytes,
 * one seed per setting, seed-to-seed spread about 0.015 bits per byte):
 *  - explore = 0.2: with the sparsity term on from step 0 the selection stayed
 *    near uniform and validation reached 2.68 bits per byte against 2.27 for
 *    top-2; with an exploration phase the router became confident first.
 *    Values from 0.2 to 0.35 made little difference.
 *  - kl_b = batch: the per-token KL pulled every token back to pi = k/E
 *    (2.61 bits per byte) where the batch form kept confident routing (2.47).
 *  - tau = 1 constant: did slightly better than annealing 1 -> 0.2 (2.43
 *    against 2.47), within about two seed spreads.
 *  - alpha0 = 1 constant: sampled weights, mean weights and a prior
 *    concentration rising to 100 all landed within 0.02 of each other.
 *  - sparsity = adaptive with dual_step 0.01 and lambda_s 0.1: chosen, not
 *    tuned. The prototype's realised count drifted below k during exploration,
 *    and the signed dual update corrects a drift in either direction.
 *  - beta_b = 0.01, beta_d = 0.001: small next to the cross-entropy (a few
 *    nats), so the task loss decides routing; chosen, not tuned.
 */
typedef struct dm_config {
    /* --- model --------------------------------------------------------- */
    int vocab;              /* --vocab: 256 (byte-level); fixed by the data format */
    int n_layer;            /* --n-layer: transformer blocks, 4 */
    int d_model;            /* --d-model: 256 */
    int n_head;             /* --n-head: 4; must divide d_model */
    int d_ff;               /* --d-ff: hidden width of each expert FFN and of dense FFNs, 512 */
    int seq_len;            /* --seq-len: tokens per sequence T, 256 */

    /* --- mixture of experts ------------------------------------------- */
    dm_router_kind router;  /* --router: dirmoe|topk|switch|dense, dirmoe */
    int n_expert;           /* --n-expert: experts per MoE layer E, 8 */
    double k;               /* --k: target active experts per token, 2; may be fractional for
                             * dirmoe, an integer for topk, ignored by switch (always 1) and dense */
    int k_max;              /* --k-max: at most k_max experts per token (dirmoe), 0 = n_expert */
    int moe_every;          /* --moe-every: every N-th block's FFN is an MoE layer
                             * (blocks N-1, 2N-1, ...), 1 = all */
    double aux_loss;        /* --aux-loss: Switch load-balancing coefficient, 0.01 (topk, switch;
                             * dirmoe applies it to pi normalised per token when > 0 and
                             * dirmoe_balance is set) */
    int dirmoe_balance;     /* --dirmoe-balance: 1 = add the load-balancing loss to dirmoe, 0 */
    double z_loss;          /* --z-loss: router z-loss coefficient, 0 */
    double capacity_factor; /* --capacity-factor: C = ceil(cf N k / E) slots per expert, 0 = dropless */

    /* --- DirMoE ----------------------------------------------------- */
    double beta_b;          /* --beta-b: weight of the Bernoulli KL (KL_B), 0.01 */
    double beta_d;          /* --beta-d: weight of the Dirichlet KL (KL_D), 0.001 */
    double lambda_s;        /* --lambda-s: weight of (Kbar - k)^2, 0.1 */
    dm_sparsity_mode sparsity; /* --sparsity: fixed|adaptive, adaptive */
    double dual_step;       /* --dual-step: eta of mu += eta (Kbar - k), 0.01 */
    double tau_start;       /* --tau START:END: Gumbel-Sigmoid temperature, 1:1 */
    double tau_end;
    double alpha0_start;    /* --alpha0 START:END: Dirichlet prior concentration, 1:1 */
    double alpha0_end;
    dm_schedule_shape schedule; /* --schedule: linear|cosine|exp shape of tau and alpha0, linear */
    double explore;         /* --explore: exploration fraction of training, 0.2; <= 0.5 */
    int kl_b;               /* --kl-b: batch|token (enum dm_kl_b_mode), batch */
    int selection;          /* --selection: hard|soft (enum dm_selection), hard */
    double alpha_min;       /* --alpha-min: 1e-2 */
    double alpha_max;       /* --alpha-max: 1e4 */
    double select_init;     /* --select-init: initial pi, sets the selection bias to
                             * logit(select_init), 0.5 */

    /* --- training ----------------------------------------------------- */
    int batch;              /* --batch: sequences per step B, 16 */
    int steps;              /* --steps: optimiser steps, 1000 */
    double lr;              /* --lr: peak learning rate, 1e-3 */
    double lr_min_frac;     /* --lr-min-frac: cosine decay ends at lr * lr_min_frac, 0.1 */
    int warmup;             /* --warmup: linear warm-up steps, 100 */
    double weight_decay;    /* --weight-decay: AdamW decoupled decay on matrices, 0.1 */
    double beta1;           /* --beta1: AdamW, 0.9 */
    double beta2;           /* --beta2: AdamW, 0.95 */
    double adam_eps;        /* --adam-eps: AdamW, 1e-8 */
    double clip;            /* --clip: global gradient-norm clip, 1.0; 0 = off */
    uint64_t seed;          /* --seed: Philox key for init, data and router noise, 1337 */

    /* --- evaluation and output --------------------------------------- */
    double val_fraction;    /* --val-fraction: share of the data file held out at its end, 0.1 */
    int eval_every;         /* --eval-every: steps between evaluations, 100; 0 = only at the end */
    int eval_batches;       /* --eval-batches: batches per evaluation, 8 */
    int log_every;          /* --log-every: steps between metrics rows, 10 */
    int save_every;         /* --save-every: steps between checkpoints, 0 = only at the end */
} dm_config;

/* Fills every field with its default (see the field comments). */
void dm_config_defaults(dm_config *cfg);

/* Checks ranges and combinations. Returns DM_ERR_INVALID with a message that
 * names the option as --option-name, its value, and the accepted range. */
dm_status dm_config_validate(const dm_config *cfg);

/* Effective target count: 1 for switch and dense, else cfg->k. */
double dm_config_target_k(const dm_config *cfg);
/* Effective k_max: cfg->k_max, or n_expert when it is 0. */
int dm_config_k_max(const dm_config *cfg);
/* Nonzero when block `layer` has an MoE FFN (router != dense and moe_every rule). */
int dm_config_is_moe_layer(const dm_config *cfg, int layer);
/* Number of MoE layers. */
int dm_config_n_moe_layers(const dm_config *cfg);

/* Names of enum values, for messages and JSON: "dirmoe", "adaptive", "cosine", "batch", "hard". */
const char *dm_router_name(dm_router_kind r);

/* Sets the option `name` (with dashes, without "--"; underscores also accepted)
 * from text. Range options (tau, alpha0) take "START:END" or one value for both.
 * Returns DM_ERR_NOT_FOUND for an unknown name, DM_ERR_INVALID for a value that
 * does not parse; the message names the option. Ranges are checked by validate. */
dm_status dm_config_set(dm_config *cfg, const char *name, const char *value);

/* Formats the option's current value as dm_config_set accepts it. */
dm_status dm_config_get(const dm_config *cfg, const char *name, char *buf, size_t len);

/* One option as listed by dm_config_option_at. */
typedef struct dm_config_option {
    const char *name;       /* option name with dashes, for example "n-layer" */
    const char *metavar;    /* "N", "X", "START:END", or the choices "a|b|c" */
    const char *help;       /* what it sets, with unit and default */
    int is_choice;          /* nonzero: metavar lists the accepted words */
} dm_config_option;

/* Number of options, and option i (0 <= i < count). */
int dm_config_option_count(void);
const dm_config_option *dm_config_option_at(int i);

/* JSON object with every field (JSON key = field name). Caller frees with cJSON_Delete.
 * The seed is written as a decimal string so that 64 bits survive. Returns NULL on OOM. */
struct cJSON *dm_config_to_json(const dm_config *cfg);
/* Compact JSON text of dm_config_to_json; caller frees with free(). NULL on OOM. */
char *dm_config_to_json_string(const dm_config *cfg);

/* Reads a JSON object written by dm_config_to_json: starts from the defaults,
 * rejects unknown keys and wrong types with DM_ERR_FORMAT naming the key. */
dm_status dm_config_from_json(const struct cJSON *json, dm_config *out);
dm_status dm_config_from_json_string(const char *text, dm_config *out);

/* Finds the first option whose value differs between a and b, skipping the
 * options that do not change the computation (eval_every, eval_batches,
 * log_every, save_every) when `all` is zero. Returns 1 and writes the option
 * name, and both values as text, into the buffers (each `len` bytes); 0 when equal. */
int dm_config_diff(const dm_config *a, const dm_config *b, int all, char *name, char *va,
                   char *vb, size_t len);

#ifdef __cplusplus
}
#endif
#endif
