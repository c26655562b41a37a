/*
 * cpu backend: shared definitions of the plugin's files. Buffers are 64-byte
 * aligned host arrays. Every parallel loop uses the context's fixed thread
 * count (OMP_NUM_THREADS at init). Every floating-point reduction runs in an
 * order that does not depend on scheduling, so a step gives the same bits on
 * every run with the same thread count. Most reductions (column sums,
 * scatter-adds, token means) use partitions that do not depend on the thread
 * count at all; GEMM row/column splits do.
 *
 * OpenBLAS is called with one BLAS thread: cpu_gemm splits C across the
 * OpenMP threads itself, and attention calls small GEMMs from inside OpenMP
 * regions. A second pool of spinning BLAS threads would fight the OpenMP
 * team for the same cores.
 */
#ifndef DM_CPU_OPS_H
#define DM_CPU_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "dirmoe/backend.h"

struct dm_buffer {
    size_t n;
    uint32_t *data; /* 4-byte elements, 64-byte aligned */
};

/* Per-thread scratch of the attention kernels, grown on first use. */
typedef struct cpu_thread_scratch {
    float *mem;
    size_t n;
} cpu_thread_scratch;

/* NOTE: a context serves one calling thread at a time: its scratch is shared by all ops,
 * and per-thread scratch is indexed by the OpenMP thread number. */
typedef struct cpu_ctx {
    int nthreads;
    char error[512];

    /* Shared scratch for fixed-order reductions (partials of chunks), grown on demand. */
    double *reduce;
    size_t reduce_n;

    cpu_thread_scratch *thread; /* nthreads entries */
} cpu_ctx;

/*
 * Elementwise loops that call cpu_expf are compiled for AVX-512, AVX2 and the
 * baseline, chosen at load time (GCC function multi-versioning), because the
 * plugin is built for baseline x86-64. Every variant runs the same float
 * operations without contraction, so results do not depend on the variant.
 */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CPU_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CPU_SIMD_CLONES
#endif

/* Elements per chunk of an elementwise OpenMP loop. */
#define CPU_SPAN 4096

/* Host pointers of a tensor view as float, int32 or uint32 elements. */
static inline float *f32(dm_tensor t)
{
    return (float *)(void *)(t.buf->data + t.off);
}

static inline int32_t *i32(dm_tensor t)
{
    return (int32_t *)(void *)(t.buf->data + t.off);
}

static inline uint32_t *u32(dm_tensor t)
{
    return t.buf->data + t.off;
}

