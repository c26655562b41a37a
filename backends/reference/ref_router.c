/*
 * Reference router kernels: Gamma sampling and its implicit gradient, the
 * DirMoE training forward/backward and evaluation routing, and top-k / Switch
 * routing. One token is handled at a time, over plain row-major arrays.
 *
 * Intermediate values are computed in double whatever ref_real is, so the
 * float build is the float rounding of the double computation. Decisions
 * (the hard mask, top-k ranks) are made on those double values; a float
 * backend may flip a decision within about 1e-5 of its threshold.
 *
 * Ties between equal values go to the lower expert index everywhere.
 */
#include "config.h"

#include <math.h>

#include "dirmoe/philox.h"
#include "dm_math.h"
#include "ref_ops.h"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */

/* Concentration alpha = min(softplus(c) + alpha_min, alpha_max). *clamped is
 * set where the upper clamp binds, because the gradient w.r.t. c is 0 there. */
static double concentration(double c, double alpha_min, double alpha_max, int *clamped)
{
    double a = dm_softplus(c) + alpha_min;

    *clamped = a >= alpha_max;
    return *clamped ? alpha_max : a;
}

/* Returns the rank of v[e] among the experts with eligible[j] != 0, in
 * descending order with ties to the lower index (0 for the largest). */
static int rank_among(const double *v, const int *eligible, int n_expert, int e)
{
    int rank = 0;

    for (int j = 0; j < n_expert; j++) {
        if (j == e || !eligible[j])
            continue;
        if (v[j] > v[e] || (v[j] == v[e] && j < e))
            rank++;
    }
    return rank;
}

/* Returns the index of the largest v[e], ties to the lower index. */
static int argmax(const double *v, int n_expert)
{
    int best = 0;

    for (int e = 1; e < n_expert; e++)
        if (v[e] > v[best])
            best = e;
    return best;
}

/* Returns the Philox element index (token_base + t) * E + e of token t of this
 * call and expert e, in 32-bit arithmetic as the counter layout defines it. */
static uint32_t element_index(const dm_rng_site *rng, int t, int n_expert, int e)
{
    return (rng->token_base + (uint32_t)t) * (uint32_t)n_expert + (uint32_t)e;
}

/* Writes w[e] = softmax of v over the experts with sel[e] != 0, 0 elsewhere.
 * At least one expert must be selected. */
static void masked_softmax(const double *v, const int *sel, int n_expert, ref_real *w)
{
    double vmax = -INFINITY;
    double sum = 0.0;

    for (int e = 0; e < n_expert; e++)
        if (sel[e] && v[e] > vmax)
            vmax = v[e];
    for (int e = 0; e < n_expert; e++)
        if (sel[e])
            sum += exp(v[e] - vmax);
    for (int e = 0; e < n_expert; e++)
        w[e] = sel[e] ? (ref_real)(exp(v[e] - vmax) / sum) : (ref_real)0;
}

/* ------------------------------------------------------------------------ */
/* Gamma sampling and the implicit gradient                                  */

void REF(gamma_sample)(size_t n, const dm_rng_site *rng, ref_real *log_g, const ref_real *alpha,
                       uint32_t *fallbacks)
{
    for (size_t i = 0; i < n; i++) {
        int fallback = 0;
        uint32_t index = rng->token_base + (uint32_t)i;

        log_g[i] = (ref_real)dm_gamma_sample_logf((float)alpha[i], rng->seed, index, rng->layer,
                                                  rng->step, &fallback);
        if (fallback && fallbacks)
            fallbacks[0]++;
    }
}

void REF(gamma_grad)(size_t n, ref_real *out, const ref_real *alpha, const ref_real *log_g)
{
    for (size_t i = 0; i < n; i++)
        out[i] = (ref_real)dm_gamma_dlogg_dalpha((double)alpha[i], (double)log_g[i]);
}

/* ------------------------------------------------------------------------ */
/* DirMoE training forward                                                   */

/* Writes the hard selection sel (E) of one token from score = s + l:
 * m_e = 1[score_e > 0], then the at-least-one rule (argmax score) and the
 * k_max rule (keep the k_max largest scores). */
static void select_hard(const double *score, int n_expert, int k_max, int *sel)
{
    int n_sel = 0;

    for (int e = 0; e < n_expert; e++) {
        sel[e] = score[e] > 0.0;
        n_sel += sel[e];
    }

    if (n_sel == 0) {
        sel[argmax(score, n_expert)] = 1;
        return;
    }

    if (n_sel > k_max) {
        int keep[n_expert];
        for (int e = 0; e < n_expert; e++)
            keep[e] = sel[e] && rank_among(score, sel, n_expert, e) < k_max;
        for (int e = 0; e < n_expert; e++)
            sel[e] = keep[e];
    }
}

/* Shapes: logits (N,2E) with rows [s | c], then u, log_g, zt, alpha, w (N,E)
 * and mask (N,E) int32. */
