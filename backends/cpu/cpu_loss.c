/* cpu backend: load-balancing and z-loss of the baseline routers, and softmax cross-entropy. */
#include "config.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "cpu_ops.h"

/* Tokens per partial sum of the balance loss's batch means. */
#define BAL_CHUNK 256

/* log-sum-exp of the first E entries of a logits row, in double. */
static double row_logsumexp(const float *s, int E)
{
    float mx = s[0];
    for (int e = 1; e < E; e++)
        mx = s[e] > mx ? s[e] : mx;
    double sum = 0.0;
    for (int e = 0; e < E; e++)
        sum += exp((double)s[e] - mx);
    return mx + log(sum);
}

static dm_status check_balance(cpu_ctx *cx, const dm_balance_params *p)
{
    if (p->n_tokens < 0 || p->n_expert < 1 || p->k < 1 || p->logits_stride < p->n_expert)
        return cpu_fail(cx, DM_ERR_INVALID, "balance: invalid sizes N=%d E=%d k=%d stride=%d",
                        p->n_tokens, p->n_expert, p->k, p->logits_stride);
    return DM_OK;
}

dm_status cpu_balance_forward(void *ctx, const dm_balance_params *p, dm_tensor logits,
                              dm_tensor probs, dm_tensor demand, dm_tensor stats)
{
    cpu_ctx *cx = ctx;
    dm_status st = check_balance(cx, p);
    if (st)
        return st;

    int n = p->n_tokens, E = p->n_expert;
    float *out = f32(stats);
    if (n == 0) {
        out[DM_BAL_LOSS] = out[DM_BAL_ZLOSS] = 0.0f;
        return DM_OK;
    }
    size_t width = (size_t)E + 1;
    size_t nchunks = cpu_nchunks((size_t)n, BAL_CHUNK);
    double *part = cpu_reduce_scratch(cx, nchunks * width);
    if (!part)
        return cpu_fail(cx, DM_ERR_NOMEM, "balance: cannot allocate %zu partial sums", nchunks * width);

    const float *lp = f32(logits), *pp = f32(probs);
    const int32_t *dp = i32(demand);

    /* Per chunk: sum_t p_te for each e, and sum_t lse_t^2. */
#pragma omp parallel for num_threads(cx->nthreads) schedule(static)
    for (size_t ch = 0; ch < nchunks; ch++) {
        double *acc = part + ch * width;
        int lo = (int)(ch * BAL_CHUNK);
        int hi = lo + BAL_CHUNK < n ? lo + BAL_CHUNK : n;

        memset(acc, 0, width * sizeof *acc);
        for (int t = lo; t < hi; t++) {
            for (int e = 0; e < E; e++)
                acc[e] += pp[(size_t)t * E + e];
            double lse = row_logsumexp(lp + (size_t)t * p->logits_stride, E);
            acc[E] += lse * lse;
        }
    }

    double balance = 0.0, zsum = 0.0;
    double psum[E];
    for (int e = 0; e < E; e++)
        psum[e] = 0.0;
    for (size_t ch = 0; ch < nchunks; ch++) {
        for (int e = 0; e < E; e++)
            psum[e] += part[ch * width + e];
        zsum += part[ch * width + E];
    }
    for (int e = 0; e < E; e++) {
        double f = (double)dp[e] / ((double)n * p->k);
        balance += f * (psum[e] / n);
    }

    out[DM_BAL_LOSS] = (float)(E * balance);
    out[DM_BAL_ZLOSS] = (float)(zsum / n);
    return DM_OK;
}

dm_status cpu_balance_backward(void *ctx, const dm_balance_params *p, dm_tensor logits,
                               dm_tensor probs, dm_tensor demand, dm_tensor dlogits)
{
    cpu_ctx *cx = ctx;
    dm_status st = check_balance(cx, p);
    if (st || p->n_tokens == 0)
        return st;

    int n = p->n_tokens, E = p->n_expert;
    const float *lp = f32(logits), *pp = f32(probs);
    const int32_t *dp = i32(demand);
    float *dlp = f32(dlogits);
    double f[E];
    for (int e = 0; e < E; e++)
        f[e] = (double)dp[e] / ((double)n * p->k);
    int want_z = p->coef_z != 0.0;

    /* balance = E sum_e f_e mean_t p_te with f fixed: ds_te = (E/N) p_te (f_e - sum_j p_tj f_j).
     * z-loss = mean_t lse_t^2: ds_te = 2 lse_t p_te / N. */
#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (n >= 64)
    for (int t = 0; t < n; t++) {
        const float *pr = pp + (size_t)t * E;
        float *ds = dlp + (size_t)t * p->logits_stride;

        double pf = 0.0;
        for (int e = 0; e < E; e++)
            pf += pr[e] * f[e];
        double lse = want_z ? row_logsumexp(lp + (size_t)t * p->logits_stride, E) : 0.0;
        for (int e = 0; e < E; e++) {
            double g = p->coef_balance * E * pr[e] * (f[e] - pf) + p->coef_z * 2.0 * lse * pr[e];
            ds[e] += (float)(g / n);
        }
    }
    return DM_OK;
}

dm_status cpu_xent_forward(void *ctx, int n, int v, dm_tensor losses, dm_tensor probs,
                           dm_tensor logits, dm_tensor targets)
{
    cpu_ctx *cx = ctx;
    const int32_t *tg = i32(targets);

    for (int i = 0; i < n; i++)
        if (tg[i] < 0 || tg[i] >= v)
            return cpu_fail(cx, DM_ERR_INVALID, "xent: target %d of row %d outside [0, %d)", tg[i], i, v);

    float *lossp = f32(losses), *pp = f32(probs);
    const float *lp = f32(logits);

#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (n >= 16)
    for (int i = 0; i < n; i++) {
        const float *x = lp + (size_t)i * v;
        float *pr = pp + (size_t)i * v;

        float mx = x[0];
        for (int j = 1; j < v; j++)
            mx = x[j] > mx ? x[j] : mx;
        double sum = 0.0;
        for (int j = 0; j < v; j++) {
            pr[j] = expf(x[j] - mx);
            sum += pr[j];
        }
        float inv = (float)(1.0 / sum);
        for (int j = 0; j < v; j++)
            pr[j] *= inv;
        lossp[i] = (float)(log(sum) - ((double)x[tg[i]] - mx));
    }
    return DM_OK;
}

dm_status cpu_xent_backward(void *ctx, int n, int v, float scale, dm_tensor dlogits,
                            dm_tensor probs, dm_tensor targets)
{
    cpu_ctx *cx = ctx;
    float *dp = f32(dlogits);
    const float *pp = f32(probs);
    const int32_t *tg = i32(targets);

    /* dlogits may alias probs: each element is read before it is written. */
#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (n >= 16)
    for (int i = 0; i < n; i++) {
        float *d = dp + (size_t)i * v;
        const float *pr = pp + (size_t)i * v;
        for (int j = 0; j < v; j++)
            d[j] = scale * (pr[j] - (j == tg[i] ? 1.0f : 0.0f));
    }
    return DM_OK;
}
