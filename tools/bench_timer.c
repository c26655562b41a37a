/* Op table wrapper that times every backend call by family, for `dirmoe bench`. */
#include "config.h"

#include <string.h>
#include <time.h>

#include "bench_timer.h"

const char *const dm_bench_family_names[DM_FAM_COUNT] = {
    "attention", "experts", "router", "loss", "optimizer", "other",
};

/* A parameter's element range in the flat buffers and its family. */
typedef struct param_range {
    size_t lo, hi;
    int family;
} param_range;

static struct {
    const dm_backend_ops *inner;
    void *ctx;
    int sync_each;
    dm_buffer *params, *grads;
    param_range *ranges;
    int n_ranges;
    dm_bench_times times;
} T;

static dm_backend_ops timed_ops;

double dm_bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Family of a parameter by its name (see dirmoe/model.h for the names). */
static int family_of_name(const char *name)
{
    if (strstr(name, ".attn.") || strstr(name, ".ln1."))
        return DM_FAM_ATTENTION;
    if (strstr(name, ".router."))
        return DM_FAM_ROUTER;
    if (strstr(name, ".experts.") || strstr(name, ".ffn.") || strstr(name, ".ln2."))
        return DM_FAM_EXPERTS;
    if (strncmp(name, "wte", 3) == 0 || strncmp(name, "wpe", 3) == 0 || strncmp(name, "lnf", 3) == 0)
        return DM_FAM_LOSS;
    return DM_FAM_OTHER;
}

/* Family of the parameter a tensor view points into, or -1 for activations. */
static int family_of_tensor(dm_tensor t)
{
    if (!t.buf || (t.buf != T.params && t.buf != T.grads))
        return -1;
    for (int i = 0; i < T.n_ranges; i++)
        if (t.off >= T.ranges[i].lo && t.off < T.ranges[i].hi)
            return T.ranges[i].family;
    return -1;
}

/* Whether a view points into the parameter or gradient buffer (whole-buffer ops: clipping). */
static int in_model_buffers(dm_tensor t)
{
    return t.buf && (t.buf == T.params || t.buf == T.grads);
}

/* The first of up to three tensors that names a parameter decides; else `fallback`. */
static int family_of(dm_tensor a, dm_tensor b, dm_tensor c, int fallback)
{
    int f = family_of_tensor(a);
    if (f < 0)
        f = family_of_tensor(b);
    if (f < 0)
        f = family_of_tensor(c);
    return f < 0 ? fallback : f;
}

static void finish(int family, double t0)
{
    if (T.sync_each)
        T.inner->synchronize(T.ctx);
    T.times.seconds[family] += dm_bench_now() - t0;
    T.times.calls[family]++;
}

/* Defines timed_OP(PARAMS) that calls the inner OP(ARGS) and charges FAMILY. */
#define TIMED(op, family, params, args)                 \
    static dm_status timed_##op params                  \
    {                                                   \
        double t0 = dm_bench_now();                     \
        dm_status st = T.inner->op args;                \
        finish((family), t0);                           \
        return st;                                      \
    }

static const dm_tensor no_tensor = {NULL, 0};

TIMED(upload, DM_FAM_OTHER, (void *ctx, dm_tensor dst, const void *src, size_t n), (ctx, dst, src, n))
TIMED(download, DM_FAM_OTHER, (void *ctx, void *dst, dm_tensor src, size_t n), (ctx, dst, src, n))
TIMED(fill, DM_FAM_OTHER, (void *ctx, dm_tensor dst, uint32_t bits, size_t n), (ctx, dst, bits, n))
TIMED(copy, DM_FAM_OTHER, (void *ctx, dm_tensor dst, dm_tensor src, size_t n), (ctx, dst, src, n))
TIMED(gemm, family_of(c, b, a, DM_FAM_OTHER),
      (void *ctx, int ta, int tb, int m, int n, int k, float alpha, dm_tensor a, int lda, dm_tensor b, int ldb,
       float beta, dm_tensor c, int ldc),
      (ctx, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc))
