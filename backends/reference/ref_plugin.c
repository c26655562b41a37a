/*
 * Reference backend plugin: host memory buffers and thin wrappers that turn
 * dm_tensor views into pointers for the float kernels of ref_ops.h. It is
 * written for clarity and is the numerical ground truth of the project.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dirmoe/philox.h"
#include "ref_ops.h"

struct dm_buffer {
    size_t n;
    uint32_t data[]; /* 4-byte elements: float, int32 or uint32 */
};

typedef struct ref_ctx {
    char error[512];
} ref_ctx;

static dm_status ref_fail(void *ctx, dm_status st, const char *fmt, ...)
{
    ref_ctx *rc = ctx;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(rc->error, sizeof rc->error, fmt, ap);
    va_end(ap);
    return st;
}

#define F(t) ((float *)(void *)((t).buf->data + (t).off))
#define I(t) ((int32_t *)(void *)((t).buf->data + (t).off))
#define U(t) ((uint32_t *)(t).buf->data + (t).off)

static dm_status ref_alloc(void *ctx, size_t n, dm_buffer **out)
{
    dm_buffer *buf = malloc(sizeof *buf + (n ? n : 1) * sizeof(uint32_t));

    if (!buf)
        return ref_fail(ctx, DM_ERR_NOMEM, "cannot allocate %zu bytes of host memory", n * 4);
    buf->n = n;
    *out = buf;
    return DM_OK;
}

static void ref_free(void *ctx, dm_buffer *buf)
{
    (void)ctx;
    free(buf);
}

static dm_status check_range(void *ctx, dm_tensor t, size_t n, const char *what)
{
    if (!t.buf)
        return ref_fail(ctx, DM_ERR_INVALID, "%s: null buffer", what);
    if (t.off > t.buf->n || n > t.buf->n - t.off)
        return ref_fail(ctx, DM_ERR_INVALID, "%s: %zu elements at offset %zu exceed the buffer of %zu",
                        what, n, t.off, t.buf->n);
    return DM_OK;
}

static dm_status ref_upload(void *ctx, dm_tensor dst, const void *src, size_t n)
{
    dm_status st = check_range(ctx, dst, n, "upload");
    if (st)
        return st;
    memcpy(U(dst), src, n * sizeof(uint32_t));
    return DM_OK;
}

static dm_status ref_download(void *ctx, void *dst, dm_tensor src, size_t n)
{
    dm_status st = check_range(ctx, src, n, "download");
    if (st)
        return st;
    memcpy(dst, U(src), n * sizeof(uint32_t));
    return DM_OK;
}

static dm_status ref_fill(void *ctx, dm_tensor dst, uint32_t bits, size_t n)
{
    dm_status st = check_range(ctx, dst, n, "fill");
    if (st)
        return st;
    uint32_t *p = U(dst);
    for (size_t i = 0; i < n; i++)
        p[i] = bits;
    return DM_OK;
}

static dm_status ref_copy(void *ctx, dm_tensor dst, dm_tensor src, size_t n)
{
    dm_status st = check_range(ctx, dst, n, "copy");
    if (st || (st = check_range(ctx, src, n, "copy")))
        return st;
    memmove(U(dst), U(src), n * sizeof(uint32_t));
    return DM_OK;
}

static dm_status ref_synchronize(void *ctx)
{
    (void)ctx;
    return DM_OK;
}

static dm_status ref_gemm(void *ctx, int ta, int tb, int m, int n, int k, float alpha, dm_tensor a,
                          int lda, dm_tensor b, int ldb, float beta, dm_tensor c, int ldc)
{
    if (m < 0 || n < 0 || k < 0)
        return ref_fail(ctx, DM_ERR_INVALID, "gemm: negative size m=%d n=%d k=%d", m, n, k);
    dm_ref_f_gemm(ta, tb, m, n, k, alpha, F(a), lda, F(b), ldb, beta, F(c), ldc);
    return DM_OK;
}

static dm_status ref_axpy(void *ctx, size_t n, float a, dm_tensor x, dm_tensor y)
{
    (void)ctx;
    dm_ref_f_axpy(n, a, F(x), F(y));
    return DM_OK;
}

