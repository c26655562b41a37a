/*
 * cpu backend: random numbers, Gamma sampling and gradients, and the DirMoE
 * and top-k routers. Every random draw goes through the shared functions of
 * dm_math.h with the counter layout of dirmoe/philox.h, so the words and the
 * sampler's decisions match the reference backend bit for bit. Token-level
 * work runs one token per iteration; batch means use fixed chunks of tokens
 * added in order.
 */
#include "config.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "cpu_ops.h"
#include "dirmoe/philox.h"
#include "dm_math.h"

/* Tokens per partial sum of the regularisers' batch means. */
#define REG_CHUNK 256

dm_status cpu_philox(void *ctx, size_t n, uint64_t seed, uint32_t index_base, uint32_t attempt,
                     uint32_t layer, uint32_t purpose, uint32_t step, dm_tensor out)
{
    cpu_ctx *cx = ctx;
    uint32_t *words = u32(out);

#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (n >= 4096)
    for (size_t i = 0; i < n; i++) {
        dm_philox_block blk = dm_philox_at(seed, index_base + (uint32_t)i, attempt, layer, purpose, step);
        memcpy(words + 4 * i, blk.w, sizeof blk.w);
    }
    return DM_OK;
}

dm_status cpu_gamma_sample(void *ctx, size_t n, const dm_rng_site *rng, dm_tensor log_g,
                           dm_tensor alpha, dm_tensor fallbacks)
{
    cpu_ctx *cx = ctx;
    float *lg = f32(log_g);
    const float *ap = f32(alpha);
    unsigned long exhausted = 0;

#pragma omp parallel for num_threads(cx->nthreads) schedule(static) reduction(+ : exhausted) if (n >= 1024)
    for (size_t i = 0; i < n; i++) {
        int fb = 0;
        lg[i] = dm_gamma_sample_logf(ap[i], rng->seed, rng->token_base + (uint32_t)i, rng->layer,
                                     rng->step, &fb);
        exhausted += (unsigned long)fb;
    }
    u32(fallbacks)[0] += (uint32_t)exhausted;
    return DM_OK;
}

dm_status cpu_gamma_grad(void *ctx, size_t n, dm_tensor out, dm_tensor alpha, dm_tensor log_g)
{
    cpu_ctx *cx = ctx;
    float *op = f32(out);
    const float *ap = f32(alpha);
    const float *lg = f32(log_g);

#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (n >= 256)
    for (size_t i = 0; i < n; i++)
        op[i] = (float)dm_gamma_dlogg_dalpha(ap[i], lg[i]);
    return DM_OK;
}

static dm_status check_dirmoe(cpu_ctx *cx, const dm_dirmoe_params *p)
{
    if (p->n_tokens < 0 || p->n_expert < 1 || p->k_max < 1 || p->k_max > p->n_expert)
        return cpu_fail(cx, DM_ERR_INVALID, "dirmoe routing: invalid sizes N=%d E=%d k_max=%d",
                        p->n_tokens, p->n_expert, p->k_max);
    if (!(p->tau > 0.0f) || !(p->alpha_min > 0.0f) || !(p->alpha_max > p->alpha_min))
        return cpu_fail(cx, DM_ERR_INVALID, "dirmoe routing: invalid tau=%g alpha_min=%g alpha_max=%g",
                        p->tau, p->alpha_min, p->alpha_max);
    return DM_OK;
}

/* alpha = min(softplus(c) + alpha_min, alpha_max) in double, as the reference computes it;
 * *dalpha_dc is sigmoid(c), or 0 where the upper clamp binds. */
static inline double concentration(double c, double alpha_min, double alpha_max, double *dalpha_dc)
{
    double a = dm_softplus(c) + alpha_min;

    if (a >= alpha_max) {
        *dalpha_dc = 0.0;
        return alpha_max;
    }
    *dalpha_dc = dm_sigmoid(c);
    return a;
}

/* Rank of v[e] among the entries with keep[j] set: how many are larger, ties to the lower index. */
static int rank_among(const double *v, const int32_t *keep, int n, int e)
{
    int rank = 0;
    for (int j = 0; j < n; j++)
        if (keep[j] && j != e && (v[j] > v[e] || (v[j] == v[e] && j < e)))
            rank++;
    return rank;
}

