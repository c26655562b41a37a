/*
 * dirmoe plugin ABI: the descriptor a backend module exports and the op table
 * the core calls. This header is the single statement of every op's contract.
 *
 * Conventions that apply to every op unless its comment states otherwise:
 *  - All tensors are row-major and dense. Shapes are written (rows, cols) or
 *    (B,T,C) with the last index fastest. N is the number of tokens (B*T),
 *    C = d_model, E = experts, V = vocabulary, NH = heads, F = d_ff.
 *  - Every element is 4 bytes: float32, int32 or uint32 as the op states.
 *    A dm_tensor is a view: a backend buffer plus an offset counted in
 *    4-byte elements, so parameters and gradients can live in one buffer.
 *  - Forward ops overwrite their outputs. Backward ops ACCUMULATE (+=) into
 *    every gradient they produce, so the core zeroes gradient buffers once
 *    per step. Ops marked "writes" overwrite instead.
 *  - Inputs are never modified. Outputs must not alias inputs unless stated.
 *  - The caller guarantees sizes, offsets and index values (token ids in
 *    [0, V), slots, targets) are in range; compute ops need not check them.
 *  - Ops may run asynchronously; download() and synchronize() are the only
 *    points where the host waits for results.
 *  - An op returns DM_OK, or a status with a message available from
 *    dm_backend_desc.last_error(ctx). No op exits or aborts.
 */
#ifndef DIRMOE_BACKEND_H
#define DIRMOE_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "dirmoe/status.h"
#include "dirmoe/log.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever the descriptor, the op table or an op's contract changes. */
#define DM_BACKEND_ABI_VERSION 1

/* Name of the symbol every plugin exports: const dm_backend_desc *dm_backend_entry(void). */
#define DM_BACKEND_ENTRY_SYMBOL "dm_backend_entry"

/* Opaque device buffer owned by the backend that allocated it. */
typedef struct dm_buffer dm_buffer;

/* A view into a buffer: element offset `off` counted in 4-byte elements. */
typedef struct dm_tensor {
    dm_buffer *buf;
    size_t off;
} dm_tensor;

/* ------------------------------------------------------------------------ */
/* Parameter blocks for the router and optimizer ops.                       */

enum dm_selection { DM_SELECTION_HARD = 0, DM_SELECTION_SOFT = 1 };
enum dm_kl_b_mode { DM_KL_B_BATCH = 0, DM_KL_B_TOKEN = 1 };

/* Randomness of a router op: Philox key and counter fields (see dirmoe/philox.h). */
typedef struct dm_rng_site {
    uint64_t seed;        /* run seed: the Philox key */
    uint32_t layer;       /* transformer block index */
    uint32_t step;        /* training step, counter word 3 */
    uint32_t token_base;  /* global index of row 0 of this call's tokens */
} dm_rng_site;

/* DirMoE routing. logits rows are [s_0..s_{E-1}, c_0..c_{E-1}]: (N, 2E). */
typedef struct dm_dirmoe_params {
    int32_t n_tokens;     /* N */
    int32_t n_expert;     /* E */
    int32_t k_max;        /* at most k_max experts per token, 1 <= k_max <= E */
    int32_t selection;    /* enum dm_selection */
    int32_t fixed_noise;  /* nonzero: u and log_g are inputs instead of drawn */
    float tau;            /* Gumbel-Sigmoid temperature, > 0 */
    float alpha_min;      /* alpha = min(softplus(c) + alpha_min, alpha_max) */
    float alpha_max;
    dm_rng_site rng;
} dm_dirmoe_params;

/* DirMoE regularisers (KL_B, KL_D, sparsity) of one MoE layer; host scalars in double. */
typedef struct dm_dirmoe_reg_params {
    int32_t n_tokens;
    int32_t n_expert;
    int32_t kl_b_mode;    /* enum dm_kl_b_mode */
    float alpha_min;
    float alpha_max;
    double log_p0;        /* log p0 of the Bernoulli prior, p0 clamped to [1e-6, 1 - 1e-6] */
    double log_1mp0;      /* log(1 - p0) */
    double alpha0;        /* symmetric Dirichlet prior concentration */
    double k_target;      /* k */
    double coef_kl_b;     /* beta_B * r (r: exploration ramp) */
    double coef_kl_d;     /* beta_D */
    double coef_sq;       /* lambda_s * r: multiplies (Kbar - k)^2 */
    double coef_lin;      /* mu * r: multiplies (Kbar - k) */
} dm_dirmoe_reg_params;