void REF(dirmoe_route_forward)(const dm_dirmoe_params *p, const ref_real *logits, ref_real *u,
                               ref_real *log_g, ref_real *zt, ref_real *alpha, int32_t *mask,
                               ref_real *w, uint32_t *fallbacks)
{
    const int E = p->n_expert;
    const int soft = p->selection == DM_SELECTION_SOFT;

    for (int t = 0; t < p->n_tokens; t++) {
        const ref_real *s = logits + (size_t)t * 2 * E;
        const ref_real *c = s + E;
        const size_t row = (size_t)t * E;
        double score[E];   /* s + l: the gate's decision variable */
        double weight_logit[E];
        int sel[E];

        /* Concentrations, selection noise and the relaxed gate. */
        for (int e = 0; e < E; e++) {
            int clamped;
            alpha[row + e] = (ref_real)concentration(c[e], p->alpha_min, p->alpha_max, &clamped);

            if (!p->fixed_noise)
                u[row + e] = (ref_real)dm_select_uniform(p->rng.seed, element_index(&p->rng, t, E, e),
                                                         p->rng.layer, p->rng.step);
            double ue = u[row + e];
            double logistic = log(ue) - log1p(-ue);

            score[e] = (double)s[e] + logistic;
            zt[row + e] = (ref_real)dm_sigmoid(score[e] / p->tau);
        }

        /* Mask: every expert in soft mode, the hard rules otherwise. */
        if (soft) {
            for (int e = 0; e < E; e++)
                sel[e] = 1;
        } else {
            select_hard(score, E, p->k_max, sel);
        }
        for (int e = 0; e < E; e++)
            mask[row + e] = sel[e];

        /* Contribution noise log g for the selected experts (0 for the others when drawn). */
        for (int e = 0; e < E; e++) {
            if (p->fixed_noise)
                continue;
            if (!sel[e]) {
                log_g[row + e] = 0;
                continue;
            }
            int fallback = 0;
            log_g[row + e] = (ref_real)dm_gamma_sample_logf((float)alpha[row + e], p->rng.seed,
                                                            element_index(&p->rng, t, E, e),
                                                            p->rng.layer, p->rng.step, &fallback);
            if (fallback && fallbacks)
                fallbacks[0]++;
        }

        /* Weights: softmax of log g over the selected set, a Dirichlet draw on it.
         * Soft mode adds log zt = -softplus(-(s + l) / tau) for every expert. */
        for (int e = 0; e < E; e++) {
            weight_logit[e] = (double)log_g[row + e];
            if (soft)
                weight_logit[e] -= dm_softplus(-score[e] / p->tau);
        }
        masked_softmax(weight_logit, sel, E, w + row);
    }
}

/* ------------------------------------------------------------------------ */
/* DirMoE training backward                                                  */

/* dlogits (N,2E) += gradient through w given dw (N,E). Hard mode is the
 * straight-through estimator: ds_e = dL/dlog g_e * zt_e (1 - zt_e) / tau for
 * selected e. Soft mode is exact: w = softmax(log zt + log g), so
 * ds_e = dL/dlog g_e * (1 - zt_e) / tau for every e. In both modes
 * dalpha_e = dL/dlog g_e * dlog g/dalpha (implicit gradient) and
 * dc_e = dalpha_e * sigmoid(c_e), 0 where the alpha_max clamp binds. */
void REF(dirmoe_route_backward)(const dm_dirmoe_params *p, ref_real *dlogits, const ref_real *dw,
                                const ref_real *logits, const ref_real *zt, const ref_real *alpha,
                                const ref_real *log_g, const int32_t *mask, const ref_real *w)
{
    const int E = p->n_expert;
    const int soft = p->selection == DM_SELECTION_SOFT;

    for (int t = 0; t < p->n_tokens; t++) {
        const size_t row = (size_t)t * E;
        const ref_real *c = logits + (size_t)t * 2 * E + E;
        ref_real *ds = dlogits + (size_t)t * 2 * E;
        ref_real *dc = ds + E;

        /* abar = sum over the weighted experts of w_e a_e, with a = dw. */
        double abar = 0.0;
        for (int e = 0; e < E; e++)
            if (mask[row + e])
                abar += (double)w[row + e] * (double)dw[row + e];

        for (int e = 0; e < E; e++) {
            if (!mask[row + e])
                continue;

            /* Gradient w.r.t. the softmax input log g_e (and log zt_e in soft mode). */
            double dlogit = (double)w[row + e] * ((double)dw[row + e] - abar);
            double z = zt[row + e];
            double gate = soft ? (1.0 - z) : z * (1.0 - z);
            ds[e] += (ref_real)(dlogit * gate / p->tau);

            int clamped;
            concentration(c[e], p->alpha_min, p->alpha_max, &clamped);
            if (clamped)
                continue;
            double dalpha = dlogit * dm_gamma_dlogg_dalpha((double)alpha[row + e], (double)log_g[row + e]);
            dc[e] += (ref_real)(dalpha * dm_sigmoid(c[e]));
        }
    }
}