static dm_status ref_scale(void *ctx, size_t n, float a, dm_tensor x)
{
    (void)ctx;
    dm_ref_f_scale(n, a, F(x));
    return DM_OK;
}

static dm_status ref_sum_squares(void *ctx, size_t n, dm_tensor x, dm_tensor out)
{
    (void)ctx;
    dm_ref_f_sum_squares(n, F(x), F(out));
    return DM_OK;
}

static dm_status ref_encoder_forward(void *ctx, int b, int t, int c, dm_tensor out, dm_tensor tokens,
                                     dm_tensor wte, dm_tensor wpe)
{
    (void)ctx;
    dm_ref_f_encoder_forward(b, t, c, F(out), I(tokens), F(wte), F(wpe));
    return DM_OK;
}

static dm_status ref_encoder_backward(void *ctx, int b, int t, int c, dm_tensor dwte, dm_tensor dwpe,
                                      dm_tensor dout, dm_tensor tokens)
{
    (void)ctx;
    dm_ref_f_encoder_backward(b, t, c, F(dwte), F(dwpe), F(dout), I(tokens));
    return DM_OK;
}

static dm_status ref_layernorm_forward(void *ctx, int n, int c, dm_tensor out, dm_tensor mean,
                                       dm_tensor rstd, dm_tensor inp, dm_tensor weight, dm_tensor bias)
{
    (void)ctx;
    dm_ref_f_layernorm_forward(n, c, F(out), F(mean), F(rstd), F(inp), F(weight), F(bias));
    return DM_OK;
}

static dm_status ref_layernorm_backward(void *ctx, int n, int c, dm_tensor dinp, dm_tensor dweight,
                                        dm_tensor dbias, dm_tensor dout, dm_tensor inp,
                                        dm_tensor weight, dm_tensor mean, dm_tensor rstd)
{
    (void)ctx;
    dm_ref_f_layernorm_backward(n, c, F(dinp), F(dweight), F(dbias), F(dout), F(inp), F(weight),
                                F(mean), F(rstd));
    return DM_OK;
}

static dm_status ref_attention_forward(void *ctx, int b, int t, int c, int nh, dm_tensor out,
                                       dm_tensor lse, dm_tensor qkv)
{
    if (nh <= 0 || c % nh != 0)
        return ref_fail(ctx, DM_ERR_INVALID, "attention: d_model %d is not a multiple of %d heads", c, nh);
    dm_ref_f_attention_forward(b, t, c, nh, F(out), F(lse), F(qkv));
    return DM_OK;
}

static dm_status ref_attention_backward(void *ctx, int b, int t, int c, int nh, dm_tensor dqkv,
                                        dm_tensor dout, dm_tensor qkv, dm_tensor out, dm_tensor lse)
{
    if (nh <= 0 || c % nh != 0)
        return ref_fail(ctx, DM_ERR_INVALID, "attention: d_model %d is not a multiple of %d heads", c, nh);
    dm_ref_f_attention_backward(b, t, c, nh, F(dqkv), F(dout), F(qkv), F(out), F(lse));
    return DM_OK;
}

static dm_status ref_gelu_forward(void *ctx, size_t n, dm_tensor out, dm_tensor inp)
{
    (void)ctx;
    dm_ref_f_gelu_forward(n, F(out), F(inp));
    return DM_OK;
}

static dm_status ref_gelu_backward(void *ctx, size_t n, dm_tensor dinp, dm_tensor inp, dm_tensor dout)
{
    (void)ctx;
    dm_ref_f_gelu_backward(n, F(dinp), F(inp), F(dout));
    return DM_OK;
}

static dm_status ref_bias_forward(void *ctx, int m, int n, dm_tensor out, dm_tensor bias)
{
    (void)ctx;
    dm_ref_f_bias_forward(m, n, F(out), F(bias));
    return DM_OK;
}

static dm_status ref_bias_backward(void *ctx, int m, int n, dm_tensor dbias, dm_tensor dout)
{
    (void)ctx;
    dm_ref_f_bias_backward(m, n, F(dbias), F(dout));
    return DM_OK;
}