/* Writes w = softmax of v over the entries with sel set (0 elsewhere), in double. */
static void masked_softmax(const double *v, const int32_t *sel, int n, float *w)
{
    double vmax = -INFINITY, sum = 0.0;

    for (int e = 0; e < n; e++)
        if (sel[e] && v[e] > vmax)
            vmax = v[e];
    for (int e = 0; e < n; e++)
        if (sel[e])
            sum += exp(v[e] - vmax);
    for (int e = 0; e < n; e++)
        w[e] = sel[e] ? (float)(exp(v[e] - vmax) / sum) : 0.0f;
}

/* Per-thread scratch of the per-token router loops: 3 double arrays and 2 int arrays of E. */
static dm_status reserve_token_scratch(cpu_ctx *cx, int E)
{
    return cpu_thread_scratch_reserve(cx, 8 * (size_t)E);
}

/*
 * The gate's decision variable s + l and every value the decisions depend on
 * are computed in double, as in the reference backend, so the hard mask and
 * the ranks agree with it except within rounding of a threshold.
 */
dm_status cpu_dirmoe_route_forward(void *ctx, const dm_dirmoe_params *p, dm_tensor logits,
                                   dm_tensor u, dm_tensor log_g, dm_tensor zt, dm_tensor alpha,
                                   dm_tensor mask, dm_tensor w, dm_tensor fallbacks)
{
    cpu_ctx *cx = ctx;
    dm_status st = check_dirmoe(cx, p);
    if (st || (st = reserve_token_scratch(cx, p->n_expert)))
        return st;

    int n = p->n_tokens, E = p->n_expert;
    const float *lp = f32(logits);
    float *up = f32(u), *lgp = f32(log_g), *ztp = f32(zt), *ap = f32(alpha), *wp = f32(w);
    int32_t *mp = i32(mask);
    int soft = p->selection == DM_SELECTION_SOFT;
    unsigned long exhausted = 0;

#pragma omp parallel for num_threads(cx->nthreads) schedule(static) reduction(+ : exhausted) if (n >= 64)
    for (int t = 0; t < n; t++) {
        double *score = (double *)(void *)cx->thread[omp_get_thread_num()].mem;
        double *logit = score + E;
        int32_t *sel = (int32_t *)(void *)(logit + E);
        int32_t *keep = sel + E;
        const float *s = lp + (size_t)t * 2 * E;
        const float *c = s + E;
        size_t row = (size_t)t * E;
        uint32_t index0 = (p->rng.token_base + (uint32_t)t) * (uint32_t)E;

        /* Concentrations, logistic noise l = log u - log(1 - u), relaxed gate zt. */
        for (int e = 0; e < E; e++) {
            double unused;
            ap[row + e] = (float)concentration(c[e], p->alpha_min, p->alpha_max, &unused);
            if (!p->fixed_noise)
                up[row + e] = dm_select_uniform(p->rng.seed, index0 + (uint32_t)e, p->rng.layer, p->rng.step);
            double ue = up[row + e];
            score[e] = (double)s[e] + (log(ue) - log1p(-ue));
            ztp[row + e] = (float)dm_sigmoid(score[e] / p->tau);
        }

        /* Mask: every expert in soft mode; otherwise 1[s + l > 0], at least one
         * (the largest s + l) and at most k_max (the k_max largest). */
        int count = 0;
        for (int e = 0; e < E; e++) {
            sel[e] = soft || score[e] > 0.0;
            count += sel[e];
        }
        if (count == 0) {
            int best = 0;
            for (int e = 1; e < E; e++)
                if (score[e] > score[best])
                    best = e;
            sel[best] = 1;
        } else if (count > p->k_max && !soft) {
            for (int e = 0; e < E; e++)
                keep[e] = sel[e] && rank_among(score, sel, E, e) < p->k_max;
            memcpy(sel, keep, (size_t)E * sizeof *sel);
        }
        memcpy(mp + row, sel, (size_t)E * sizeof *sel);

        /* Contribution noise log g for the selected experts, 0 for the others when drawn. */
        if (!p->fixed_noise) {
            for (int e = 0; e < E; e++) {
                if (!sel[e]) {
                    lgp[row + e] = 0.0f;
                    continue;
                }
                int fb = 0;
                lgp[row + e] = dm_gamma_sample_logf(ap[row + e], p->rng.seed, index0 + (uint32_t)e,
                                                    p->rng.layer, p->rng.step, &fb);
                exhausted += (unsigned long)fb;
            }
        }

        /* w = softmax of log g over the selected set; soft mode adds log zt = -softplus(-(s + l) / tau). */
        for (int e = 0; e < E; e++) {
            logit[e] = lgp[row + e];
            if (soft)
                logit[e] -= dm_softplus(-score[e] / p->tau);
        }
        masked_softmax(logit, sel, E, wp + row);
    }
    u32(fallbacks)[0] += (uint32_t)exhausted;
    return DM_OK;
}

