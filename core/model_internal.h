/*
 * Internal layout of dm_model, shared by the model, MoE and training files.
 * Offsets are counted in 4-byte elements: parameter offsets index the flat
 * parameter buffer (and, identically, the gradient and AdamW buffers);
 * activation offsets index the activation buffer.
 */
#ifndef DM_MODEL_INTERNAL_H
#define DM_MODEL_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "dirmoe/backend.h"
#include "dirmoe/config.h"
#include "dirmoe/loader.h"
#include "dirmoe/model.h"
#include "dirmoe/train.h"

/* How a parameter tensor is initialised. */
typedef enum dm_init_kind {
    DM_INIT_NORMAL = 0,     /* N(0, 0.02) */
    DM_INIT_NORMAL_PROJ,    /* N(0, 0.02) / sqrt(2 n_layer): output projections */
    DM_INIT_ZERO,
    DM_INIT_ONE,
    DM_INIT_ROUTER_BIAS     /* dirmoe: [logit(select_init) x E | 0 x E]; others 0 */
} dm_init_kind;

/* Forward pass kinds. */
typedef enum dm_pass_mode {
    DM_PASS_TRAIN = 0,      /* stochastic routing, saves everything for backward */
    DM_PASS_EVAL = 1,       /* deterministic routing, loss only */
    DM_PASS_LOGITS = 2      /* deterministic routing, no targets, logits downloaded */
} dm_pass_mode;

/* One MoE layer: parameters, activations and the routing of the last forward. */
typedef struct dm_moe_layer {
    int block;              /* transformer block index */
    int n_expert;
    int width;              /* router outputs per token R: 2E for dirmoe, E otherwise */

    /* parameters */
    size_t router_w, router_b, fc_w, fc_b, proj_w, proj_b;

    /* activations (offsets into the activation buffer) */
    size_t logits;          /* (N,R) */
    size_t probs;           /* (N,E) topk: softmax(s) */
    size_t u, log_g, zt, alpha; /* (N,E) dirmoe */
    size_t mask, w, slot;   /* (N,E) int32, float, int32 */
    size_t token_of_slot;   /* (N*E) int32 */
    size_t dispatch_ints;   /* counts (E) | demand (E) | offsets (E+1), int32 */
    size_t reg_stats;       /* DM_REG_NSTATS floats */
    size_t bal_stats;       /* DM_BAL_NSTATS floats */
    size_t fallbacks;       /* 1 uint32 */
    size_t y;               /* (N,C) combined output */

    /* grouped token buffer of this layer: xg (S,C) | hpre (S,F) | h (S,F) | yg (S,C) */
    dm_buffer *group;
    size_t group_slots;     /* capacity S of `group` */

    /* routing of the last forward */
    int32_t *host_ints;     /* 3E + 1: counts, demand, offsets */
    int n_slots;            /* offsets[E] */
    int n_tokens;
    int did_balance;        /* balance_forward ran (its backward applies) */
    dm_dirmoe_params dp;
    dm_dirmoe_reg_params rp;
    dm_topk_params tp;
    dm_balance_params bp;

    /* fixed-noise mode: host copies of u and log_g (n_fixed x E), NULL when off */
    float *fixed_u, *fixed_log_g;
    int n_fixed;

    /* host copies for dm_run_opts.want_routing */
    int32_t *host_mask;
    float *host_w, *host_probs, *host_logits;
} dm_moe_layer;

/* One transformer block. */
typedef struct dm_block {
    /* parameters */
    size_t ln1_w, ln1_b, qkv_w, qkv_b, attn_proj_w, attn_proj_b, ln2_w, ln2_b;
    size_t fc_w, fc_b, fc_proj_w, fc_proj_b;    /* dense FFN only */
    int moe;                /* index into dm_model.moes, -1 for a dense FFN */

    /* activations */
    size_t ln1, ln1_mean, ln1_rstd;
    size_t qkv, att, lse;
    size_t mid;             /* residual after attention */
    size_t ln2, ln2_mean, ln2_rstd;
    size_t fc_pre, fc_act;  /* dense FFN (N,F) */
} dm_block;

struct dm_model {
    dm_backend *be;
    dm_config cfg;
    int C, F, V, T, NH, L, E;
    int max_tokens;         /* batch x seq_len: activation capacity in tokens */

    /* parameters */
    size_t n_params;
    size_t n_decay;         /* the first n_decay elements are matrices (weight decay) */
    dm_param_info *info;
    dm_init_kind *init;
    int n_info, cap_info;
    size_t wte, wpe, lnf_w, lnf_b;

    dm_buffer *params, *grads, *adam_m, *adam_v;

    /* activations */
    dm_buffer *acts;
    size_t acts_n;
    size_t tokens, targets; /* int32 (N) */
    size_t *resid;          /* L + 1 entries: resid[l] is block l's input (N,C) */
    size_t lnf, lnf_mean, lnf_rstd;
    size_t logits;          /* (N,V); after backward, the logits gradient */
    size_t probs;           /* (N,V) */
    size_t losses;          /* (N) */
    size_t scalar;          /* 1 float: sum of squares */

    /* backward scratch (N-sized) */
    size_t dres, dln, dqkv, datt, dfc, dfc_pre, drouter, dw;

    /* grouped backward scratch: dyg (S,C) | dh (S,F) | dhpre (S,F) | dxg (S,C) */
    dm_buffer *gscratch;
    size_t gscratch_slots;

    dm_block *blocks;
    dm_moe_layer *moes;
    int n_moe;
    dm_layer_stats *stats;  /* n_moe entries */

    float *host_losses;     /* max_tokens */

    /* shape of the last forward */
    int last_b, last_t, last_mode;
    int64_t last_step;
};

static inline dm_tensor dm_t(dm_buffer *buf, size_t off)
{
    dm_tensor t = {buf, off};
    return t;
}

/* Parameter, gradient and activation views. */
#define PARAM(m, off) dm_t((m)->params, (off))
#define GRAD(m, off) dm_t((m)->grads, (off))
#define ACT(m, off) dm_t((m)->acts, (off))

/* moe.c */
dm_status dm_moe_forward(dm_model *m, dm_moe_layer *ml, int n, int mode, int64_t step, double mu,
                         const dm_run_opts *opts, dm_layer_stats *stats);
dm_status dm_moe_backward(dm_model *m, dm_moe_layer *ml, int n);
dm_status dm_moe_alloc_group(dm_model *m, dm_moe_layer *ml, size_t slots);

/* model_forward.c / model_backward.c */
dm_status dm_model_forward_pass(dm_model *m, const int32_t *inputs, const int32_t *targets, int b,
                                int t, int mode, int64_t step, const double *mu,
                                const dm_run_opts *opts, dm_step_stats *stats);
dm_status dm_model_backward_pass(dm_model *m);

/* router.c: parameter blocks of the routing ops at `step` */
void dm_router_fill_dirmoe(const dm_config *cfg, int block, int n, int64_t step,
                           dm_dirmoe_params *dp);
void dm_router_fill_reg(const dm_config *cfg, int n, int64_t step, double mu,
                        dm_dirmoe_reg_params *rp);
int dm_router_capacity(const dm_config *cfg, int n);

#endif