/* Indices into the stats output of dirmoe_reg_forward (float, DM_REG_NSTATS elements). */
enum dm_reg_stat {
    DM_REG_KL_B = 0,      /* KL_B (unweighted) */
    DM_REG_KL_D = 1,      /* KL_D averaged over tokens (unweighted) */
    DM_REG_KBAR = 2,      /* batch mean of K = sum pi + prod(1 - pi) */
    DM_REG_LOSS = 3,      /* coef_kl_b KL_B + coef_kl_d KL_D + coef_sq (Kbar-k)^2 + coef_lin (Kbar-k) */
    DM_REG_NSTATS = 4
};

/* Top-k (GShard/Mixtral, renormalize = 1) and Switch (k = 1, renormalize = 0) routing. */
typedef struct dm_topk_params {
    int32_t n_tokens;
    int32_t n_expert;
    int32_t k;
    int32_t renormalize;  /* 1: w = p / sum of kept p; 0: w = p of the kept experts */
} dm_topk_params;

/* Switch load-balancing loss E * sum_e f_e P_e and router z-loss mean_t (logsumexp s_t)^2. */
typedef struct dm_balance_params {
    int32_t n_tokens;
    int32_t n_expert;
    int32_t k;            /* assignments per token used in f_e = count_e / (N k) */
    int32_t logits_stride;/* row stride of the logits tensor (E for topk, 2E for DirMoE's s) */
    double coef_balance;  /* multiplies the load-balancing loss in backward */
    double coef_z;        /* multiplies the z-loss in backward */
} dm_balance_params;

enum dm_balance_stat { DM_BAL_LOSS = 0, DM_BAL_ZLOSS = 1, DM_BAL_NSTATS = 2 };

typedef struct dm_adamw_params {
    float lr;
    float beta1;
    float beta2;
    float eps;
    float weight_decay;   /* decoupled: p -= lr * weight_decay * p */
    int32_t t;            /* 1-based step for bias correction */
} dm_adamw_params;

/* ------------------------------------------------------------------------ */
/* The op table. Members marked OPTIONAL may be NULL; the core then uses the */
/* unfused ops. Every other member is required.                             */