dm_status cpu_dirmoe_route_backward(void *ctx, const dm_dirmoe_params *p, dm_tensor dlogits,
                                    dm_tensor dw, dm_tensor logits, dm_tensor zt,
                                    dm_tensor alpha, dm_tensor log_g, dm_tensor mask,
                                    dm_tensor w)
{
    cpu_ctx *cx = ctx;
    dm_status st = check_dirmoe(cx, p);
    if (st)
        return st;

    int n = p->n_tokens, E = p->n_expert;
    float *dlp = f32(dlogits);
    const float *dwp = f32(dw), *lp = f32(logits), *ztp = f32(zt), *ap = f32(alpha), *lgp = f32(log_g);
    const float *wp = f32(w);
    const int32_t *mp = i32(mask);
    int soft = p->selection == DM_SELECTION_SOFT;

    /* ds_e = dL/dlog g_e * zt (1 - zt) / tau (hard, straight-through) or * (1 - zt) / tau (soft),
     * dc_e = dL/dlog g_e * dlog g/dalpha * sigmoid(c_e), 0 where the alpha_max clamp binds. */
#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (n >= 16)
    for (int t = 0; t < n; t++) {
        size_t row = (size_t)t * E;
        const float *c = lp + (size_t)t * 2 * E + E;
        float *ds = dlp + (size_t)t * 2 * E;
        float *dc = ds + E;

        double abar = 0.0;
        for (int e = 0; e < E; e++)
            if (mp[row + e])
                abar += (double)wp[row + e] * (double)dwp[row + e];

        for (int e = 0; e < E; e++) {
            if (!mp[row + e])
                continue;
            double dlogit = (double)wp[row + e] * ((double)dwp[row + e] - abar);
            double z = ztp[row + e];
            double gate = soft ? 1.0 - z : z * (1.0 - z);
            ds[e] += (float)(dlogit * gate / p->tau);

            double dalpha_dc;
            concentration(c[e], p->alpha_min, p->alpha_max, &dalpha_dc);
            if (dalpha_dc == 0.0)
                continue;
            double dalpha = dlogit * dm_gamma_dlogg_dalpha((double)ap[row + e], (double)lgp[row + e]);
            dc[e] += (float)(dalpha * dalpha_dc);
        }
    }
    return DM_OK;
}