/* Writes the message into ctx->error and returns st. */
dm_status cpu_fail(cpu_ctx *cx, dm_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Returns a shared double array of at least n elements (NULL when out of memory). */
double *cpu_reduce_scratch(cpu_ctx *cx, size_t n);
/* Makes every thread's scratch at least n floats; returns DM_ERR_NOMEM on failure. */
dm_status cpu_thread_scratch_reserve(cpu_ctx *cx, size_t n);

/* Number of row chunks of `chunk` rows covering n rows. */
static inline size_t cpu_nchunks(size_t n, size_t chunk)
{
    return (n + chunk - 1) / chunk;
}

/* linear algebra (cpu_linalg.c) */
dm_status cpu_gemm(void *ctx, int ta, int tb, int m, int n, int k, float alpha, dm_tensor a,
                   int lda, dm_tensor b, int ldb, float beta, dm_tensor c, int ldc);
/* The same on plain arrays, split across the context's threads. */
void cpu_sgemm_parallel(cpu_ctx *cx, int ta, int tb, int m, int n, int k, float alpha,
                        const float *a, int lda, const float *b, int ldb, float beta, float *c,
                        int ldc);
dm_status cpu_axpy(void *ctx, size_t n, float a, dm_tensor x, dm_tensor y);
dm_status cpu_scale(void *ctx, size_t n, float a, dm_tensor x);
dm_status cpu_sum_squares(void *ctx, size_t n, dm_tensor x, dm_tensor out);

/* transformer layers (cpu_layers.c) */
dm_status cpu_encoder_forward(void *ctx, int b, int t, int c, dm_tensor out, dm_tensor tokens,
                              dm_tensor wte, dm_tensor wpe);
dm_status cpu_encoder_backward(void *ctx, int b, int t, int c, dm_tensor dwte, dm_tensor dwpe,
                               dm_tensor dout, dm_tensor tokens);
dm_status cpu_layernorm_forward(void *ctx, int n, int c, dm_tensor out, dm_tensor mean,
                                dm_tensor rstd, dm_tensor inp, dm_tensor weight, dm_tensor bias);
dm_status cpu_layernorm_backward(void *ctx, int n, int c, dm_tensor dinp, dm_tensor dweight,
                                 dm_tensor dbias, dm_tensor dout, dm_tensor inp, dm_tensor weight,
                                 dm_tensor mean, dm_tensor rstd);
dm_status cpu_gelu_forward(void *ctx, size_t n, dm_tensor out, dm_tensor inp);
dm_status cpu_gelu_backward(void *ctx, size_t n, dm_tensor dinp, dm_tensor inp, dm_tensor dout);
dm_status cpu_bias_forward(void *ctx, int m, int n, dm_tensor out, dm_tensor bias);
dm_status cpu_bias_backward(void *ctx, int m, int n, dm_tensor dbias, dm_tensor dout);
dm_status cpu_bias_gelu_forward(void *ctx, int m, int n, dm_tensor out, dm_tensor pre,
                                dm_tensor bias);

/* attention (cpu_attention.c) */
dm_status cpu_attention_forward(void *ctx, int b, int t, int c, int nh, dm_tensor out,
                                dm_tensor lse, dm_tensor qkv);
dm_status cpu_attention_backward(void *ctx, int b, int t, int c, int nh, dm_tensor dqkv,
                                 dm_tensor dout, dm_tensor qkv, dm_tensor out, dm_tensor lse);

/* dispatch and combine (cpu_dispatch.c) */
dm_status cpu_dispatch_build(void *ctx, int n, int e, int capacity, dm_tensor mask,
                             dm_tensor slot, dm_tensor counts, dm_tensor demand,
                             dm_tensor offsets, dm_tensor token_of_slot);
dm_status cpu_gather_forward(void *ctx, int s, int c, dm_tensor xg, dm_tensor x,
                             dm_tensor token_of_slot);
dm_status cpu_gather_backward(void *ctx, int s, int c, dm_tensor dx, dm_tensor dxg,
                              dm_tensor token_of_slot);
dm_status cpu_combine_forward(void *ctx, int n, int e, int c, dm_tensor y, dm_tensor yg,
                              dm_tensor slot, dm_tensor w);
dm_status cpu_combine_backward(void *ctx, int n, int e, int c, dm_tensor dyg, dm_tensor dw,
                               dm_tensor dy, dm_tensor yg, dm_tensor slot, dm_tensor w);

/* router (cpu_router.c) */
dm_status cpu_philox(void *ctx, size_t n, uint64_t seed, uint32_t index_base, uint32_t attempt,
                     uint32_t layer, uint32_t purpose, uint32_t step, dm_tensor out);
dm_status cpu_gamma_sample(void *ctx, size_t n, const dm_rng_site *rng, dm_tensor log_g,
                           dm_tensor alpha, dm_tensor fallbacks);
dm_status cpu_gamma_grad(void *ctx, size_t n, dm_tensor out, dm_tensor alpha, dm_tensor log_g);
dm_status cpu_dirmoe_route_forward(void *ctx, const dm_dirmoe_params *p, dm_tensor logits,
                                   dm_tensor u, dm_tensor log_g, dm_tensor zt, dm_tensor alpha,
                                   dm_tensor mask, dm_tensor w, dm_tensor fallbacks);
dm_status cpu_dirmoe_route_backward(void *ctx, const dm_dirmoe_params *p, dm_tensor dlogits,
                                    dm_tensor dw, dm_tensor logits, dm_tensor zt,
                                    dm_tensor alpha, dm_tensor log_g, dm_tensor mask,
                                    dm_tensor w);
dm_status cpu_dirmoe_route_eval(void *ctx, const dm_dirmoe_params *p, dm_tensor logits,
                                dm_tensor mask, dm_tensor w);
dm_status cpu_dirmoe_reg_forward(void *ctx, const dm_dirmoe_reg_params *p, dm_tensor logits,
                                 dm_tensor stats);
dm_status cpu_dirmoe_reg_backward(void *ctx, const dm_dirmoe_reg_params *p, dm_tensor logits,
                                  dm_tensor dlogits);
dm_status cpu_topk_route_forward(void *ctx, const dm_topk_params *p, dm_tensor logits,
                                 dm_tensor probs, dm_tensor mask, dm_tensor w);
dm_status cpu_topk_route_backward(void *ctx, const dm_topk_params *p, dm_tensor dlogits,
                                  dm_tensor dw, dm_tensor probs, dm_tensor mask, dm_tensor w);

/* losses (cpu_loss.c) */
dm_status cpu_balance_forward(void *ctx, const dm_balance_params *p, dm_tensor logits,
                              dm_tensor probs, dm_tensor demand, dm_tensor stats);
dm_status cpu_balance_backward(void *ctx, const dm_balance_params *p, dm_tensor logits,
                               dm_tensor probs, dm_tensor demand, dm_tensor dlogits);
dm_status cpu_xent_forward(void *ctx, int n, int v, dm_tensor losses, dm_tensor probs,
                           dm_tensor logits, dm_tensor targets);
dm_status cpu_xent_backward(void *ctx, int n, int v, float scale, dm_tensor dlogits,
                            dm_tensor probs, dm_tensor targets);

/* optimizer (cpu_optim.c) */
dm_status cpu_adamw(void *ctx, size_t n, const dm_adamw_params *p, dm_tensor params,
                    dm_tensor grads, dm_tensor m, dm_tensor v);

#endif