typedef struct dm_backend_ops {
    /* --- tensor / memory ops ------------------------------------------- */

    /* Allocates a buffer of n 4-byte elements (contents undefined). */
    dm_status (*alloc)(void *ctx, size_t n, dm_buffer **out);
    void (*free)(void *ctx, dm_buffer *buf);
    /* Copies n elements from host memory into dst. */
    dm_status (*upload)(void *ctx, dm_tensor dst, const void *src, size_t n);
    /* Copies n elements of src to host memory; waits for pending work on src. */
    dm_status (*download)(void *ctx, void *dst, dm_tensor src, size_t n);
    /* Writes n copies of the 32-bit pattern `bits` (use 0 for zero, or a float's bits). */
    dm_status (*fill)(void *ctx, dm_tensor dst, uint32_t bits, size_t n);
    /* Copies n elements; dst and src may be in the same buffer but must not overlap. */
    dm_status (*copy)(void *ctx, dm_tensor dst, dm_tensor src, size_t n);
    /* Waits until every queued op has finished. */
    dm_status (*synchronize)(void *ctx);

    /* --- dense linear algebra ------------------------------------------ */

    /* C (M,N) = alpha * op(A) op(B) + beta * C, row-major; op(A) is (M,K), op(B) is (K,N).
     * trans_a: A is stored (K,M) with leading dimension lda; else (M,K). Same for B.
     * beta = 0 ignores the old contents of C (NaN there does not propagate). */
    dm_status (*gemm)(void *ctx, int trans_a, int trans_b, int m, int n, int k,
                      float alpha, dm_tensor a, int lda, dm_tensor b, int ldb,
                      float beta, dm_tensor c, int ldc);
    /* y[i] += a * x[i] for n elements (float). */
    dm_status (*axpy)(void *ctx, size_t n, float a, dm_tensor x, dm_tensor y);
    /* x[i] *= a for n elements. */
    dm_status (*scale)(void *ctx, size_t n, float a, dm_tensor x);
    /* Writes out[0] = sum_i x[i]^2 (float output, accumulated in double or pairwise). */
    dm_status (*sum_squares)(void *ctx, size_t n, dm_tensor x, dm_tensor out);

    /* --- expert ops: transformer layers and expert FFNs ----------------- */

    /* out (B,T,C) = wte[tokens[b,t]] + wpe[t]. tokens: int32 (B,T), values in [0, V). */
    dm_status (*encoder_forward)(void *ctx, int b, int t, int c, dm_tensor out,
                                 dm_tensor tokens, dm_tensor wte, dm_tensor wpe);
    /* dwte[tokens[b,t]] += dout[b,t]; dwpe[t] += sum_b dout[b,t] (scatter-add). */
    dm_status (*encoder_backward)(void *ctx, int b, int t, int c, dm_tensor dwte, dm_tensor dwpe,
                                  dm_tensor dout, dm_tensor tokens);
    /* out (N,C) = (inp - mean) * rstd * weight + bias, eps 1e-5; writes mean (N) and rstd (N). */
    dm_status (*layernorm_forward)(void *ctx, int n, int c, dm_tensor out, dm_tensor mean,
                                   dm_tensor rstd, dm_tensor inp, dm_tensor weight, dm_tensor bias);
    /* dinp += , dweight += , dbias += from dout, with the saved mean and rstd. */
    dm_status (*layernorm_backward)(void *ctx, int n, int c, dm_tensor dinp, dm_tensor dweight,
                                    dm_tensor dbias, dm_tensor dout, dm_tensor inp,
                                    dm_tensor weight, dm_tensor mean, dm_tensor rstd);
    /* Causal multi-head self-attention. qkv (B,T,3C) contains [q | k | v], head h uses
     * columns h*C/NH .. (h+1)*C/NH - 1 of each part. Writes out (B,T,C) and the
     * softmax log-sum-exp lse (B,NH,T) of the scaled scores (scale 1/sqrt(C/NH)).
     * The (T,T) score matrix is not an output, so a backend may tile it. */
    dm_status (*attention_forward)(void *ctx, int b, int t, int c, int nh, dm_tensor out,
                                   dm_tensor lse, dm_tensor qkv);
    /* dqkv (B,T,3C) += gradient from dout, recomputing scores from qkv and lse. */
    dm_status (*attention_backward)(void *ctx, int b, int t, int c, int nh, dm_tensor dqkv,
                                    dm_tensor dout, dm_tensor qkv, dm_tensor out, dm_tensor lse);
    /* out = gelu(inp), tanh approximation, n elements. */
    dm_status (*gelu_forward)(void *ctx, size_t n, dm_tensor out, dm_tensor inp);
    /* dinp += gelu'(inp) * dout. */
    dm_status (*gelu_backward)(void *ctx, size_t n, dm_tensor dinp, dm_tensor inp, dm_tensor dout);
    /* out (M,N) += bias (N) broadcast over rows. */
    dm_status (*bias_forward)(void *ctx, int m, int n, dm_tensor out, dm_tensor bias);
    /* dbias (N) += column sums of dout (M,N). */
    dm_status (*bias_backward)(void *ctx, int m, int n, dm_tensor dbias, dm_tensor dout);
    /* OPTIONAL fused: out = gelu(pre) with pre (M,N) = pre + bias, both written (pre in place). */
    dm_status (*bias_gelu_forward)(void *ctx, int m, int n, dm_tensor out, dm_tensor pre,
                                   dm_tensor bias);

    /* --- expert ops: dispatch and combine ------------------------------- */

    /* Groups the (token, expert) assignments of mask (N,E) int32 (0/1) by expert.
     * Slots are expert-major, tokens ascending within an expert. With capacity > 0
     * each expert keeps its first `capacity` tokens in token order and drops the rest.
     * Writes: slot (N,E) int32 = slot index of the assignment or -1 (unselected or
     * dropped); counts (E) int32 kept per expert; demand (E) int32 selected per
     * expert before dropping; offsets (E+1) int32 exclusive prefix sum of counts;
     * token_of_slot (N*E) int32, the first offsets[E] entries valid. */
    dm_status (*dispatch_build)(void *ctx, int n, int e, int capacity, dm_tensor mask,
                                dm_tensor slot, dm_tensor counts, dm_tensor demand,
                                dm_tensor offsets, dm_tensor token_of_slot);
    /* xg (S,C) writes xg[s] = x[token_of_slot[s]] for s < S. */
    dm_status (*gather_forward)(void *ctx, int s, int c, dm_tensor xg, dm_tensor x,
                                dm_tensor token_of_slot);
    /* dx[token_of_slot[s]] += dxg[s] for s < S. */
    dm_status (*gather_backward)(void *ctx, int s, int c, dm_tensor dx, dm_tensor dxg,
                                 dm_tensor token_of_slot);
    /* y (N,C) writes y[t] = sum over e ascending with slot[t,e] >= 0 of w[t,e] * yg[slot[t,e]]. */
    dm_status (*combine_forward)(void *ctx, int n, int e, int c, dm_tensor y, dm_tensor yg,
                                 dm_tensor slot, dm_tensor w);
    /* Writes dyg[slot[t,e]] = w[t,e] * dy[t] for every kept slot, and writes
     * dw (N,E) = <dy[t], yg[slot[t,e]]> for kept assignments, 0 elsewhere. */
    dm_status (*combine_backward)(void *ctx, int n, int e, int c, dm_tensor dyg, dm_tensor dw,
                                  dm_tensor dy, dm_tensor yg, dm_tensor slot, dm_tensor w);

    /* --- router ops --------------------------------------------------- */

    /* Writes the Philox4x32-10 words of elements index_base .. index_base+n-1
     * (counter word 0), attempt `attempt`, into out (n,4) uint32. */
    dm_status (*philox)(void *ctx, size_t n, uint64_t seed, uint32_t index_base, uint32_t attempt,
                        uint32_t layer, uint32_t purpose, uint32_t step, dm_tensor out);
    /* log g (n) for g ~ Gamma(alpha[i], 1) by Marsaglia-Tsang with the layout of
     * dirmoe/philox.h, element i using counter word 0 = rng.token_base + i and purpose
     * DM_RNG_GAMMA. fallbacks (1) uint32 += number of elements that exhausted 64 attempts. */
    dm_status (*gamma_sample)(void *ctx, size_t n, const dm_rng_site *rng, dm_tensor log_g,
                              dm_tensor alpha, dm_tensor fallbacks);
    /* Writes out (n) = d log g / d alpha, the implicit reparameterisation gradient. */
    dm_status (*gamma_grad)(void *ctx, size_t n, dm_tensor out, dm_tensor alpha, dm_tensor log_g);

    /* DirMoE training forward over N tokens.
     * Reads logits (N,2E). u (N,E) and log_g (N,E): written when drawn from Philox
     * (fixed_noise = 0), read when fixed_noise != 0. In hard mode log_g is drawn only
     * for selected experts and unselected entries are written 0; in soft mode for all.
     * Writes zt (N,E) relaxed gate, alpha (N,E), mask (N,E) int32 after the
     * at-least-one and k_max rules, w (N,E) weights (0 where unselected).
     * fallbacks (1) uint32 += Gamma elements that exhausted 64 attempts. */
    dm_status (*dirmoe_route_forward)(void *ctx, const dm_dirmoe_params *p, dm_tensor logits,
                                      dm_tensor u, dm_tensor log_g, dm_tensor zt, dm_tensor alpha,
                                      dm_tensor mask, dm_tensor w, dm_tensor fallbacks);
    /* DirMoE training backward: dlogits (N,2E) += the straight-through (hard) or exact
     * (soft) gradient of the loss through the weights, given dw (N,E) = dL/dw and the
     * forward's saved tensors. */
    dm_status (*dirmoe_route_backward)(void *ctx, const dm_dirmoe_params *p, dm_tensor dlogits,
                                       dm_tensor dw, dm_tensor logits, dm_tensor zt,
                                       dm_tensor alpha, dm_tensor log_g, dm_tensor mask,
                                       dm_tensor w);
    /* DirMoE evaluation routing (deterministic): n = clamp(floor(K + 0.5), 1, k_max)
     * largest s, w = alpha / sum of selected alpha. Writes mask (N,E) int32, w (N,E). */
    dm_status (*dirmoe_route_eval)(void *ctx, const dm_dirmoe_params *p, dm_tensor logits,
                                   dm_tensor mask, dm_tensor w);
    /* Regularisers of one layer: writes stats (DM_REG_NSTATS) float. */
    dm_status (*dirmoe_reg_forward)(void *ctx, const dm_dirmoe_reg_params *p, dm_tensor logits,
                                    dm_tensor stats);
    /* dlogits (N,2E) += d(stats[DM_REG_LOSS]) / dlogits. */
    dm_status (*dirmoe_reg_backward)(void *ctx, const dm_dirmoe_reg_params *p, dm_tensor logits,
                                     dm_tensor dlogits);
    /* Top-k / Switch routing of s (N,E): writes probs (N,E) = softmax(s), mask (N,E) int32
     * with the k largest (ties to the lower index), w (N,E). */
    dm_status (*topk_route_forward)(void *ctx, const dm_topk_params *p, dm_tensor logits,
                                    dm_tensor probs, dm_tensor mask, dm_tensor w);
    /* dlogits (N,E) += gradient through w, given dw (N,E). */
    dm_status (*topk_route_backward)(void *ctx, const dm_topk_params *p, dm_tensor dlogits,
                                     dm_tensor dw, dm_tensor probs, dm_tensor mask, dm_tensor w);

    /* --- loss ops ----------------------------------------------------- */

    /* Load-balancing and z-loss. logits rows have stride p->logits_stride, first E
     * columns used; probs (N,E) = softmax of them; demand (E) int32 from dispatch_build.
     * Writes stats (DM_BAL_NSTATS) float: unweighted balance loss and z-loss. */
    dm_status (*balance_forward)(void *ctx, const dm_balance_params *p, dm_tensor logits,
                                 dm_tensor probs, dm_tensor demand, dm_tensor stats);
    /* dlogits += coef_balance * d(balance)/ds + coef_z * d(z)/ds (f_e held constant). */
    dm_status (*balance_backward)(void *ctx, const dm_balance_params *p, dm_tensor logits,
                                  dm_tensor probs, dm_tensor demand, dm_tensor dlogits);
    /* Fused softmax cross-entropy. logits (N,V), targets int32 (N). Writes losses (N)
     * = -log softmax(logits)[target] and probs (N,V) = softmax(logits). */
    dm_status (*xent_forward)(void *ctx, int n, int v, dm_tensor losses, dm_tensor probs,
                              dm_tensor logits, dm_tensor targets);
    /* Writes dlogits (N,V) = scale * (probs - onehot(targets)); may alias probs. */
    dm_status (*xent_backward)(void *ctx, int n, int v, float scale, dm_tensor dlogits,
                               dm_tensor probs, dm_tensor targets);

    /* --- optimizer ---------------------------------------------------- */

    /* AdamW over n elements: m, v updated in place, params updated in place. */
    dm_status (*adamw)(void *ctx, size_t n, const dm_adamw_params *p, dm_tensor params,
                       dm_tensor grads, dm_tensor m, dm_tensor v);
} dm_backend_ops;