dm_status cpu_dirmoe_route_eval(void *ctx, const dm_dirmoe_params *p, dm_tensor logits,
                                dm_tensor mask, dm_tensor w)
{
    cpu_ctx *cx = ctx;
    dm_status st = check_dirmoe(cx, p);
    if (st || (st = reserve_token_scratch(cx, p->n_expert)))
        return st;

    int n = p->n_tokens, E = p->n_expert;
    const float *lp = f32(logits);
    int32_t *mp = i32(mask);
    float *wp = f32(w);

#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (n >= 64)
    for (int t = 0; t < n; t++) {
        double *sv = (double *)(void *)cx->thread[omp_get_thread_num()].mem;
        double *a = sv + E;
        int32_t *all = (int32_t *)(void *)(a + E);
        const float *s = lp + (size_t)t * 2 * E;
        const float *c = s + E;
        size_t row = (size_t)t * E;

        /* Expected realised count K = sum pi + prod(1 - pi), the product as exp(-sum softplus(s)). */
        double sum_pi = 0.0, sum_softplus = 0.0;
        for (int e = 0; e < E; e++) {
            double unused;
            sv[e] = s[e];
            a[e] = concentration(c[e], p->alpha_min, p->alpha_max, &unused);
            all[e] = 1;
            sum_pi += dm_sigmoid(sv[e]);
            sum_softplus += dm_softplus(sv[e]);
        }
        int keep = (int)floor(sum_pi + exp(-sum_softplus) + 0.5);
        if (keep < 1)
            keep = 1;
        if (keep > p->k_max)
            keep = p->k_max;

        /* The `keep` largest s (ties to the lower index), weighted by alpha. */
        double asum = 0.0;
        for (int e = 0; e < E; e++) {
            mp[row + e] = rank_among(sv, all, E, e) < keep;
            if (mp[row + e])
                asum += a[e];
        }
        for (int e = 0; e < E; e++)
            wp[row + e] = mp[row + e] ? (float)(a[e] / asum) : 0.0f;
    }
    return DM_OK;
}

/* ------------------------------------------------------------------------ */
/* DirMoE regularisers                                                       */

/* Running log-sum-exp: max m and sum of exp(v - m). */
typedef struct lse_acc {
    double max;
    double sum;
} lse_acc;

static inline void lse_add(lse_acc *acc, double v)
{
    if (v <= acc->max) {
        acc->sum += exp(v - acc->max);
    } else {
        acc->sum = acc->sum * exp(acc->max - v) + 1.0;
        acc->max = v;
    }
}

static inline void lse_merge(lse_acc *acc, lse_acc other)
{
    if (other.sum == 0.0)
        return;
    if (other.max <= acc->max) {
        acc->sum += other.sum * exp(other.max - acc->max);
    } else {
        acc->sum = acc->sum * exp(acc->max - other.max) + other.sum;
        acc->max = other.max;
    }
}

/* KL(Dir(alpha) || Dir(alpha0, ..., alpha0)) of one token, in double. */
static double kl_dirichlet(const double *a, int E, double alpha0, double const_terms)
{
    double asum = 0.0;
    for (int e = 0; e < E; e++)
        asum += a[e];
    double psi_sum = dm_digamma(asum);
    double kl = dm_lgamma(asum) + const_terms;
    for (int e = 0; e < E; e++)
        kl += -dm_lgamma(a[e]) + (a[e] - alpha0) * (dm_digamma(a[e]) - psi_sum);
    return kl;
}

/* KL(q || p0) of Bernoulli variables from log q and log(1 - q), 0 log 0 taken as 0. */
static double bernoulli_kl(double log_q, double log_1mq, double log_p0, double log_1mp0)
{
    double q = exp(log_q), q1 = exp(log_1mq);
    double kl = 0.0;

    if (q > 0.0)
        kl += q * (log_q - log_p0);
    if (q1 > 0.0)
        kl += q1 * (log_1mq - log_1mp0);
    return kl;
}

/* Batch reductions of the regularisers. log_pibar and log_qbar are log means of
 * sigmoid(s_e) and sigmoid(-s_e), taken by log-sum-exp so they stay finite where
 * every term underflows. */
typedef struct reg_batch {
    double kl_b_token;    /* mean over tokens of sum_e KL(pi_e || p0) */
    double kl_d;          /* mean over tokens of KL_D */
    double kbar;          /* mean of K = sum pi + prod(1 - pi) */
} reg_batch;

