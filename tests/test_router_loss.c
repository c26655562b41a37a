/*
 * Reference router losses: the DirMoE regularisers (KL_B in batch and token
 * form, KL_D, the sparsity term with fixed and adaptive coefficients) and the
 * Switch load-balancing loss with the z-loss. Forward values are compared
 * with independent formulas (own digamma, libm lgamma, naive products) and
 * gradients with finite differences in double; edge cases cover one expert,
 * k = E, one token, equal logits, logits of +-80 and alpha at both clamps.
 */
#include "config.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define REF_REAL double
#define REF_DOUBLE
#include "ref_ops.h"

#include "router_util.h"

#define FD_TOL 1e-6

/* float kernel, from libref_float */
void dm_ref_f_dirmoe_reg_forward(const dm_dirmoe_reg_params *p, const float *logits, float *stats);

/* ------------------------------------------------------------------------ */
/* Independent formulas                                                      */

static double sigmoid_ref(double x)
{
    return x >= 0 ? 1.0 / (1.0 + exp(-x)) : exp(x) / (1.0 + exp(x));
}

static double softplus_ref(double x)
{
    return x > 30.0 ? x + log1p(exp(-x)) : log1p(exp(x));
}

/* Digamma by upward recurrence to x >= 12 and the asymptotic series there. */
static double digamma_ref(double x)
{
    double shift = 0.0;

    while (x < 12.0) {
        shift -= 1.0 / x;
        x += 1.0;
    }
    double x2 = 1.0 / (x * x);
    double series = x2 * (1.0 / 12 - x2 * (1.0 / 120 - x2 * (1.0 / 252 - x2 * (1.0 / 240 - x2 / 132))));
    return shift + log(x) - 0.5 / x - series;
}

/* p0 solving E p0 + (1 - p0)^E = k by bisection (the left side increases in p0). */
static double solve_p0_ref(int E, double k)
{
    double lo = 0.0, hi = 1.0;

    for (int it = 0; it < 200; it++) {
        double mid = 0.5 * (lo + hi);
        if (E * mid + pow(1.0 - mid, E) < k)
            lo = mid;
        else
            hi = mid;
    }
    return fmin(fmax(0.5 * (lo + hi), 1e-6), 1.0 - 1e-6);
}

static double bernoulli_kl_ref(double q, double p0)
{
    double kl = 0.0;

    if (q > 0.0)
        kl += q * log(q / p0);
    if (q < 1.0)
        kl += (1.0 - q) * log((1.0 - q) / (1.0 - p0));
    return kl;
}

/* ------------------------------------------------------------------------ */
/* Regulariser problems                                                      */

typedef struct reg_case {
    dm_dirmoe_reg_params p;
    double *logits; /* (N,2E) */
} reg_case;

static reg_case reg_case_make(int n, int E, int kl_b_mode, double k)
{
    reg_case rc;
    double p0 = solve_p0_ref(E, k);

    memset(&rc, 0, sizeof rc);
    rc.p.n_tokens = n;
    rc.p.n_expert = E;
    rc.p.kl_b_mode = kl_b_mode;
    rc.p.alpha_min = 1e-2f;
    rc.p.alpha_max = 1e4f;
    rc.p.log_p0 = log(p0);
    rc.p.log_1mp0 = log1p(-p0);
    rc.p.alpha0 = 0.8;
    rc.p.k_target = k;
    rc.p.coef_kl_b = 0.7;
    rc.p.coef_kl_d = 0.3;
    rc.p.coef_sq = 0.5;
    rc.p.coef_lin = 0.0;
    rc.logits = test_calloc((size_t)n * 2 * E, sizeof(double));
    return rc;
}

static void reg_case_fill(reg_case *rc, test_rng *rng, double s_scale)
{
    int E = rc->p.n_expert;

    for (int t = 0; t < rc->p.n_tokens; t++) {
        for (int e = 0; e < E; e++) {
            rc->logits[(size_t)t * 2 * E + e] = s_scale * test_rng_normal(rng);
            rc->logits[(size_t)t * 2 * E + E + e] = test_rng_range(rng, -3.0, 3.0);
        }
    }
}

