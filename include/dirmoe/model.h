/*
 * dirmoe: the backend-neutral language model. A GPT-2 style decoder
 * (pre-layer-norm blocks of causal attention and an FFN that is either an
 * MoE layer or a dense FFN, tied LM head) whose every computation runs as an
 * op of a loaded backend.
 *
 * Memory: the parameters live in ONE device buffer, the gradients in one, and
 * AdamW's m and v in one each, all with the same layout. The layout puts every
 * matrix (weight decay applies) first and every vector (biases, layer-norm
 * parameters: no decay) after them, so AdamW runs as two calls. A table of
 * named tensors (dm_param_info) gives each parameter's offset and shape, so
 * that checkpoints store them by name.
 *
 * Parameter names (l = block index):
 *   wte (V,C), wpe (T,C), lnf.w (C), lnf.b (C)
 *   h.l.ln1.w, h.l.ln1.b, h.l.attn.qkv.w (C,3C), h.l.attn.qkv.b (3C),
 *   h.l.attn.proj.w (C,C), h.l.attn.proj.b (C), h.l.ln2.w, h.l.ln2.b
 *   dense FFN:  h.l.ffn.fc.w (C,F), h.l.ffn.fc.b (F), h.l.ffn.proj.w (F,C), h.l.ffn.proj.b (C)
 *   MoE layer:  h.l.router.w (C,R), h.l.router.b (R) with R = 2E for dirmoe ([s | c]) and
 *               E otherwise; h.l.experts.fc.w (E,C,F), h.l.experts.fc.b (E,F),
 *               h.l.experts.proj.w (E,F,C), h.l.experts.proj.b (E,C)
 * Weight matrices are stored (in, out): y = x W + b.
 */
#ifndef DIRMOE_MODEL_H
#define DIRMOE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "dirmoe/backend.h"
#include "dirmoe/config.h"
#include "dirmoe/loader.h"
#include "dirmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Limits checked by dm_model_create (and dm_config_validate). */
#define DM_MAX_EXPERTS 256
#define DM_MAX_LAYERS 64

typedef struct dm_model dm_model;

/* One named parameter tensor inside the flat parameter buffer. */
typedef struct dm_param_info {
    char name[64];
    size_t offset;          /* in 4-byte elements from the start of the buffer */
    size_t numel;
    int ndim;               /* 1, 2 or 3 */
    int shape[3];
    int decay;              /* 1: AdamW weight decay applies (matrices) */
} dm_param_info;

/* Routing statistics of one MoE layer for one forward pass. */
typedef struct dm_layer_stats {
    int layer;              /* transformer block index */
    int n_expert;
    int n_tokens;
    double active_mean;     /* realised experts per token: selected assignments / tokens
                             * (before capacity dropping); in evaluation, of the eval routing */
    double kbar;            /* dirmoe: expected count Kbar = mean of sum pi + prod(1 - pi);
                             * topk/switch: k */
    double kl_b;            /* dirmoe: unweighted KL_B; 0 otherwise */
    double kl_d;            /* dirmoe: unweighted KL_D (token mean); 0 otherwise */
    double reg_loss;        /* dirmoe: weighted regulariser term added to the loss */
    double balance;         /* unweighted load-balancing loss (0 when not computed) */
    double zloss;           /* unweighted router z-loss (0 when not computed) */
    double aux_loss;        /* every router term this layer added to the loss */
    double mu;              /* dual variable of the sparsity term used in this step */
    double tau, alpha0, ramp; /* dirmoe schedule values used in this step */
    int64_t dropped;        /* assignments dropped by the capacity limit */
    uint32_t gamma_fallbacks; /* Gamma draws that exhausted 64 attempts in this step */
    int32_t counts[DM_MAX_EXPERTS]; /* kept assignments per expert */
    int32_t demand[DM_MAX_EXPERTS]; /* selected assignments per expert before dropping */

    /* Filled only when dm_run_opts.want_routing is set; owned by the model and
     * valid until its next forward. (N,E) row-major, N = n_tokens. */
    const int32_t *mask;    /* 0/1 selected experts (before dropping) */
    const float *weights;   /* combine weights w */
    const float *probs;     /* topk/switch: softmax(s); dirmoe: pi = sigmoid(s) */
} dm_layer_stats;