/* Per chunk of REG_CHUNK tokens: 2E lse accumulators then 3 sums, as doubles. */
static dm_status reg_reduce(cpu_ctx *cx, const dm_dirmoe_reg_params *p, const float *lp,
                            int want_kl_d, double *log_pibar, double *log_qbar, reg_batch *out)
{
    int n = p->n_tokens, E = p->n_expert;
    size_t width = 4 * (size_t)E + 3;
    size_t nchunks = cpu_nchunks((size_t)n, REG_CHUNK);
    double *part = cpu_reduce_scratch(cx, nchunks * width);
    if (!part)
        return cpu_fail(cx, DM_ERR_NOMEM, "dirmoe_reg: cannot allocate %zu partial sums", nchunks * width);
    dm_status st = reserve_token_scratch(cx, E);
    if (st)
        return st;

    double const_terms = -dm_lgamma(E * p->alpha0) + E * dm_lgamma(p->alpha0);

#pragma omp parallel for num_threads(cx->nthreads) schedule(static)
    for (size_t ch = 0; ch < nchunks; ch++) {
        double *a = (double *)(void *)cx->thread[omp_get_thread_num()].mem;
        lse_acc *acc = (lse_acc *)(void *)(part + ch * width);
        double *sums = part + ch * width + 4 * (size_t)E;
        int lo = (int)(ch * REG_CHUNK);
        int hi = lo + REG_CHUNK < n ? lo + REG_CHUNK : n;

        for (int j = 0; j < 2 * E; j++) {
            acc[j].max = -INFINITY;
            acc[j].sum = 0.0;
        }
        sums[0] = sums[1] = sums[2] = 0.0;

        for (int t = lo; t < hi; t++) {
            const float *s = lp + (size_t)t * 2 * E;
            const float *c = s + E;
            double sum_pi = 0.0, sum_softplus = 0.0;

            for (int e = 0; e < E; e++) {
                double log_pi = -dm_softplus(-(double)s[e]);
                double log_1mpi = -dm_softplus((double)s[e]);
                double unused;
                lse_add(&acc[e], log_pi);
                lse_add(&acc[E + e], log_1mpi);
                sums[0] += bernoulli_kl(log_pi, log_1mpi, p->log_p0, p->log_1mp0);
                sum_pi += exp(log_pi);
                sum_softplus -= log_1mpi;
                a[e] = concentration(c[e], p->alpha_min, p->alpha_max, &unused);
            }
            sums[1] += want_kl_d ? kl_dirichlet(a, E, p->alpha0, const_terms) : 0.0;
            sums[2] += sum_pi + exp(-sum_softplus);
        }
    }

    /* Chunks in order, so the result does not depend on the thread count. */
    lse_acc tot[2 * E];
    for (int j = 0; j < 2 * E; j++) {
        tot[j].max = -INFINITY;
        tot[j].sum = 0.0;
    }
    double sums[3] = {0.0, 0.0, 0.0};
    for (size_t ch = 0; ch < nchunks; ch++) {
        const lse_acc *acc = (const lse_acc *)(const void *)(part + ch * width);
        for (int j = 0; j < 2 * E; j++)
            lse_merge(&tot[j], acc[j]);
        for (int j = 0; j < 3; j++)
            sums[j] += part[ch * width + 4 * (size_t)E + j];
    }
    for (int e = 0; e < E; e++) {
        log_pibar[e] = tot[e].max + log(tot[e].sum) - log((double)n);
        log_qbar[e] = tot[E + e].max + log(tot[E + e].sum) - log((double)n);
    }
    out->kl_b_token = sums[0] / n;
    out->kl_d = sums[1] / n;
    out->kbar = sums[2] / n;
    return DM_OK;
}

static dm_status check_reg(cpu_ctx *cx, const dm_dirmoe_reg_params *p)
{
    if (p->n_tokens < 0 || p->n_expert < 1)
        return cpu_fail(cx, DM_ERR_INVALID, "dirmoe_reg: invalid sizes N=%d E=%d", p->n_tokens, p->n_expert);
    if (!(p->alpha0 > 0.0))
        return cpu_fail(cx, DM_ERR_INVALID, "dirmoe_reg: prior concentration alpha0=%g must be positive", p->alpha0);
    return DM_OK;
}