TIMED(axpy, in_model_buffers(y) ? DM_FAM_OPTIMIZER : DM_FAM_OTHER,
      (void *ctx, size_t n, float a, dm_tensor x, dm_tensor y), (ctx, n, a, x, y))
TIMED(scale, in_model_buffers(x) ? DM_FAM_OPTIMIZER : DM_FAM_OTHER,
      (void *ctx, size_t n, float a, dm_tensor x), (ctx, n, a, x))
TIMED(sum_squares, DM_FAM_OPTIMIZER, (void *ctx, size_t n, dm_tensor x, dm_tensor out), (ctx, n, x, out))
TIMED(encoder_forward, DM_FAM_LOSS,
      (void *ctx, int b, int t, int c, dm_tensor out, dm_tensor tokens, dm_tensor wte, dm_tensor wpe),
      (ctx, b, t, c, out, tokens, wte, wpe))
TIMED(encoder_backward, DM_FAM_LOSS,
      (void *ctx, int b, int t, int c, dm_tensor dwte, dm_tensor dwpe, dm_tensor dout, dm_tensor tokens),
      (ctx, b, t, c, dwte, dwpe, dout, tokens))
TIMED(layernorm_forward, family_of(weight, no_tensor, no_tensor, DM_FAM_OTHER),
      (void *ctx, int n, int c, dm_tensor out, dm_tensor mean, dm_tensor rstd, dm_tensor inp, dm_tensor weight,
       dm_tensor bias),
      (ctx, n, c, out, mean, rstd, inp, weight, bias))
TIMED(layernorm_backward, family_of(weight, no_tensor, no_tensor, DM_FAM_OTHER),
      (void *ctx, int n, int c, dm_tensor dinp, dm_tensor dweight, dm_tensor dbias, dm_tensor dout, dm_tensor inp,
       dm_tensor weight, dm_tensor mean, dm_tensor rstd),
      (ctx, n, c, dinp, dweight, dbias, dout, inp, weight, mean, rstd))
TIMED(attention_forward, DM_FAM_ATTENTION,
      (void *ctx, int b, int t, int c, int nh, dm_tensor out, dm_tensor lse, dm_tensor qkv),
      (ctx, b, t, c, nh, out, lse, qkv))
TIMED(attention_backward, DM_FAM_ATTENTION,
      (void *ctx, int b, int t, int c, int nh, dm_tensor dqkv, dm_tensor dout, dm_tensor qkv, dm_tensor out,
       dm_tensor lse),
      (ctx, b, t, c, nh, dqkv, dout, qkv, out, lse))
TIMED(gelu_forward, DM_FAM_EXPERTS, (void *ctx, size_t n, dm_tensor out, dm_tensor inp), (ctx, n, out, inp))
TIMED(gelu_backward, DM_FAM_EXPERTS, (void *ctx, size_t n, dm_tensor dinp, dm_tensor inp, dm_tensor dout),
      (ctx, n, dinp, inp, dout))
TIMED(bias_forward, family_of(bias, no_tensor, no_tensor, DM_FAM_OTHER),
      (void *ctx, int m, int n, dm_tensor out, dm_tensor bias), (ctx, m, n, out, bias))
TIMED(bias_backward, family_of(dbias, no_tensor, no_tensor, DM_FAM_OTHER),
      (void *ctx, int m, int n, dm_tensor dbias, dm_tensor dout), (ctx, m, n, dbias, dout))
TIMED(bias_gelu_forward, family_of(bias, no_tensor, no_tensor, DM_FAM_EXPERTS),
      (void *ctx, int m, int n, dm_tensor out, dm_tensor pre, dm_tensor bias), (ctx, m, n, out, pre, bias))
TIMED(dispatch_build, DM_FAM_EXPERTS,
      (void *ctx, int n, int e, int capacity, dm_tensor mask, dm_tensor slot, dm_tensor counts, dm_tensor demand,
       dm_tensor offsets, dm_tensor token_of_slot),
      (ctx, n, e, capacity, mask, slot, counts, demand, offsets, token_of_slot))