/* One device a backend can run on, as listed by `dirmoe backends`. */
typedef struct dm_device_info {
    char name[128];
    char detail[128];     /* driver / version / memory, free text */
} dm_device_info;

#define DM_MAX_DEVICES 16

/* Result of a probe. score < 0: unusable (reason explains why). Higher is preferred by auto. */
typedef struct dm_probe_result {
    int score;
    int n_devices;
    dm_device_info devices[DM_MAX_DEVICES];
    char reason[256];
} dm_probe_result;

/* Probe scores of the in-tree backends, so auto picks a GPU over the CPU backends. */
enum {
    DM_SCORE_REFERENCE = 10,
    DM_SCORE_OPENCL_CPU = 20,
    DM_SCORE_CPU = 50,
    DM_SCORE_OPENCL_GPU = 100
};

typedef struct dm_backend_desc {
    uint32_t abi_version;   /* DM_BACKEND_ABI_VERSION at build time; read before anything else */
    uint32_t struct_size;   /* sizeof(dm_backend_desc) at build time */
    const char *name;       /* selection name, for example "reference" */
    const char *description;/* one line for `dirmoe backends` */

    /* Fills *out; never fails (an unusable backend reports score < 0). */
    void (*probe)(dm_probe_result *out);
    /* Creates a context. On failure writes a message into err (errlen bytes). */
    dm_status (*init)(void **ctx, char *err, size_t errlen);
    void (*shutdown)(void *ctx);
    /* Message of the last failed op on this context ("" when none). */
    const char *(*last_error)(void *ctx);
    /* OPTIONAL: receives the core's log hook so plugin messages go through it. */
    void (*set_log)(void (*log)(dm_log_level level, const char *component, const char *message));

    dm_backend_ops ops;
} dm_backend_desc;

typedef const dm_backend_desc *(*dm_backend_entry_fn)(void);

#ifdef __cplusplus
}
#endif
#endif
