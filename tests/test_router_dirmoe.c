/*
 * Reference DirMoE routing: the training forward against an independent
 * implementation of its rules, the exact soft-mode gradient and the implicit
 * alpha gradient by finite differences (double build), the hard mode's
 * straight-through gradient against the formulas written out here, the
 * evaluation routing, the Philox counter layout of the noise, and edge cases.
 */
#include "config.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define REF_REAL double
#define REF_DOUBLE
#include "ref_ops.h"

#include "dm_math.h"
#include "router_util.h"

#define FD_TOL 1e-6

/* ------------------------------------------------------------------------ */
/* Independent formulas                                                      */

static double softplus_ref(double x)
{
    return x > 30.0 ? x + log1p(exp(-x)) : log1p(exp(x));
}

static double sigmoid_ref(double x)
{
    return x >= 0 ? 1.0 / (1.0 + exp(-x)) : exp(x) / (1.0 + exp(x));
}

static double alpha_ref(double c, double alpha_min, double alpha_max)
{
    return fmin(softplus_ref(c) + alpha_min, alpha_max);
}

/* Solves log P(alpha, y) = target for y = log g by Newton's method from y0.
 * d log P / dy = g f(g; alpha) / P = exp(alpha y - e^y - lgamma(alpha) - log P). */
static double inverse_log_gamma_p(double alpha, double target, double y0)
{
    double y = y0, step = INFINITY;

    for (int it = 0; it < 100; it++) {
        double log_p = dm_log_gamma_p(alpha, y);
        double slope = exp(alpha * y - exp(y) - lgamma(alpha) - log_p);
        step = (log_p - target) / slope;
        y -= step;
        if (fabs(step) <= 1e-15 * fmax(1.0, fabs(y)))
            return y;
    }
    /* Rounding noise in log P can keep the last step just above 1e-15. */
    ck_assert_msg(fabs(step) <= 1e-12 * fmax(1.0, fabs(y)),
                  "inverse of log P(%g, y) = %g did not converge: last step %g", alpha, target, step);
    return y;
}

/* Stable descending order on score, ties to the lower index (qsort helper). */
static const double *sort_scores;

static int by_score_desc(const void *a, const void *b)
{
    int i = *(const int *)a, j = *(const int *)b;

    if (sort_scores[i] != sort_scores[j])
        return sort_scores[i] > sort_scores[j] ? -1 : 1;
    return i - j;
}

/* Hard mask of one token from scores s + l, by sorting. */
static void hard_mask_ref(const double *score, int n_expert, int k_max, int *sel)
{
    int order[n_expert];
    int positives = 0;

    for (int e = 0; e < n_expert; e++) {
        order[e] = e;
        sel[e] = 0;
        positives += score[e] > 0;
    }
    sort_scores = score;
    qsort(order, n_expert, sizeof order[0], by_score_desc);

    int keep = positives == 0 ? 1 : (positives < k_max ? positives : k_max);
    for (int i = 0; i < keep; i++)
        sel[order[i]] = 1;
}

/* ------------------------------------------------------------------------ */
/* A routing problem in double                                               */

typedef struct route_case {
    dm_dirmoe_params p;
    double *logits;       /* (N,2E) */
    double *u, *log_g;    /* (N,E) fixed noise */
    double *zt, *alpha, *w, *r;
    int32_t *mask;
    uint32_t fallbacks;
    double *log_p_target; /* (N,E) log F(g; alpha) kept fixed when c moves */
    int follow_cdf;       /* nonzero: recompute log g from log_p_target before the forward */
} route_case;