static double reg_loss(void *ctx)
{
    reg_case *rc = ctx;
    double stats[DM_REG_NSTATS];

    dm_ref_d_dirmoe_reg_forward(&rc->p, rc->logits, stats);
    return stats[DM_REG_LOSS];
}

/* Stats of the naive formulas: KL_B, KL_D, Kbar, LOSS. */
static void reg_stats_ref(const reg_case *rc, double *out)
{
    int E = rc->p.n_expert, N = rc->p.n_tokens;
    double p0 = exp(rc->p.log_p0);
    double kl_b_token = 0.0, kl_d = 0.0, kbar = 0.0;
    double pibar[E];

    for (int e = 0; e < E; e++)
        pibar[e] = 0.0;

    for (int t = 0; t < N; t++) {
        const double *s = rc->logits + (size_t)t * 2 * E;
        double prod = 1.0, sum_pi = 0.0, A = 0.0, alpha[E];
        for (int e = 0; e < E; e++) {
            double pi = sigmoid_ref(s[e]);
            pibar[e] += pi / N;
            kl_b_token += bernoulli_kl_ref(pi, p0) / N;
            sum_pi += pi;
            prod *= 1.0 - pi;
            alpha[e] = fmin(softplus_ref(s[E + e]) + rc->p.alpha_min, rc->p.alpha_max);
            A += alpha[e];
        }
        kbar += (sum_pi + prod) / N;

        double a0 = rc->p.alpha0;
        double kl = lgamma(A) - lgamma(E * a0) + E * lgamma(a0);
        for (int e = 0; e < E; e++)
            kl += -lgamma(alpha[e]) + (alpha[e] - a0) * (digamma_ref(alpha[e]) - digamma_ref(A));
        kl_d += kl / N;
    }

    double kl_b = 0.0;
    for (int e = 0; e < E; e++)
        kl_b += bernoulli_kl_ref(pibar[e], p0);
    if (rc->p.kl_b_mode == DM_KL_B_TOKEN)
        kl_b = kl_b_token;

    double gap = kbar - rc->p.k_target;
    out[DM_REG_KL_B] = kl_b;
    out[DM_REG_KL_D] = kl_d;
    out[DM_REG_KBAR] = kbar;
    out[DM_REG_LOSS] = rc->p.coef_kl_b * kl_b + rc->p.coef_kl_d * kl_d + rc->p.coef_sq * gap * gap +
                       rc->p.coef_lin * gap;
}

static void check_reg_stats(const reg_case *rc, double tol)
{
    static const char *names[DM_REG_NSTATS] = {"KL_B", "KL_D", "Kbar", "loss"};
    double got[DM_REG_NSTATS], want[DM_REG_NSTATS];

    dm_ref_d_dirmoe_reg_forward(&rc->p, rc->logits, got);
    reg_stats_ref(rc, want);
    for (int i = 0; i < DM_REG_NSTATS; i++)
        ck_assert_msg(fabs(got[i] - want[i]) <= tol * fmax(1.0, fabs(want[i])),
                      "%s = %.15g, expected %.15g", names[i], got[i], want[i]);
}

/* Runs the backward on top of random values (it accumulates) and returns the increment. */
static double *reg_backward(reg_case *rc, test_rng *rng)
{
    size_t n = (size_t)rc->p.n_tokens * 2 * rc->p.n_expert;
    double *base = test_calloc(n, sizeof(double));
    double *grad = test_calloc(n, sizeof(double));

    test_fill_normal(rng, base, n, 1.0);
    memcpy(grad, base, n * sizeof(double));
    dm_ref_d_dirmoe_reg_backward(&rc->p, rc->logits, grad);
    for (size_t i = 0; i < n; i++)
        grad[i] -= base[i];
    free(base);
    return grad;
}

static void check_reg_case(int n, int E, int kl_b_mode, double k, double coef_lin, uint64_t seed)
{
    test_rng rng = {seed};
    reg_case rc = reg_case_make(n, E, kl_b_mode, k);

    rc.p.coef_lin = coef_lin;
    reg_case_fill(&rc, &rng, 2.0);
    check_reg_stats(&rc, 1e-12);

    double *grad = reg_backward(&rc, &rng);
    test_check_gradient(kl_b_mode == DM_KL_B_TOKEN ? "reg (token KL_B) dlogits" : "reg (batch KL_B) dlogits",
                        rc.logits, (size_t)n * 2 * E, 1, grad, 1e-3, FD_TOL, reg_loss, &rc);
    free(grad);
    free(rc.logits);
}