/* Statistics of one forward (and backward) pass. */
typedef struct dm_step_stats {
    int64_t step;           /* step the pass ran at (before the update) */
    double loss;            /* ce + aux: the optimised objective */
    double ce;              /* mean next-token cross-entropy, nats */
    double aux;             /* sum of the MoE layers' aux_loss */
    double grad_norm;       /* global gradient norm before clipping (training only) */
    double lr;              /* learning rate of the update (training only) */
    int n_moe;              /* entries in layers */
    const dm_layer_stats *layers; /* owned by the model, valid until its next forward */
} dm_step_stats;

/* Options of a training or evaluation pass; a NULL pointer means all zero. */
typedef struct dm_run_opts {
    int want_routing;       /* download mask, weights and probs into dm_layer_stats */
} dm_run_opts;

/* Creates the model on an open backend: allocates the parameter, gradient and
 * AdamW buffers plus activations for cfg->batch x cfg->seq_len tokens, and
 * initialises the parameters (see dm_model_init_params). Validates cfg. */
dm_status dm_model_create(dm_backend *be, const dm_config *cfg, dm_model **out);
void dm_model_free(dm_model *model);

/*
 * Initialises the parameters on the host and uploads them: N(0, 0.02) from
 * Philox (key = cfg seed, purpose DM_RNG_INIT, counter word 0 = the flat
 * offset of the element, layer 0, step 0; Box-Muller of words 0 and 1), output
 * projections (attn.proj.w, ffn/experts proj.w) scaled by 1/sqrt(2 n_layer),
 * biases 0, layer-norm gains 1, DirMoE selection bias logit(select_init),
 * concentration bias 0. Zeroes gradients and AdamW moments.
 */
dm_status dm_model_init_params(dm_model *model);

const dm_config *dm_model_config(const dm_model *model);
dm_backend *dm_model_backend(const dm_model *model);
size_t dm_model_n_params(const dm_model *model);  /* elements in the flat buffer */
int dm_model_param_count(const dm_model *model);  /* entries of the name table */
const dm_param_info *dm_model_param_at(const dm_model *model, int i);
/* Returns the entry named `name`, or NULL. */
const dm_param_info *dm_model_param_find(const dm_model *model, const char *name);

/* The flat device buffers (offset 0) of parameters, gradients and AdamW moments. */
dm_tensor dm_model_params_tensor(const dm_model *model);
dm_tensor dm_model_grads_tensor(const dm_model *model);
dm_tensor dm_model_adam_m_tensor(const dm_model *model);
dm_tensor dm_model_adam_v_tensor(const dm_model *model);

/* Copies all dm_model_n_params() parameters (or gradients) to / from host memory. */
dm_status dm_model_download_params(dm_model *model, float *host);
dm_status dm_model_upload_params(dm_model *model, const float *host);
dm_status dm_model_download_grads(dm_model *model, float *host);

/*
 * Fixed-noise mode, for comparing backends on identical inputs. For MoE block
 * `layer` (a dirmoe layer), the next training forwards use the given selection
 * uniforms u (N,E) and log Gamma draws log_g (N,E) instead of drawing them
 * from Philox; N must equal the batch's tokens. The arrays are copied. Passing
 * u = NULL clears the mode for that layer. In hard selection only the entries
 * of selected experts of log_g are read.
 * dm_model_get_noise() copies the u and log_g of the last training forward of
 * `layer` (drawn or fixed) to host arrays of n_tokens x E floats, so a test
 * draws the noise on one backend and feeds it to another.
 */
dm_status dm_model_set_fixed_noise(dm_model *model, int layer, const float *u,
                                   const float *log_g, int n_tokens);
dm_status dm_model_get_noise(dm_model *model, int layer, float *u, float *log_g, int n_tokens);

/*
 * Logits for sampling: runs the model on one sequence tokens[0..t-1]
 * (1 <= t <= seq_len) with deterministic (evaluation) routing and writes the
 * logits of every position to out (t, V) on the host.
 */
dm_status dm_model_logits(dm_model *model, const int32_t *tokens, int t, float *out);

/*
 * Model FLOPs per token of a training step by the usual MFU convention:
 * 6 x active parameters (embedding lookups excluded, LM head included, each
 * MoE layer counting `active[i]` experts for its i-th MoE layer, or the
 * target k when active is NULL) plus attention scores over the full T x T:
 * 6 x n_layer x 2 x d_model x seq_len.
 */
double dm_flops_per_token(const dm_config *cfg, const double *active);

#ifdef __cplusplus
}
#endif
#endif