static route_case route_case_make(int n, int E, int k_max, int selection, uint64_t seed)
{
    route_case rc;
    size_t ne = (size_t)n * E;

    memset(&rc, 0, sizeof rc);
    rc.p.n_tokens = n;
    rc.p.n_expert = E;
    rc.p.k_max = k_max;
    rc.p.selection = selection;
    rc.p.fixed_noise = 0;
    rc.p.tau = 0.7f;
    rc.p.alpha_min = 1e-2f;
    rc.p.alpha_max = 1e4f;
    rc.p.rng.seed = seed;
    rc.p.rng.layer = 3;
    rc.p.rng.step = 17;
    rc.p.rng.token_base = 40;
    rc.logits = test_calloc(2 * ne, sizeof(double));
    rc.u = test_calloc(ne, sizeof(double));
    rc.log_g = test_calloc(ne, sizeof(double));
    rc.zt = test_calloc(ne, sizeof(double));
    rc.alpha = test_calloc(ne, sizeof(double));
    rc.w = test_calloc(ne, sizeof(double));
    rc.r = test_calloc(ne, sizeof(double));
    rc.mask = test_calloc(ne, sizeof(int32_t));
    rc.log_p_target = test_calloc(ne, sizeof(double));
    return rc;
}

static void route_case_free(route_case *rc)
{
    free(rc->logits);
    free(rc->u);
    free(rc->log_g);
    free(rc->zt);
    free(rc->alpha);
    free(rc->w);
    free(rc->r);
    free(rc->mask);
    free(rc->log_p_target);
}

/* Random logits: s ~ N(0, s_scale^2), c uniform in (-3, 3); r ~ N(0, 1). */
static void route_case_fill(route_case *rc, test_rng *rng, double s_scale)
{
    int E = rc->p.n_expert;

    for (int t = 0; t < rc->p.n_tokens; t++) {
        for (int e = 0; e < E; e++) {
            rc->logits[(size_t)t * 2 * E + e] = s_scale * test_rng_normal(rng);
            rc->logits[(size_t)t * 2 * E + E + e] = test_rng_range(rng, -3.0, 3.0);
        }
    }
    test_fill_normal(rng, rc->r, (size_t)rc->p.n_tokens * E, 1.0);
}

static void route_forward(route_case *rc)
{
    dm_ref_d_dirmoe_route_forward(&rc->p, rc->logits, rc->u, rc->log_g, rc->zt, rc->alpha, rc->mask,
                                  rc->w, &rc->fallbacks);
}

/* Draws u and log g once with the op's own samplers, then switches to fixed noise. */
static void route_draw_then_fix(route_case *rc)
{
    int saved = rc->p.selection;

    /* Soft mode draws log g for every expert, so the fixed noise covers all of them. */
    rc->p.selection = DM_SELECTION_SOFT;
    rc->p.fixed_noise = 0;
    route_forward(rc);
    ck_assert_uint_eq(rc->fallbacks, 0);
    rc->p.selection = saved;
    rc->p.fixed_noise = 1;

    size_t ne = (size_t)rc->p.n_tokens * rc->p.n_expert;
    for (size_t i = 0; i < ne; i++)
        rc->log_p_target[i] = dm_log_gamma_p(rc->alpha[i], rc->log_g[i]);
}