dm_status cpu_dirmoe_reg_forward(void *ctx, const dm_dirmoe_reg_params *p, dm_tensor logits,
                                 dm_tensor stats)
{
    cpu_ctx *cx = ctx;
    dm_status st = check_reg(cx, p);
    if (st)
        return st;

    float *out = f32(stats);
    int E = p->n_expert;
    if (p->n_tokens == 0) {
        for (int i = 0; i < DM_REG_NSTATS; i++)
            out[i] = 0.0f;
        return DM_OK;
    }

    double log_pibar[E], log_qbar[E];
    reg_batch m;
    if ((st = reg_reduce(cx, p, f32(logits), 1, log_pibar, log_qbar, &m)))
        return st;

    double kl_b = 0.0;
    if (p->kl_b_mode == DM_KL_B_TOKEN) {
        kl_b = m.kl_b_token;
    } else {
        for (int e = 0; e < E; e++)
            kl_b += bernoulli_kl(log_pibar[e], log_qbar[e], p->log_p0, p->log_1mp0);
    }
    double gap = m.kbar - p->k_target;

    out[DM_REG_KL_B] = (float)kl_b;
    out[DM_REG_KL_D] = (float)m.kl_d;
    out[DM_REG_KBAR] = (float)m.kbar;
    out[DM_REG_LOSS] = (float)(p->coef_kl_b * kl_b + p->coef_kl_d * m.kl_d + p->coef_sq * gap * gap +
                               p->coef_lin * gap);
    return DM_OK;
}

/* Gradients, with pi = sigmoid(s), 1 - pi = sigmoid(-s) and N tokens:
 *   KL_B batch: ds_e = pi (1 - pi) (log(pibar_e / p0) - log((1 - pibar_e) / (1 - p0))) / N
 *   KL_B token: ds_e = pi (1 - pi) (s_e - log p0 + log(1 - p0)) / N
 *   sparsity:   ds_e = (2 coef_sq (Kbar - k) + coef_lin) pi_e ((1 - pi_e) - prod_j (1 - pi_j)) / N
 *   KL_D:       dc_e = ((alpha_e - alpha0) psi'(alpha_e) - psi'(A) sum_j (alpha_j - alpha0))
 *                      sigmoid(c_e) / N, 0 where the alpha_max clamp binds. */
dm_status cpu_dirmoe_reg_backward(void *ctx, const dm_dirmoe_reg_params *p, dm_tensor logits,
                                  dm_tensor dlogits)
{
    cpu_ctx *cx = ctx;
    dm_status st = check_reg(cx, p);
    if (st || p->n_tokens == 0)
        return st;

    int n = p->n_tokens, E = p->n_expert;
    const float *lp = f32(logits);
    float *dlp = f32(dlogits);
    double log_pibar[E], log_qbar[E];
    reg_batch m;
    if ((st = reg_reduce(cx, p, lp, 0, log_pibar, log_qbar, &m)))
        return st;

    double batch_factor[E];
    for (int e = 0; e < E; e++)
        batch_factor[e] = (log_pibar[e] - p->log_p0) - (log_qbar[e] - p->log_1mp0);
    double dloss_dkbar = 2.0 * p->coef_sq * (m.kbar - p->k_target) + p->coef_lin;
    int token_mode = p->kl_b_mode == DM_KL_B_TOKEN;
    int want_kl_d = p->coef_kl_d != 0.0;

#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (n >= 64)
    for (int t = 0; t < n; t++) {
        double *a = (double *)(void *)cx->thread[omp_get_thread_num()].mem;
        double *dadc = a + E;
        const float *s = lp + (size_t)t * 2 * E;
        const float *c = s + E;
        float *ds = dlp + (size_t)t * 2 * E;
        float *dc = ds + E;

        double sum_softplus = 0.0;
        for (int e = 0; e < E; e++)
            sum_softplus += dm_softplus((double)s[e]);
        double prod_1mpi = exp(-sum_softplus);

        for (int e = 0; e < E; e++) {
            double se = s[e];
            double pi = dm_sigmoid(se);
            double one_minus_pi = dm_sigmoid(-se);
            double pi_var = pi * one_minus_pi;
            double dkl_b = token_mode ? pi_var * (se - p->log_p0 + p->log_1mp0) : pi_var * batch_factor[e];
            double dk = pi * (one_minus_pi - prod_1mpi);
            ds[e] += (float)((p->coef_kl_b * dkl_b + dloss_dkbar * dk) / n);
        }

        if (!want_kl_d)
            continue;

        double asum = 0.0, excess = 0.0;
        for (int e = 0; e < E; e++) {
            a[e] = concentration(c[e], p->alpha_min, p->alpha_max, &dadc[e]);
            asum += a[e];
            excess += a[e] - p->alpha0;
        }
        double trigamma_sum = dm_trigamma(asum);
        for (int e = 0; e < E; e++) {
            double dkl_d = (a[e] - p->alpha0) * dm_trigamma(a[e]) - trigamma_sum * excess;
            dc[e] += (float)(p->coef_kl_d * dkl_d * dadc[e] / n);
        }
    }
    return DM_OK;
}