static dm_status ref_dispatch_build(void *ctx, int n, int e, int capacity, dm_tensor mask,
                                    dm_tensor slot, dm_tensor counts, dm_tensor demand,
                                    dm_tensor offsets, dm_tensor token_of_slot)
{
    (void)ctx;
    dm_ref_f_dispatch_build(n, e, capacity, I(mask), I(slot), I(counts), I(demand), I(offsets),
                            I(token_of_slot));
    return DM_OK;
}

static dm_status ref_gather_forward(void *ctx, int s, int c, dm_tensor xg, dm_tensor x,
                                    dm_tensor token_of_slot)
{
    (void)ctx;
    dm_ref_f_gather_forward(s, c, F(xg), F(x), I(token_of_slot));
    return DM_OK;
}

static dm_status ref_gather_backward(void *ctx, int s, int c, dm_tensor dx, dm_tensor dxg,
                                     dm_tensor token_of_slot)
{
    (void)ctx;
    dm_ref_f_gather_backward(s, c, F(dx), F(dxg), I(token_of_slot));
    return DM_OK;
}

static dm_status ref_combine_forward(void *ctx, int n, int e, int c, dm_tensor y, dm_tensor yg,
                                     dm_tensor slot, dm_tensor w)
{
    (void)ctx;
    dm_ref_f_combine_forward(n, e, c, F(y), F(yg), I(slot), F(w));
    return DM_OK;
}

static dm_status ref_combine_backward(void *ctx, int n, int e, int c, dm_tensor dyg, dm_tensor dw,
                                      dm_tensor dy, dm_tensor yg, dm_tensor slot, dm_tensor w)
{
    (void)ctx;
    dm_ref_f_combine_backward(n, e, c, F(dyg), F(dw), F(dy), F(yg), I(slot), F(w));
    return DM_OK;
}

static dm_status ref_philox(void *ctx, size_t n, uint64_t seed, uint32_t index_base, uint32_t attempt,
                            uint32_t layer, uint32_t purpose, uint32_t step, dm_tensor out)
{
    uint32_t *words = U(out);

    (void)ctx;
    for (size_t i = 0; i < n; i++) {
        dm_philox_block blk = dm_philox_at(seed, index_base + (uint32_t)i, attempt, layer, purpose, step);
        memcpy(words + 4 * i, blk.w, sizeof blk.w);
    }
    return DM_OK;
}

static dm_status ref_gamma_sample(void *ctx, size_t n, const dm_rng_site *rng, dm_tensor log_g,
                                  dm_tensor alpha, dm_tensor fallbacks)
{
    (void)ctx;
    dm_ref_f_gamma_sample(n, rng, F(log_g), F(alpha), U(fallbacks));
    return DM_OK;
}

static dm_status ref_gamma_grad(void *ctx, size_t n, dm_tensor out, dm_tensor alpha, dm_tensor log_g)
{
    (void)ctx;
    dm_ref_f_gamma_grad(n, F(out), F(alpha), F(log_g));
    return DM_OK;
}

static dm_status check_dirmoe(void *ctx, const dm_dirmoe_params *p)
{
    if (p->n_tokens < 0 || p->n_expert < 1 || p->k_max < 1 || p->k_max > p->n_expert)
        return ref_fail(ctx, DM_ERR_INVALID, "dirmoe routing: invalid sizes N=%d E=%d k_max=%d",
                        p->n_tokens, p->n_expert, p->k_max);
    if (!(p->tau > 0.0f) || !(p->alpha_min > 0.0f) || !(p->alpha_max > p->alpha_min))
        return ref_fail(ctx, DM_ERR_INVALID, "dirmoe routing: invalid tau=%g alpha_min=%g alpha_max=%g",
                        p->tau, p->alpha_min, p->alpha_max);
    return DM_OK;
}

static dm_status ref_dirmoe_route_forward(void *ctx, const dm_dirmoe_params *p, dm_tensor logits,
                                          dm_tensor u, dm_tensor log_g, dm_tensor zt, dm_tensor alpha,
                                          dm_tensor mask, dm_tensor w, dm_tensor fallbacks)
{
    dm_status st = check_dirmoe(ctx, p);
    if (st)
        return st;
    dm_ref_f_dirmoe_route_forward(p, F(logits), F(u), F(log_g), F(zt), F(alpha), I(mask), F(w),
                                  U(fallbacks));
    return DM_OK;
}