static double dot(const double *a, const double *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* L = sum r * w at the current logits; with follow_cdf, log g moves with alpha at fixed F. */
static double route_loss(void *ctx)
{
    route_case *rc = ctx;
    int E = rc->p.n_expert;

    if (rc->follow_cdf) {
        for (int t = 0; t < rc->p.n_tokens; t++) {
            for (int e = 0; e < E; e++) {
                size_t i = (size_t)t * E + e;
                double a = alpha_ref(rc->logits[(size_t)t * 2 * E + E + e], rc->p.alpha_min,
                                     rc->p.alpha_max);
                rc->log_g[i] = inverse_log_gamma_p(a, rc->log_p_target[i], rc->log_g[i]);
            }
        }
    }
    route_forward(rc);
    return dot(rc->r, rc->w, (size_t)rc->p.n_tokens * E);
}

/* Returns dlogits (N,2E) of L = sum r * w from the op's backward at the current point. */
static double *route_backward(route_case *rc)
{
    size_t ne = (size_t)rc->p.n_tokens * rc->p.n_expert;
    double *dlogits = test_calloc(2 * ne, sizeof(double));

    route_forward(rc);
    dm_ref_d_dirmoe_route_backward(&rc->p, dlogits, rc->r, rc->logits, rc->zt, rc->alpha,
                                   rc->log_g, rc->mask, rc->w);
    return dlogits;
}

/* ------------------------------------------------------------------------ */
/* Noise layout and the sampling ops                                         */

START_TEST(test_route_noise_layout)
{
    test_rng rng = {11};
    route_case rc = route_case_make(6, 5, 5, DM_SELECTION_HARD, 0x1234567890ull);
    int E = 5;

    route_case_fill(&rc, &rng, 1.0);
    route_forward(&rc);
    ck_assert_uint_eq(rc.fallbacks, 0);

    for (int t = 0; t < 6; t++) {
        for (int e = 0; e < E; e++) {
            size_t i = (size_t)t * E + e;
            uint32_t index = (rc.p.rng.token_base + (uint32_t)t) * (uint32_t)E + (uint32_t)e;
            float u = dm_select_uniform(rc.p.rng.seed, index, rc.p.rng.layer, rc.p.rng.step);
            ck_assert_msg(rc.u[i] == (double)u, "u[%d,%d] = %.9g, expected the Philox uniform %.9g",
                          t, e, rc.u[i], (double)u);

            double a = alpha_ref(rc.logits[(size_t)t * 2 * E + E + e], 1e-2f, 1e4f);
            ck_assert_double_eq_tol(rc.alpha[i], a, 1e-12 * a);

            if (!rc.mask[i]) {
                ck_assert_msg(rc.log_g[i] == 0.0, "log_g[%d,%d] of an unselected expert is %g", t, e,
                              rc.log_g[i]);
                continue;
            }
            int fb = 0;
            float lg = dm_gamma_sample_logf((float)rc.alpha[i], rc.p.rng.seed, index, rc.p.rng.layer,
                                            rc.p.rng.step, &fb);
            ck_assert_msg(rc.log_g[i] == (double)lg, "log_g[%d,%d] = %.9g, expected %.9g", t, e,
                          rc.log_g[i], (double)lg);
        }
    }

    /* gamma_sample: element i uses counter word 0 = token_base + i. */
    double alpha[4] = {1e-2, 0.5, 3.0, 1e4}, log_g[4];
    uint32_t fallbacks = 0;
    dm_ref_d_gamma_sample(4, &rc.p.rng, log_g, alpha, &fallbacks);
    for (int i = 0; i < 4; i++) {
        int fb = 0;
        float lg = dm_gamma_sample_logf((float)alpha[i], rc.p.rng.seed, rc.p.rng.token_base + i,
                                        rc.p.rng.layer, rc.p.rng.step, &fb);
        ck_assert_msg(log_g[i] == (double)lg, "gamma_sample[%d] = %.9g, expected %.9g", i, log_g[i],
                      (double)lg);
    }
    ck_assert_uint_eq(fallbacks, 0);

    /* gamma_grad is the shared implicit gradient. */
    double grad[4];
    dm_ref_d_gamma_grad(4, grad, alpha, log_g);
    for (int i = 0; i < 4; i++)
        ck_assert_double_eq(grad[i], dm_gamma_dlogg_dalpha(alpha[i], log_g[i]));

    route_case_free(&rc);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Forward against the independent rules                                     */

/* Checks mask, zt and w of every token against hard_mask_ref / the soft formula. */
static void check_forward_rules(const route_case *rc, int *n_empty, int *n_capped)
{
    int E = rc->p.n_expert;

    for (int t = 0; t < rc->p.n_tokens; t++) {
        const double *s = rc->logits + (size_t)t * 2 * E;
        double score[E];
        int sel[E], positives = 0;

        for (int e = 0; e < E; e++) {
            double u = rc->u[(size_t)t * E + e];
            score[e] = s[e] + log(u) - log(1.0 - u);
            positives += score[e] > 0;
            double zt = sigmoid_ref(score[e] / rc->p.tau);
            ck_assert_double_eq_tol(rc->zt[(size_t)t * E + e], zt, 1e-14);
        }
        *n_empty += positives == 0;
        *n_capped += positives > rc->p.k_max;

        if (rc->p.selection == DM_SELECTION_SOFT) {
            for (int e = 0; e < E; e++)
                sel[e] = 1;
        } else {
            hard_mask_ref(score, E, rc->p.k_max, sel);
        }

        /* w_e = g_e zt_e^soft / sum_j g_j zt_j^soft over the selected experts. */
        double denom = 0.0, num[E];
        for (int e = 0; e < E; e++) {
            size_t i = (size_t)t * E + e;
            ck_assert_msg(rc->mask[i] == sel[e], "token %d expert %d: mask %d, expected %d", t, e,
                          rc->mask[i], sel[e]);
            num[e] = 0.0;
            if (!sel[e])
                continue;
            num[e] = exp(rc->log_g[i]);
            if (rc->p.selection == DM_SELECTION_SOFT)
                num[e] *= sigmoid_ref(score[e] / rc->p.tau);
            denom += num[e];
        }
        for (int e = 0; e < E; e++)
            ck_assert_double_eq_tol(rc->w[(size_t)t * E + e], num[e] / denom, 1e-13);
    }
}

START_TEST(test_route_hard_forward)
{
    test_rng rng = {21};
    route_case rc = route_case_make(64, 6, 3, DM_SELECTION_HARD, 99);
    int n_empty = 0, n_capped = 0;

    route_case_fill(&rc, &rng, 2.0);
    route_draw_then_fix(&rc);
    route_forward(&rc);
    check_forward_rules(&rc, &n_empty, &n_capped);

    /* The data must exercise both rules, or the check above proves less than it says. */
    ck_assert_int_gt(n_empty, 0);
    ck_assert_int_gt(n_capped, 0);
    route_case_free(&rc);
}
END_TEST

START_TEST(test_route_soft_forward)
{
    test_rng rng = {22};
    route_case rc = route_case_make(16, 5, 2, DM_SELECTION_SOFT, 5);
    int n_empty = 0, n_capped = 0;

    /* Moderate concentrations keep every g representable, so exp(log g) is safe here. */
    route_case_fill(&rc, &rng, 1.0);
    route_draw_then_fix(&rc);
    route_forward(&rc);
    check_forward_rules(&rc, &n_empty, &n_capped);
    route_case_free(&rc);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Gradients                                                                 */

/* Soft mode is differentiable in s at fixed u and log g: finite differences of
 * the forward must match the backward's ds exactly. */
START_TEST(test_route_soft_grad_s)
{
    test_rng rng = {31};
    int N = 4, E = 5;
    route_case rc = route_case_make(N, E, E, DM_SELECTION_SOFT, 7);

    route_case_fill(&rc, &rng, 1.5);
    route_draw_then_fix(&rc);
    double *dlogits = route_backward(&rc);

    for (int t = 0; t < N; t++)
        test_check_gradient("soft route ds", rc.logits + (size_t)t * 2 * E, E, 1,
                            dlogits + (size_t)t * 2 * E, 1e-3, FD_TOL, route_loss, &rc);
    free(dlogits);
    route_case_free(&rc);
}
END_TEST

/* The alpha path: moving c moves alpha, and log g follows at fixed F(g; alpha)
 * through the inverse CDF, which is what the implicit gradient differentiates. */
static void check_alpha_path(int selection, uint64_t seed)
{
    test_rng rng = {seed};
    int N = 4, E = 5;
    route_case rc = route_case_make(N, E, 3, selection, seed);

    route_case_fill(&rc, &rng, 1.5);
    route_draw_then_fix(&rc);
    double *dlogits = route_backward(&rc);

    rc.follow_cdf = 1;
    for (int t = 0; t < N; t++)
        test_check_gradient(selection == DM_SELECTION_SOFT ? "soft route dc" : "hard route dc",
                            rc.logits + (size_t)t * 2 * E + E, E, 1, dlogits + (size_t)t * 2 * E + E,
                            1e-3, FD_TOL, route_loss, &rc);
    free(dlogits);
    route_case_free(&rc);
}

START_TEST(test_route_soft_grad_alpha)
{
    check_alpha_path(DM_SELECTION_SOFT, 41);
}
END_TEST

START_TEST(test_route_hard_grad_alpha)
{
    check_alpha_path(DM_SELECTION_HARD, 42);
}
END_TEST

/* Hard mode's ds is the straight-through surrogate, not a derivative of the
 * forward; it is checked against the formulas written out independently:
 * dlogg_e = w_e (a_e - abar), ds_e = dlogg_e zt_e (1 - zt_e) / tau,
 * dc_e = dlogg_e dlogg/dalpha sigmoid(c_e), all for selected e only. */
START_TEST(test_route_hard_straight_through)
{
    test_rng rng = {51};
    int N = 32, E = 6;
    route_case rc = route_case_make(N, E, 3, DM_SELECTION_HARD, 51);

    route_case_fill(&rc, &rng, 2.0);
    route_draw_then_fix(&rc);
    route_forward(&rc);

    /* Backward ops accumulate: start from random values and subtract them after. */
    double *base = test_calloc((size_t)N * 2 * E, sizeof(double));
    double *dlogits = test_calloc((size_t)N * 2 * E, sizeof(double));
    test_fill_normal(&rng, base, (size_t)N * 2 * E, 1.0);
    memcpy(dlogits, base, (size_t)N * 2 * E * sizeof(double));
    dm_ref_d_dirmoe_route_backward(&rc.p, dlogits, rc.r, rc.logits, rc.zt, rc.alpha, rc.log_g,
                                   rc.mask, rc.w);

    int n_nonzero = 0;
    for (int t = 0; t < N; t++) {
        const double *c = rc.logits + (size_t)t * 2 * E + E;
        double abar = 0.0;
        for (int e = 0; e < E; e++)
            if (rc.mask[(size_t)t * E + e])
                abar += rc.w[(size_t)t * E + e] * rc.r[(size_t)t * E + e];

        for (int e = 0; e < E; e++) {
            size_t i = (size_t)t * E + e;
            double ds = 0.0, dc = 0.0;
            if (rc.mask[i]) {
                double dlogg = rc.w[i] * (rc.r[i] - abar);
                double zt = sigmoid_ref((rc.logits[(size_t)t * 2 * E + e] + log(rc.u[i]) -
                                         log(1.0 - rc.u[i])) / rc.p.tau);
                ds = dlogg * zt * (1.0 - zt) / rc.p.tau;
                dc = dlogg * dm_gamma_dlogg_dalpha(rc.alpha[i], rc.log_g[i]) * sigmoid_ref(c[e]);
            }
            n_nonzero += ds != 0.0;
            double got_ds = dlogits[(size_t)t * 2 * E + e] - base[(size_t)t * 2 * E + e];
            double got_dc = dlogits[(size_t)t * 2 * E + E + e] - base[(size_t)t * 2 * E + E + e];
            ck_assert_msg(fabs(got_ds - ds) <= 1e-12 * fmax(1.0, fabs(ds)),
                          "token %d expert %d: ds %.15g, expected %.15g", t, e, got_ds, ds);
            ck_assert_msg(fabs(got_dc - dc) <= 1e-12 * fmax(1.0, fabs(dc)),
                          "token %d expert %d: dc %.15g, expected %.15g", t, e, got_dc, dc);
        }
    }
    ck_assert_int_gt(n_nonzero, N);

    free(base);
    free(dlogits);
    route_case_free(&rc);
}
END_TEST

/* The task gradient w_e (a_e - abar) is exactly zero for a token with one
 * selected expert, because its weight is 1 whatever s and c are. */
START_TEST(test_route_hard_one_kept_zero_grad)
{
    test_rng rng = {52};
    int N = 16, E = 4;
    route_case rc = route_case_make(N, E, 1, DM_SELECTION_HARD, 52);

    /* k_max = 1: every token keeps one expert, so its ds and dc must be 0. */
    route_case_fill(&rc, &rng, 1.0);
    double *dlogits = route_backward(&rc);
    for (size_t i = 0; i < (size_t)N * 2 * E; i++)
        ck_assert_double_eq(dlogits[i], 0.0);
    free(dlogits);
    route_case_free(&rc);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Concentration clamp                                                       */

START_TEST(test_route_alpha_clamp)
{
    int N = 1, E = 3;
    route_case rc = route_case_make(N, E, E, DM_SELECTION_SOFT, 61);

    /* c = -100: alpha = alpha_min (gradient sigmoid(c), tiny but nonzero);
     * c = 2e4: softplus(c) + alpha_min >= alpha_max, so alpha = 1e4 and dc = 0;
     * c = 0: an ordinary expert. */
    double c[3] = {-100.0, 2e4, 0.0};
    for (int e = 0; e < E; e++) {
        rc.logits[e] = 0.5 * e;
        rc.logits[E + e] = c[e];
        rc.r[e] = 1.0 + e;
    }
    route_forward(&rc);
    ck_assert_uint_eq(rc.fallbacks, 0);
    ck_assert_double_eq_tol(rc.alpha[0], (double)1e-2f, 1e-15);
    ck_assert_double_eq(rc.alpha[1], (double)1e4f);
    for (int e = 0; e < E; e++)
        ck_assert(isfinite(rc.log_g[e]) && isfinite(rc.w[e]));

    double *dlogits = route_backward(&rc);
    ck_assert_double_eq(dlogits[E + 1], 0.0);
    ck_assert(dlogits[E + 2] != 0.0);
    for (int i = 0; i < 2 * E; i++)
        ck_assert_msg(isfinite(dlogits[i]), "dlogits[%d] = %g", i, dlogits[i]);

    /* The gradient at alpha = 1e4 that the clamp discards is itself finite. */
    ck_assert(isfinite(dm_gamma_dlogg_dalpha(rc.alpha[1], rc.log_g[1])));
    free(dlogits);
    route_case_free(&rc);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Edge cases of the hard rules                                              */

START_TEST(test_route_no_expert_selected)
{
    int E = 4;
    route_case rc = route_case_make(1, E, E, DM_SELECTION_HARD, 71);

    /* Every s + l is negative; expert 2 has the largest, so it is the one kept. */
    double s[4] = {-9.0, -6.0, -3.0, -8.0};
    for (int e = 0; e < E; e++) {
        rc.logits[e] = s[e];
        rc.u[e] = 0.25;
    }
    rc.p.fixed_noise = 1;
    route_forward(&rc);
    for (int e = 0; e < E; e++) {
        ck_assert_int_eq(rc.mask[e], e == 2);
        ck_assert_double_eq(rc.w[e], e == 2 ? 1.0 : 0.0);
    }

    /* Equal scores, all negative: the lowest index wins. */
    for (int e = 0; e < E; e++)
        rc.logits[e] = -5.0;
    route_forward(&rc);
    for (int e = 0; e < E; e++)
        ck_assert_int_eq(rc.mask[e], e == 0);
    route_case_free(&rc);
}
END_TEST

START_TEST(test_route_k_max_cap)
{
    int E = 5;
    route_case rc = route_case_make(1, E, 2, DM_SELECTION_HARD, 72);

    /* All five pass the gate; the two largest s + l are experts 3 and 1. */
    double s[5] = {1.0, 4.0, 2.0, 6.0, 3.0};
    for (int e = 0; e < E; e++) {
        rc.logits[e] = s[e];
        rc.u[e] = 0.5;
    }
    rc.p.fixed_noise = 1;
    rc.log_g[1] = -1.0;
    rc.log_g[3] = 0.5;
    route_forward(&rc);
    int expect[5] = {0, 1, 0, 1, 0};
    for (int e = 0; e < E; e++)
        ck_assert_int_eq(rc.mask[e], expect[e]);
    ck_assert_double_eq_tol(rc.w[3], 1.0 / (1.0 + exp(-1.5)), 1e-15);

    /* Ties among the kept: equal s keeps the lower indices. */
    for (int e = 0; e < E; e++)
        rc.logits[e] = 2.0;
    route_forward(&rc);
    for (int e = 0; e < E; e++)
        ck_assert_int_eq(rc.mask[e], e < 2);
    route_case_free(&rc);
}
END_TEST

START_TEST(test_route_single_expert)
{
    test_rng rng = {81};
    int N = 8, E = 1;

    for (int mode = 0; mode < 2; mode++) {
        route_case rc = route_case_make(N, E, 1, mode, 81);
        route_case_fill(&rc, &rng, 3.0);
        double *dlogits = route_backward(&rc);
        for (int t = 0; t < N; t++) {
            ck_assert_int_eq(rc.mask[t], 1);
            ck_assert_double_eq(rc.w[t], 1.0);
            ck_assert_double_eq(dlogits[2 * t], 0.0);
            ck_assert_double_eq(dlogits[2 * t + 1], 0.0);
        }
        free(dlogits);
        route_case_free(&rc);
    }
}
END_TEST

START_TEST(test_route_extreme_logits)
{
    int N = 3, E = 4;

    for (int mode = 0; mode < 2; mode++) {
        route_case rc = route_case_make(N, E, E, mode, 91);
        test_rng rng = {91};
        test_fill_normal(&rng, rc.r, (size_t)N * E, 1.0);

        /* Token 0 all +80, token 1 all -80, token 2 mixed. */
        double s2[4] = {80.0, -80.0, 80.0, -80.0};
        for (int e = 0; e < E; e++) {
            rc.logits[e] = 80.0;
            rc.logits[2 * E + e] = -80.0;
            rc.logits[4 * E + e] = s2[e];
            for (int t = 0; t < N; t++)
                rc.logits[(size_t)t * 2 * E + E + e] = 0.3 * e;
        }
        double *dlogits = route_backward(&rc);

        for (size_t i = 0; i < (size_t)N * E; i++)
            ck_assert_msg(isfinite(rc.w[i]) && isfinite(rc.zt[i]) && isfinite(rc.log_g[i]),
                          "mode %d element %zu: w %g zt %g log_g %g", mode, i, rc.w[i], rc.zt[i],
                          rc.log_g[i]);
        for (size_t i = 0; i < (size_t)N * 2 * E; i++)
            ck_assert_msg(isfinite(dlogits[i]), "mode %d dlogits[%zu] = %g", mode, i, dlogits[i]);

        if (mode == DM_SELECTION_HARD) {
            /* +80 always passes the gate and -80 never does (|l| < 17). */
            for (int e = 0; e < E; e++) {
                ck_assert_int_eq(rc.mask[e], 1);
                ck_assert_int_eq(rc.mask[2 * E + e], e % 2 == 0);
            }
            int count = 0;
            for (int e = 0; e < E; e++)
                count += rc.mask[E + e];
            ck_assert_int_eq(count, 1);
        }
        free(dlogits);
        route_case_free(&rc);
    }
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Evaluation routing                                                        */

START_TEST(test_route_eval)
{
    test_rng rng = {101};
    int N = 40, E = 6;
    route_case rc = route_case_make(N, E, 4, DM_SELECTION_HARD, 101);

    route_case_fill(&rc, &rng, 2.5);
    /* Token 0: all equal (ties to the lowest indices); token 1: all -80 (K = 1);
     * token 2: all +80 (K = E, capped at k_max). */
    for (int e = 0; e < E; e++) {
        rc.logits[e] = 0.25;
        rc.logits[2 * E + e] = -80.0;
        rc.logits[4 * E + e] = 80.0;
    }
    dm_ref_d_dirmoe_route_eval(&rc.p, rc.logits, rc.mask, rc.w);

    int seen[7] = {0};
    for (int t = 0; t < N; t++) {
        const double *s = rc.logits + (size_t)t * 2 * E;
        double sum_pi = 0.0, prod = 1.0;
        int order[6];
        for (int e = 0; e < E; e++) {
            double pi = sigmoid_ref(s[e]);
            sum_pi += pi;
            prod *= sigmoid_ref(-s[e]);
            order[e] = e;
        }
        int n = (int)floor(sum_pi + prod + 0.5);
        n = n < 1 ? 1 : (n > rc.p.k_max ? rc.p.k_max : n);
        seen[n]++;
        sort_scores = s;
        qsort(order, E, sizeof order[0], by_score_desc);

        int sel[6] = {0};
        double sum_alpha = 0.0;
        for (int i = 0; i < n; i++) {
            sel[order[i]] = 1;
            sum_alpha += alpha_ref(s[E + order[i]], rc.p.alpha_min, rc.p.alpha_max);
        }
        for (int e = 0; e < E; e++) {
            size_t i = (size_t)t * E + e;
            double w = sel[e] ? alpha_ref(s[E + e], rc.p.alpha_min, rc.p.alpha_max) / sum_alpha : 0.0;
            ck_assert_msg(rc.mask[i] == sel[e], "token %d expert %d: eval mask %d, expected %d", t, e,
                          rc.mask[i], sel[e]);
            ck_assert_double_eq_tol(rc.w[i], w, 1e-14);
        }
    }
    ck_assert_int_eq(rc.mask[0] + rc.mask[1] + rc.mask[2], 3);
    ck_assert_int_eq(rc.mask[E + 0], 1);
    ck_assert_int_eq(rc.mask[2 * E + 0] + rc.mask[2 * E + 1] + rc.mask[2 * E + 2] +
                         rc.mask[2 * E + 3] + rc.mask[2 * E + 4] + rc.mask[2 * E + 5],
                     4);
    ck_assert_int_gt(seen[1], 0);
    ck_assert_int_gt(seen[2] + seen[3], 0);
    ck_assert_int_gt(seen[4], 0);
    route_case_free(&rc);
}
END_TEST

static Suite *router_dirmoe_suite(void)
{
    Suite *s = suite_create("router_dirmoe");
    TCase *tc = tcase_create("reference");

    tcase_add_test(tc, test_route_noise_layout);
    tcase_add_test(tc, test_route_hard_forward);
    tcase_add_test(tc, test_route_soft_forward);
    tcase_add_test(tc, test_route_soft_grad_s);
    tcase_add_test(tc, test_route_soft_grad_alpha);
    tcase_add_test(tc, test_route_hard_grad_alpha);
    tcase_add_test(tc, test_route_hard_straight_through);
    tcase_add_test(tc, test_route_hard_one_kept_zero_grad);
    tcase_add_test(tc, test_route_alpha_clamp);
    tcase_add_test(tc, test_route_no_expert_selected);
    tcase_add_test(tc, test_route_k_max_cap);
    tcase_add_test(tc, test_route_single_expert);
    tcase_add_test(tc, test_route_extreme_logits);
    tcase_add_test(tc, test_route_eval);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(router_dirmoe_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