/* ------------------------------------------------------------------------ */
/* DirMoE evaluation routing                                                 */

/* Keeps the n = clamp(floor(K + 0.5), 1, k_max) largest s, K = sum pi + prod(1 - pi)
 * the expected realised count, with weights alpha / sum of the kept alpha. */
void REF(dirmoe_route_eval)(const dm_dirmoe_params *p, const ref_real *logits, int32_t *mask,
                            ref_real *w)
{
    const int E = p->n_expert;

    for (int t = 0; t < p->n_tokens; t++) {
        const ref_real *s = logits + (size_t)t * 2 * E;
        const ref_real *c = s + E;
        const size_t row = (size_t)t * E;
        double sv[E], a[E];
        int all[E];

        /* K = sum pi + prod(1 - pi), the product as exp(-sum softplus(s)). */
        double sum_pi = 0.0, sum_softplus = 0.0;
        for (int e = 0; e < E; e++) {
            int clamped;
            sv[e] = s[e];
            a[e] = concentration(c[e], p->alpha_min, p->alpha_max, &clamped);
            all[e] = 1;
            sum_pi += dm_sigmoid(sv[e]);
            sum_softplus += dm_softplus(sv[e]);
        }
        double expected = sum_pi + exp(-sum_softplus);

        int n_keep = (int)floor(expected + 0.5);
        if (n_keep < 1)
            n_keep = 1;
        if (n_keep > p->k_max)
            n_keep = p->k_max;

        double sum_alpha = 0.0;
        for (int e = 0; e < E; e++) {
            mask[row + e] = rank_among(sv, all, E, e) < n_keep;
            if (mask[row + e])
                sum_alpha += a[e];
        }
        for (int e = 0; e < E; e++)
            w[row + e] = mask[row + e] ? (ref_real)(a[e] / sum_alpha) : (ref_real)0;
    }
}

/* ------------------------------------------------------------------------ */
/* Top-k and Switch routing                                                  */

/* Writes probs = softmax(s), mask (N,E) int32 with the k largest s, and w (N,E),
 * from logits s (N,E). */
void REF(topk_route_forward)(const dm_topk_params *p, const ref_real *logits, ref_real *probs,
                             int32_t *mask, ref_real *w)
{
    const int E = p->n_expert;

    for (int t = 0; t < p->n_tokens; t++) {
        const size_t row = (size_t)t * E;
        double sv[E], prob[E];
        int all[E];

        /* p = softmax(s), in double with the maximum subtracted. */
        double smax = -INFINITY, sum = 0.0;
        for (int e = 0; e < E; e++) {
            sv[e] = logits[row + e];
            all[e] = 1;
            if (sv[e] > smax)
                smax = sv[e];
        }
        for (int e = 0; e < E; e++)
            sum += exp(sv[e] - smax);
        for (int e = 0; e < E; e++) {
            prob[e] = exp(sv[e] - smax) / sum;
            probs[row + e] = (ref_real)prob[e];
        }

        /* Keep the top k (ranked on s, the same order as p without its rounding). */
        double kept_sum = 0.0;
        for (int e = 0; e < E; e++) {
            mask[row + e] = rank_among(sv, all, E, e) < p->k;
            if (mask[row + e])
                kept_sum += prob[e];
        }
        for (int e = 0; e < E; e++) {
            double weight = 0.0;
            if (mask[row + e])
                weight = p->renormalize ? prob[e] / kept_sum : prob[e];
            w[row + e] = (ref_real)weight;
        }
    }
}

/* Renormalised (w = softmax over the kept s): ds_e = w_e (g_e - sum_kept w g) for kept e.
 * Switch (w = p on the kept): ds_i = p_i (g_i - sum_j g_j p_j) for every i,
 * with g = dw on the kept experts and 0 elsewhere. */
void REF(topk_route_backward)(const dm_topk_params *p, ref_real *dlogits, const ref_real *dw,
                              const ref_real *probs, const int32_t *mask, const ref_real *w)
{
    const int E = p->n_expert;

    for (int t = 0; t < p->n_tokens; t++) {
        const size_t row = (size_t)t * E;

        if (p->renormalize) {
            double gbar = 0.0;
            for (int e = 0; e < E; e++)
                if (mask[row + e])
                    gbar += (double)w[row + e] * (double)dw[row + e];
            for (int e = 0; e < E; e++)
                if (mask[row + e])
                    dlogits[row + e] += (ref_real)((double)w[row + e] * ((double)dw[row + e] - gbar));
        } else {
            double gbar = 0.0;
            for (int e = 0; e < E; e++)
                if (mask[row + e])
                    gbar += (double)probs[row + e] * (double)dw[row + e];
            for (int e = 0; e < E; e++) {
                double g = mask[row + e] ? (double)dw[row + e] : 0.0;
                dlogits[row + e] += (ref_real)((double)probs[row + e] * (g - gbar));
            }
        }
    }
}