TIMED(gather_forward, DM_FAM_EXPERTS, (void *ctx, int s, int c, dm_tensor xg, dm_tensor x, dm_tensor tos),
      (ctx, s, c, xg, x, tos))
TIMED(gather_backward, DM_FAM_EXPERTS, (void *ctx, int s, int c, dm_tensor dx, dm_tensor dxg, dm_tensor tos),
      (ctx, s, c, dx, dxg, tos))
TIMED(combine_forward, DM_FAM_EXPERTS,
      (void *ctx, int n, int e, int c, dm_tensor y, dm_tensor yg, dm_tensor slot, dm_tensor w),
      (ctx, n, e, c, y, yg, slot, w))
TIMED(combine_backward, DM_FAM_EXPERTS,
      (void *ctx, int n, int e, int c, dm_tensor dyg, dm_tensor dw, dm_tensor dy, dm_tensor yg, dm_tensor slot,
       dm_tensor w),
      (ctx, n, e, c, dyg, dw, dy, yg, slot, w))
TIMED(philox, DM_FAM_ROUTER,
      (void *ctx, size_t n, uint64_t seed, uint32_t base, uint32_t attempt, uint32_t layer, uint32_t purpose,
       uint32_t step, dm_tensor out),
      (ctx, n, seed, base, attempt, layer, purpose, step, out))
TIMED(gamma_sample, DM_FAM_ROUTER,
      (void *ctx, size_t n, const dm_rng_site *rng, dm_tensor log_g, dm_tensor alpha, dm_tensor fallbacks),
      (ctx, n, rng, log_g, alpha, fallbacks))
TIMED(gamma_grad, DM_FAM_ROUTER, (void *ctx, size_t n, dm_tensor out, dm_tensor alpha, dm_tensor log_g),
      (ctx, n, out, alpha, log_g))
TIMED(dirmoe_route_forward, DM_FAM_ROUTER,
      (void *ctx, const dm_dirmoe_params *p, dm_tensor logits, dm_tensor u, dm_tensor log_g, dm_tensor zt,
       dm_tensor alpha, dm_tensor mask, dm_tensor w, dm_tensor fallbacks),
      (ctx, p, logits, u, log_g, zt, alpha, mask, w, fallbacks))
TIMED(dirmoe_route_backward, DM_FAM_ROUTER,
      (void *ctx, const dm_dirmoe_params *p, dm_tensor dlogits, dm_tensor dw, dm_tensor logits, dm_tensor zt,
       dm_tensor alpha, dm_tensor log_g, dm_tensor mask, dm_tensor w),
      (ctx, p, dlogits, dw, logits, zt, alpha, log_g, mask, w))
TIMED(dirmoe_route_eval, DM_FAM_ROUTER,
      (void *ctx, const dm_dirmoe_params *p, dm_tensor logits, dm_tensor mask, dm_tensor w),
      (ctx, p, logits, mask, w))
TIMED(dirmoe_reg_forward, DM_FAM_ROUTER,
      (void *ctx, const dm_dirmoe_reg_params *p, dm_tensor logits, dm_tensor stats), (ctx, p, logits, stats))
TIMED(dirmoe_reg_backward, DM_FAM_ROUTER,
      (void *ctx, const dm_dirmoe_reg_params *p, dm_tensor logits, dm_tensor dlogits), (ctx, p, logits, dlogits))
TIMED(topk_route_forward, DM_FAM_ROUTER,
      (void *ctx, const dm_topk_params *p, dm_tensor logits, dm_tensor probs, dm_tensor mask, dm_tensor w),
      (ctx, p, logits, probs, mask, w))
TIMED(topk_route_backward, DM_FAM_ROUTER,
      (void *ctx, const dm_topk_params *p, dm_tensor dlogits, dm_tensor dw, dm_tensor probs, dm_tensor mask,
       dm_tensor w),
      (ctx, p, dlogits, dw, probs, mask, w))