static dm_status ref_dirmoe_route_backward(void *ctx, const dm_dirmoe_params *p, dm_tensor dlogits,
                                           dm_tensor dw, dm_tensor logits, dm_tensor zt,
                                           dm_tensor alpha, dm_tensor log_g, dm_tensor mask, dm_tensor w)
{
    dm_status st = check_dirmoe(ctx, p);
    if (st)
        return st;
    dm_ref_f_dirmoe_route_backward(p, F(dlogits), F(dw), F(logits), F(zt), F(alpha), F(log_g),
                                   I(mask), F(w));
    return DM_OK;
}

static dm_status ref_dirmoe_route_eval(void *ctx, const dm_dirmoe_params *p, dm_tensor logits,
                                       dm_tensor mask, dm_tensor w)
{
    dm_status st = check_dirmoe(ctx, p);
    if (st)
        return st;
    dm_ref_f_dirmoe_route_eval(p, F(logits), I(mask), F(w));
    return DM_OK;
}

static dm_status ref_dirmoe_reg_forward(void *ctx, const dm_dirmoe_reg_params *p, dm_tensor logits,
                                        dm_tensor stats)
{
    (void)ctx;
    dm_ref_f_dirmoe_reg_forward(p, F(logits), F(stats));
    return DM_OK;
}

static dm_status ref_dirmoe_reg_backward(void *ctx, const dm_dirmoe_reg_params *p, dm_tensor logits,
                                         dm_tensor dlogits)
{
    (void)ctx;
    dm_ref_f_dirmoe_reg_backward(p, F(logits), F(dlogits));
    return DM_OK;
}

static dm_status ref_topk_route_forward(void *ctx, const dm_topk_params *p, dm_tensor logits,
                                        dm_tensor probs, dm_tensor mask, dm_tensor w)
{
    if (p->k < 1 || p->k > p->n_expert)
        return ref_fail(ctx, DM_ERR_INVALID, "topk routing: k=%d outside [1, %d]", p->k, p->n_expert);
    dm_ref_f_topk_route_forward(p, F(logits), F(probs), I(mask), F(w));
    return DM_OK;
}

static dm_status ref_topk_route_backward(void *ctx, const dm_topk_params *p, dm_tensor dlogits,
                                         dm_tensor dw, dm_tensor probs, dm_tensor mask, dm_tensor w)
{
    (void)ctx;
    dm_ref_f_topk_route_backward(p, F(dlogits), F(dw), F(probs), I(mask), F(w));
    return DM_OK;
}

static dm_status ref_balance_forward(void *ctx, const dm_balance_params *p, dm_tensor logits,
                                     dm_tensor probs, dm_tensor demand, dm_tensor stats)
{
    (void)ctx;
    dm_ref_f_balance_forward(p, F(logits), F(probs), I(demand), F(stats));
    return DM_OK;
}

static dm_status ref_balance_backward(void *ctx, const dm_balance_params *p, dm_tensor logits,
                                      dm_tensor probs, dm_tensor demand, dm_tensor dlogits)
{
    (void)ctx;
    dm_ref_f_balance_backward(p, F(logits), F(probs), I(demand), F(dlogits));
    return DM_OK;
}

static dm_status ref_xent_forward(void *ctx, int n, int v, dm_tensor losses, dm_tensor probs,
                                  dm_tensor logits, dm_tensor targets)
{
    const int32_t *tg = I(targets);

    for (int i = 0; i < n; i++)
        if (tg[i] < 0 || tg[i] >= v)
            return ref_fail(ctx, DM_ERR_INVALID, "xent: target %d of row %d outside [0, %d)", tg[i], i, v);
    dm_ref_f_xent_forward(n, v, F(losses), F(probs), F(logits), tg);
    return DM_OK;
}