START_TEST(test_reg_batch_fixed)
{
    check_reg_case(6, 5, DM_KL_B_BATCH, 2.0, 0.0, 1);
}
END_TEST

START_TEST(test_reg_batch_adaptive)
{
    check_reg_case(6, 5, DM_KL_B_BATCH, 1.5, -0.4, 2);
}
END_TEST

START_TEST(test_reg_token_fixed)
{
    check_reg_case(6, 5, DM_KL_B_TOKEN, 2.0, 0.0, 3);
}
END_TEST

START_TEST(test_reg_token_adaptive)
{
    check_reg_case(6, 5, DM_KL_B_TOKEN, 2.0, 0.9, 4);
}
END_TEST

START_TEST(test_reg_one_token)
{
    check_reg_case(1, 4, DM_KL_B_BATCH, 2.0, 0.2, 5);
    check_reg_case(1, 4, DM_KL_B_TOKEN, 2.0, 0.2, 6);
}
END_TEST

/* k = E puts p0 at the 1 - 1e-6 clamp; KL_B must stay finite. */
START_TEST(test_reg_k_equals_e)
{
    check_reg_case(5, 4, DM_KL_B_BATCH, 4.0, 0.3, 7);
    check_reg_case(5, 4, DM_KL_B_TOKEN, 4.0, 0.3, 8);
}
END_TEST

/* One expert: K = 1 always and KL_D = 0, so only KL_B has a gradient. */
START_TEST(test_reg_single_expert)
{
    test_rng rng = {9};
    reg_case rc = reg_case_make(5, 1, DM_KL_B_BATCH, 1.0);
    double stats[DM_REG_NSTATS];

    reg_case_fill(&rc, &rng, 2.0);
    dm_ref_d_dirmoe_reg_forward(&rc.p, rc.logits, stats);
    ck_assert_double_eq_tol(stats[DM_REG_KBAR], 1.0, 1e-15);
    ck_assert_double_eq_tol(stats[DM_REG_KL_D], 0.0, 1e-13);
    check_reg_stats(&rc, 1e-12);

    double *grad = reg_backward(&rc, &rng);
    test_check_gradient("reg (one expert) dlogits", rc.logits, 10, 1, grad, 1e-3, FD_TOL, reg_loss, &rc);
    for (int t = 0; t < 5; t++)
        ck_assert_double_eq_tol(grad[2 * t + 1], 0.0, 1e-15);
    free(grad);
    free(rc.logits);
}
END_TEST

/* KL_D is 0 when every alpha equals alpha0, and so is its gradient. */
START_TEST(test_reg_kl_d_at_prior)
{
    int E = 4;
    reg_case rc = reg_case_make(3, E, DM_KL_B_BATCH, 2.0);
    double stats[DM_REG_NSTATS];

    rc.p.coef_kl_b = 0.0;
    rc.p.coef_sq = 0.0;
    rc.p.alpha0 = 1.7;
    for (int t = 0; t < 3; t++)
        for (int e = 0; e < E; e++)
            rc.logits[(size_t)t * 2 * E + E + e] = log(expm1(rc.p.alpha0 - (double)rc.p.alpha_min));
    dm_ref_d_dirmoe_reg_forward(&rc.p, rc.logits, stats);
    ck_assert_double_eq_tol(stats[DM_REG_KL_D], 0.0, 1e-13);

    double grad[24] = {0};
    dm_ref_d_dirmoe_reg_backward(&rc.p, rc.logits, grad);
    for (int i = 0; i < 24; i++)
        ck_assert_double_eq_tol(grad[i], 0.0, 1e-13);
    free(rc.logits);
}
END_TEST