/* ------------------------------------------------------------------------ */
/* Top-k and Switch                                                          */

dm_status cpu_topk_route_forward(void *ctx, const dm_topk_params *p, dm_tensor logits,
                                 dm_tensor probs, dm_tensor mask, dm_tensor w)
{
    cpu_ctx *cx = ctx;
    int n = p->n_tokens, E = p->n_expert, k = p->k;

    if (n < 0 || E < 1 || k < 1 || k > E)
        return cpu_fail(cx, DM_ERR_INVALID, "topk routing: k=%d outside [1, %d] (N=%d)", k, E, n);
    dm_status st = reserve_token_scratch(cx, E);
    if (st)
        return st;

    const float *lp = f32(logits);
    float *pp = f32(probs), *wp = f32(w);
    int32_t *mp = i32(mask);

#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (n >= 64)
    for (int t = 0; t < n; t++) {
        double *sv = (double *)(void *)cx->thread[omp_get_thread_num()].mem;
        double *prob = sv + E;
        int32_t *all = (int32_t *)(void *)(prob + E);
        size_t row = (size_t)t * E;

        /* p = softmax(s) in double. */
        double smax = -INFINITY, sum = 0.0;
        for (int e = 0; e < E; e++) {
            sv[e] = lp[row + e];
            all[e] = 1;
            smax = sv[e] > smax ? sv[e] : smax;
        }
        for (int e = 0; e < E; e++) {
            prob[e] = exp(sv[e] - smax);
            sum += prob[e];
        }
        for (int e = 0; e < E; e++) {
            prob[e] /= sum;
            pp[row + e] = (float)prob[e];
        }

        /* Keep the k largest s (the order of p without its rounding), ties to the lower index. */
        double kept = 0.0;
        for (int e = 0; e < E; e++) {
            mp[row + e] = rank_among(sv, all, E, e) < k;
            if (mp[row + e])
                kept += prob[e];
        }
        for (int e = 0; e < E; e++) {
            double we = 0.0;
            if (mp[row + e])
                we = p->renormalize ? prob[e] / kept : prob[e];
            wp[row + e] = (float)we;
        }
    }
    return DM_OK;
}

/* Renormalised (w = softmax over the kept s): ds_e = w_e (dw_e - sum_kept w dw) on kept e.
 * Switch (w = p on the kept): ds_i = p_i (g_i - sum_j p_j g_j), g = dw on kept, 0 elsewhere. */
dm_status cpu_topk_route_backward(void *ctx, const dm_topk_params *p, dm_tensor dlogits,
                                  dm_tensor dw, dm_tensor probs, dm_tensor mask, dm_tensor w)
{
    cpu_ctx *cx = ctx;
    int n = p->n_tokens, E = p->n_expert;
    float *dlp = f32(dlogits);
    const float *dwp = f32(dw), *pp = f32(probs), *wp = f32(w);
    const int32_t *mp = i32(mask);

#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (n >= 64)
    for (int t = 0; t < n; t++) {
        size_t row = (size_t)t * E;

        if (p->renormalize) {
            double gbar = 0.0;
            for (int e = 0; e < E; e++)
                if (mp[row + e])
                    gbar += (double)wp[row + e] * (double)dwp[row + e];
            for (int e = 0; e < E; e++)
                if (mp[row + e])
                    dlp[row + e] += (float)((double)wp[row + e] * ((double)dwp[row + e] - gbar));
        } else {
            double gbar = 0.0;
            for (int e = 0; e < E; e++)
                if (mp[row + e])
                    gbar += (double)pp[row + e] * (double)dwp[row + e];
            for (int e = 0; e < E; e++) {
                double g = mp[row + e] ? (double)dwp[row + e] : 0.0;
                dlp[row + e] += (float)((double)pp[row + e] * (g - gbar));
            }
        }
    }
    return DM_OK;
}
