/*
 * Reference backend kernels over plain host arrays. Each .c file that
 * includes this header is compiled twice: with REF_REAL=float into the
 * plugin, and with REF_REAL=double into libref_double for the finite-
 * difference gradient tests. REF(name) expands to dm_ref_f_name or
 * dm_ref_d_name accordingly. The contracts are those of the same-named ops
 * in dirmoe/backend.h; integer tensors stay int32_t / uint32_t in both builds.
 */
#ifndef DM_REF_OPS_H
#define DM_REF_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "dirmoe/backend.h"

#ifndef REF_REAL
#define REF_REAL float
#endif

#define REF_CAT_(a, b) a##b
#define REF_CAT(a, b) REF_CAT_(a, b)
#ifdef REF_DOUBLE
#define REF(name) REF_CAT(dm_ref_d_, name)
#else
#define REF(name) REF_CAT(dm_ref_f_, name)
#endif

typedef REF_REAL ref_real;

/* linear algebra */
void REF(gemm)(int trans_a, int trans_b, int m, int n, int k, ref_real alpha, const ref_real *a,
               int lda, const ref_real *b, int ldb, ref_real beta, ref_real *c, int ldc);
void REF(axpy)(size_t n, ref_real a, const ref_real *x, ref_real *y);
void REF(scale)(size_t n, ref_real a, ref_real *x);
void REF(sum_squares)(size_t n, const ref_real *x, ref_real *out);

/* transformer layers */
void REF(encoder_forward)(int b, int t, int c, ref_real *out, const int32_t *tokens,
                          const ref_real *wte, const ref_real *wpe);
void REF(encoder_backward)(int b, int t, int c, ref_real *dwte, ref_real *dwpe,
                           const ref_real *dout, const int32_t *tokens);
void REF(layernorm_forward)(int n, int c, ref_real *out, ref_real *mean, ref_real *rstd,
                            const ref_real *inp, const ref_real *weight, const ref_real *bias);
void REF(layernorm_backward)(int n, int c, ref_real *dinp, ref_real *dweight, ref_real *dbias,
                             const ref_real *dout, const ref_real *inp, const ref_real *weight,
                             const ref_real *mean, const ref_real *rstd);
void REF(attention_forward)(int b, int t, int c, int nh, ref_real *out, ref_real *lse,
                            const ref_real *qkv);
void REF(attention_backward)(int b, int t, int c, int nh, ref_real *dqkv, const ref_real *dout,
                             const ref_real *qkv, const ref_real *out, const ref_real *lse);
void REF(gelu_forward)(size_t n, ref_real *out, const ref_real *inp);
void REF(gelu_backward)(size_t n, ref_real *dinp, const ref_real *inp, const ref_real *dout);
void REF(bias_forward)(int m, int n, ref_real *out, const ref_real *bias);
void REF(bias_backward)(int m, int n, ref_real *dbias, const ref_real *dout);

/* dispatch and combine */
void REF(dispatch_build)(int n, int e, int capacity, const int32_t *mask, int32_t *slot,
                         int32_t *counts, int32_t *demand, int32_t *offsets,
                         int32_t *token_of_slot);
void REF(gather_forward)(int s, int c, ref_real *xg, const ref_real *x,
                         const int32_t *token_of_slot);
void REF(gather_backward)(int s, int c, ref_real *dx, const ref_real *dxg,
                          const int32_t *token_of_slot);
void REF(combine_forward)(int n, int e, int c, ref_real *y, const ref_real *yg,
                          const int32_t *slot, const ref_real *w);
void REF(combine_backward)(int n, int e, int c, ref_real *dyg, ref_real *dw, const ref_real *dy,
                           const ref_real *yg, const int32_t *slot, const ref_real *w);

/* router */
void REF(gamma_sample)(size_t n, const dm_rng_site *rng, ref_real *log_g, const ref_real *alpha,
                       uint32_t *fallbacks);
void REF(gamma_grad)(size_t n, ref_real *out, const ref_real *alpha, const ref_real *log_g);
void REF(dirmoe_route_forward)(const dm_dirmoe_params *p, const ref_real *logits, ref_real *u,
                               ref_real *log_g, ref_real *zt, ref_real *alpha, int32_t *mask,
                               ref_real *w, uint32_t *fallbacks);
void REF(dirmoe_route_backward)(const dm_dirmoe_params *p, ref_real *dlogits, const ref_real *dw,
                                const ref_real *logits, const ref_real *zt, const ref_real *alpha,
                                const ref_real *log_g, const int32_t *mask, const ref_real *w);
void REF(dirmoe_route_eval)(const dm_dirmoe_params *p, const ref_real *logits, int32_t *mask,
                            ref_real *w);
void REF(dirmoe_reg_forward)(const dm_dirmoe_reg_params *p, const ref_real *logits,
                             ref_real *stats);
void REF(dirmoe_reg_backward)(const dm_dirmoe_reg_params *p, const ref_real *logits,
                              ref_real *dlogits);
void REF(topk_route_forward)(const dm_topk_params *p, const ref_real *logits, ref_real *probs,
                             int32_t *mask, ref_real *w);
void REF(topk_route_backward)(const dm_topk_params *p, ref_real *dlogits, const ref_real *dw,
                              const ref_real *probs, const int32_t *mask, const ref_real *w);

/* losses */
void REF(balance_forward)(const dm_balance_params *p, const ref_real *logits,
                          const ref_real *probs, const int32_t *demand, ref_real *stats);
void REF(balance_backward)(const dm_balance_params *p, const ref_real *logits,
                           const ref_real *probs, const int32_t *demand, ref_real *dlogits);
void REF(xent_forward)(int n, int v, ref_real *losses, ref_real *probs, const ref_real *logits,
                       const int32_t *targets);
void REF(xent_backward)(int n, int v, ref_real scale, ref_real *dlogits, const ref_real *probs,
                        const int32_t *targets);

/* optimizer */
void REF(adamw)(size_t n, const dm_adamw_params *p, ref_real *params, const ref_real *grads,
                ref_real *m, ref_real *v);

#endif