/* Logits of +-80, equal logits, alpha at alpha_min and at the alpha_max clamp. */
START_TEST(test_reg_extremes)
{
    int N = 4, E = 4;

    for (int mode = 0; mode < 2; mode++) {
        reg_case rc = reg_case_make(N, E, mode, 2.0);
        double stats[DM_REG_NSTATS];
        rc.p.coef_lin = 0.5;

        /* Token 0 all +80, token 1 all -80, token 2 all equal, token 3 mixed;
         * c = -100 (alpha = alpha_min), 2e4 (clamped to 1e4), 0 and 3. */
        double c[4] = {-100.0, 2e4, 0.0, 3.0};
        for (int e = 0; e < E; e++) {
            rc.logits[0 * 2 * E + e] = 80.0;
            rc.logits[1 * 2 * E + e] = -80.0;
            rc.logits[2 * 2 * E + e] = 0.3;
            rc.logits[3 * 2 * E + e] = e % 2 ? 80.0 : -80.0;
            for (int t = 0; t < N; t++)
                rc.logits[(size_t)t * 2 * E + E + e] = c[e];
        }
        dm_ref_d_dirmoe_reg_forward(&rc.p, rc.logits, stats);
        for (int i = 0; i < DM_REG_NSTATS; i++)
            ck_assert_msg(isfinite(stats[i]), "mode %d stat %d = %g", mode, i, stats[i]);

        /* The naive reference is exact here except 1 - pibar; allow for its rounding. */
        check_reg_stats(&rc, 1e-9);

        double grad[32] = {0};
        dm_ref_d_dirmoe_reg_backward(&rc.p, rc.logits, grad);
        for (int i = 0; i < 32; i++)
            ck_assert_msg(isfinite(grad[i]), "mode %d dlogits[%d] = %g", mode, i, grad[i]);

        /* The clamped concentration (expert 1) gets no gradient from KL_D. */
        for (int t = 0; t < N; t++)
            ck_assert_double_eq(grad[(size_t)t * 2 * E + E + 1], 0.0);
        free(rc.logits);
    }

    /* In float the batch form must not lose 1 - pibar at s = 80 (it is 1.8e-35, not 0). */
    float logits_f[8] = {80.0f, 80.0f, 0.0f, 0.0f, 80.0f, 80.0f, 0.0f, 0.0f};
    float stats_f[DM_REG_NSTATS];
    dm_dirmoe_reg_params pf;
    memset(&pf, 0, sizeof pf);
    pf.n_tokens = 2;
    pf.n_expert = 2;
    pf.kl_b_mode = DM_KL_B_BATCH;
    pf.alpha_min = 1e-2f;
    pf.alpha_max = 1e4f;
    pf.log_p0 = log(0.3);
    pf.log_1mp0 = log(0.7);
    pf.alpha0 = 1.0;
    pf.k_target = 1.0;
    pf.coef_kl_b = 1.0;
    dm_ref_f_dirmoe_reg_forward(&pf, logits_f, stats_f);
    ck_assert_float_eq_tol(stats_f[DM_REG_KL_B], (float)(2.0 * -log(0.3)), 1e-5f);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Load balancing and z-loss                                                 */

typedef struct balance_case {
    dm_balance_params p;
    double *logits; /* (N, stride) */
    double *probs;  /* (N,E), recomputed from logits before every evaluation */
    int32_t *demand;
} balance_case;

static void balance_probs(balance_case *bc)
{
    int E = bc->p.n_expert;

    for (int t = 0; t < bc->p.n_tokens; t++) {
        const double *s = bc->logits + (size_t)t * bc->p.logits_stride;
        double smax = s[0], sum = 0.0;
        for (int e = 1; e < E; e++)
            smax = fmax(smax, s[e]);
        for (int e = 0; e < E; e++)
            sum += exp(s[e] - smax);
        for (int e = 0; e < E; e++)
            bc->probs[(size_t)t * E + e] = exp(s[e] - smax) / sum;
    }
}

static double balance_loss(void *ctx)
{
    balance_case *bc = ctx;
    double stats[DM_BAL_NSTATS];

    balance_probs(bc);
    dm_ref_d_balance_forward(&bc->p, bc->logits, bc->probs, bc->demand, stats);
    return bc->p.coef_balance * stats[DM_BAL_LOSS] + bc->p.coef_z * stats[DM_BAL_ZLOSS];
}

static void check_balance_case(int n, int E, int k, int stride, uint64_t seed)
{
    test_rng rng = {seed};
    balance_case bc;
    size_t nl = (size_t)n * stride;

    bc.p.n_tokens = n;
    bc.p.n_expert = E;
    bc.p.k = k;
    bc.p.logits_stride = stride;
    bc.p.coef_balance = 0.9;
    bc.p.coef_z = 0.35;
    bc.logits = test_calloc(nl, sizeof(double));
    bc.probs = test_calloc((size_t)n * E, sizeof(double));
    bc.demand = test_calloc(E, sizeof(int32_t));
    test_fill_normal(&rng, bc.logits, nl, 1.5);
    for (int e = 0; e < E; e++)
        bc.demand[e] = (int32_t)(test_rng_next(&rng) % (uint64_t)(n + 1));

    /* Forward against the definitions. */
    double stats[DM_BAL_NSTATS];
    balance_probs(&bc);
    dm_ref_d_balance_forward(&bc.p, bc.logits, bc.probs, bc.demand, stats);
    double bal = 0.0, z = 0.0;
    for (int e = 0; e < E; e++) {
        double P = 0.0;
        for (int t = 0; t < n; t++)
            P += bc.probs[(size_t)t * E + e] / n;
        bal += E * ((double)bc.demand[e] / ((double)n * k)) * P;
    }
    for (int t = 0; t < n; t++) {
        double sum = 0.0;
        for (int e = 0; e < E; e++)
            sum += exp(bc.logits[(size_t)t * stride + e]);
        z += log(sum) * log(sum) / n;
    }
    ck_assert_double_eq_tol(stats[DM_BAL_LOSS], bal, 1e-13 * fmax(1.0, bal));
    ck_assert_double_eq_tol(stats[DM_BAL_ZLOSS], z, 1e-13 * fmax(1.0, z));

    /* Gradient, accumulated on random values; columns past E must stay untouched. */
    double *base = test_calloc(nl, sizeof(double));
    double *grad = test_calloc(nl, sizeof(double));
    test_fill_normal(&rng, base, nl, 1.0);
    memcpy(grad, base, nl * sizeof(double));
    dm_ref_d_balance_backward(&bc.p, bc.logits, bc.probs, bc.demand, grad);
    for (size_t i = 0; i < nl; i++)
        grad[i] -= base[i];
    for (int t = 0; t < n; t++) {
        for (int j = E; j < stride; j++)
            ck_assert_double_eq(grad[(size_t)t * stride + j], 0.0);
        test_check_gradient("balance + z-loss ds", bc.logits + (size_t)t * stride, E, 1,
                            grad + (size_t)t * stride, 1e-3, FD_TOL, balance_loss, &bc);
    }

    free(base);
    free(grad);
    free(bc.logits);
    free(bc.probs);
    free(bc.demand);
}

START_TEST(test_balance_grad)
{
    check_balance_case(7, 6, 2, 6, 11);  /* top-k logits (N,E) */
    check_balance_case(7, 6, 1, 12, 12); /* DirMoE's s inside (N,2E) rows */
    check_balance_case(1, 3, 1, 3, 13);  /* one token */
    check_balance_case(4, 1, 1, 2, 14);  /* one expert */
}
END_TEST

static Suite *router_loss_suite(void)
{
    Suite *s = suite_create("router_loss");
    TCase *tc = tcase_create("reference");

    tcase_add_test(tc, test_reg_batch_fixed);
    tcase_add_test(tc, test_reg_batch_adaptive);
    tcase_add_test(tc, test_reg_token_fixed);
    tcase_add_test(tc, test_reg_token_adaptive);
    tcase_add_test(tc, test_reg_one_token);
    tcase_add_test(tc, test_reg_k_equals_e);
    tcase_add_test(tc, test_reg_single_expert);
    tcase_add_test(tc, test_reg_kl_d_at_prior);
    tcase_add_test(tc, test_reg_extremes);
    tcase_add_test(tc, test_balance_grad);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(router_loss_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