TIMED(balance_forward, DM_FAM_ROUTER,
      (void *ctx, const dm_balance_params *p, dm_tensor logits, dm_tensor probs, dm_tensor demand,
       dm_tensor stats),
      (ctx, p, logits, probs, demand, stats))
TIMED(balance_backward, DM_FAM_ROUTER,
      (void *ctx, const dm_balance_params *p, dm_tensor logits, dm_tensor probs, dm_tensor demand,
       dm_tensor dlogits),
      (ctx, p, logits, probs, demand, dlogits))
TIMED(xent_forward, DM_FAM_LOSS,
      (void *ctx, int n, int v, dm_tensor losses, dm_tensor probs, dm_tensor logits, dm_tensor targets),
      (ctx, n, v, losses, probs, logits, targets))
TIMED(xent_backward, DM_FAM_LOSS,
      (void *ctx, int n, int v, float scale, dm_tensor dlogits, dm_tensor probs, dm_tensor targets),
      (ctx, n, v, scale, dlogits, probs, targets))
TIMED(adamw, DM_FAM_OPTIMIZER,
      (void *ctx, size_t n, const dm_adamw_params *p, dm_tensor params, dm_tensor grads, dm_tensor m,
       dm_tensor v),
      (ctx, n, p, params, grads, m, v))

void dm_bench_timer_install(dm_backend *be, int sync_each)
{
    memset(&T, 0, sizeof T);
    T.inner = be->ops;
    T.ctx = be->ctx;
    T.sync_each = sync_each;

    /* Untimed members (alloc, free, synchronize) and any op added later pass straight through. */
    timed_ops = *be->ops;
#define SET(op) timed_ops.op = timed_##op
    SET(upload), SET(download), SET(fill), SET(copy), SET(gemm), SET(axpy), SET(scale), SET(sum_squares);
    SET(encoder_forward), SET(encoder_backward), SET(layernorm_forward), SET(layernorm_backward);
    SET(attention_forward), SET(attention_backward), SET(gelu_forward), SET(gelu_backward);
    SET(bias_forward), SET(bias_backward), SET(dispatch_build), SET(gather_forward), SET(gather_backward);
    SET(combine_forward), SET(combine_backward), SET(philox), SET(gamma_sample), SET(gamma_grad);
    SET(dirmoe_route_forward), SET(dirmoe_route_backward), SET(dirmoe_route_eval), SET(dirmoe_reg_forward);
    SET(dirmoe_reg_backward), SET(topk_route_forward), SET(topk_route_backward), SET(balance_forward);
    SET(balance_backward), SET(xent_forward), SET(xent_backward), SET(adamw);
#undef SET
    /* An optional op stays absent when the backend lacks it, so the model keeps its fallback. */
    timed_ops.bias_gelu_forward = be->ops->bias_gelu_forward ? timed_bias_gelu_forward : NULL;
    be->ops = &timed_ops;
}

void dm_bench_timer_set_model(const dm_model *model)
{
    static param_range ranges[1024];
    int n = dm_model_param_count(model);

    T.params = dm_model_params_tensor(model).buf;
    T.grads = dm_model_grads_tensor(model).buf;
    T.n_ranges = 0;
    for (int i = 0; i < n && T.n_ranges < (int)(sizeof ranges / sizeof ranges[0]); i++) {
        const dm_param_info *p = dm_model_param_at(model, i);
        ranges[T.n_ranges++] = (param_range){p->offset, p->offset + p->numel, family_of_name(p->name)};
    }
    T.ranges = ranges;
}

void dm_bench_timer_remove(dm_backend *be)
{
    if (T.inner)
        be->ops = T.inner;
    T.inner = NULL;
}

void dm_bench_timer_reset(void)
{
    memset(&T.times, 0, sizeof T.times);
}

void dm_bench_timer_read(dm_bench_times *out)
{
    *out = T.times;
}