static dm_status ref_xent_backward(void *ctx, int n, int v, float scale, dm_tensor dlogits,
                                   dm_tensor probs, dm_tensor targets)
{
    (void)ctx;
    dm_ref_f_xent_backward(n, v, scale, F(dlogits), F(probs), I(targets));
    return DM_OK;
}

static dm_status ref_adamw(void *ctx, size_t n, const dm_adamw_params *p, dm_tensor params,
                           dm_tensor grads, dm_tensor m, dm_tensor v)
{
    if (p->t < 1)
        return ref_fail(ctx, DM_ERR_INVALID, "adamw: step t=%d must be at least 1", p->t);
    dm_ref_f_adamw(n, p, F(params), F(grads), F(m), F(v));
    return DM_OK;
}

static void ref_probe(dm_probe_result *out)
{
    memset(out, 0, sizeof *out);
    out->score = DM_SCORE_REFERENCE;
    out->n_devices = 1;
    snprintf(out->devices[0].name, sizeof out->devices[0].name, "host CPU (scalar C, one thread)");
    snprintf(out->devices[0].detail, sizeof out->devices[0].detail, "numerical ground truth");
}

static dm_status ref_init(void **ctx, char *err, size_t errlen)
{
    ref_ctx *rc = calloc(1, sizeof *rc);

    if (!rc) {
        snprintf(err, errlen, "out of memory");
        return DM_ERR_NOMEM;
    }
    *ctx = rc;
    return DM_OK;
}

static void ref_shutdown(void *ctx)
{
    free(ctx);
}

static const char *ref_last_error(void *ctx)
{
    return ((ref_ctx *)ctx)->error;
}

static const dm_backend_desc ref_desc = {
    .abi_version = DM_BACKEND_ABI_VERSION,
    .struct_size = sizeof(dm_backend_desc),
    .name = "reference",
    .description = "portable scalar C, the numerical ground truth",
    .probe = ref_probe,
    .init = ref_init,
    .shutdown = ref_shutdown,
    .last_error = ref_last_error,
    .set_log = NULL,
    .ops = {
        .alloc = ref_alloc,
        .free = ref_free,
        .upload = ref_upload,
        .download = ref_download,
        .fill = ref_fill,
        .copy = ref_copy,
        .synchronize = ref_synchronize,
        .gemm = ref_gemm,
        .axpy = ref_axpy,
        .scale = ref_scale,
        .sum_squares = ref_sum_squares,
        .encoder_forward = ref_encoder_forward,
        .encoder_backward = ref_encoder_backward,
        .layernorm_forward = ref_layernorm_forward,
        .layernorm_backward = ref_layernorm_backward,
        .attention_forward = ref_attention_forward,
        .attention_backward = ref_attention_backward,
        .gelu_forward = ref_gelu_forward,
        .gelu_backward = ref_gelu_backward,
        .bias_forward = ref_bias_forward,
        .bias_backward = ref_bias_backward,
        .bias_gelu_forward = NULL,
        .dispatch_build = ref_dispatch_build,
        .gather_forward = ref_gather_forward,
        .gather_backward = ref_gather_backward,
        .combine_forward = ref_combine_forward,
        .combine_backward = ref_combine_backward,
        .philox = ref_philox,
        .gamma_sample = ref_gamma_sample,
        .gamma_grad = ref_gamma_grad,
        .dirmoe_route_forward = ref_dirmoe_route_forward,
        .dirmoe_route_backward = ref_dirmoe_route_backward,
        .dirmoe_route_eval = ref_dirmoe_route_eval,
        .dirmoe_reg_forward = ref_dirmoe_reg_forward,
        .dirmoe_reg_backward = ref_dirmoe_reg_backward,
        .topk_route_forward = ref_topk_route_forward,
        .topk_route_backward = ref_topk_route_backward,
        .balance_forward = ref_balance_forward,
        .balance_backward = ref_balance_backward,
        .xent_forward = ref_xent_forward,
        .xent_backward = ref_xent_backward,
        .adamw = ref_adamw,
    },
};

const dm_backend_desc *dm_backend_entry(void);

const dm_backend_desc *dm_backend_entry(void)
{
    return &ref_desc;
}
