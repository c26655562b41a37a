/*
 * Reference top-k (renormalised, GShard/Mixtral) and Switch (k = 1, not
 * renormalised) routing: the forward against an independent softmax and
 * ranking, finite-difference gradients in double at a fixed selection, and
 * edge cases (ties, logits of +-80, one expert, k = E).
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

typedef struct topk_case {
    dm_topk_params p;
    double *logits, *probs, *w, *r;
    int32_t *mask, *mask0;  /* mask0: the selection at the base point */
} topk_case;

static topk_case topk_case_make(int n, int E, int k, int renormalize)
{
    topk_case tc;
    size_t ne = (size_t)n * E;

    tc.p.n_tokens = n;
    tc.p.n_expert = E;
    tc.p.k = k;
    tc.p.renormalize = renormalize;
    tc.logits = test_calloc(ne, sizeof(double));
    tc.probs = test_calloc(ne, sizeof(double));
    tc.w = test_calloc(ne, sizeof(double));
    tc.r = test_calloc(ne, sizeof(double));
    tc.mask = test_calloc(ne, sizeof(int32_t));
    tc.mask0 = test_calloc(ne, sizeof(int32_t));
    return tc;
}

static void topk_case_free(topk_case *tc)
{
    free(tc->logits);
    free(tc->probs);
    free(tc->w);
    free(tc->r);
    free(tc->mask);
    free(tc->mask0);
}

static void topk_forward(topk_case *tc)
{
    dm_ref_d_topk_route_forward(&tc->p, tc->logits, tc->probs, tc->mask, tc->w);
}

/* L = sum r * w; the selection must not change under the finite-difference steps. */
static double topk_loss(void *ctx)
{
    topk_case *tc = ctx;
    size_t ne = (size_t)tc->p.n_tokens * tc->p.n_expert;
    double L = 0.0;

    topk_forward(tc);
    for (size_t i = 0; i < ne; i++) {
        ck_assert_msg(tc->mask[i] == tc->mask0[i], "selection changed at element %zu under a step", i);
        L += tc->r[i] * tc->w[i];
    }
    return L;
}

/* Checks probs, mask and w of every token against an independent computation. */
static void check_topk_forward(const topk_case *tc)
{
    int E = tc->p.n_expert;

    for (int t = 0; t < tc->p.n_tokens; t++) {
        const double *s = tc->logits + (size_t)t * E;
        double smax = s[0], sum = 0.0, p[E];
        for (int e = 1; e < E; e++)
            smax = fmax(smax, s[e]);
        for (int e = 0; e < E; e++)
            sum += exp(s[e] - smax);

        double kept = 0.0;
        int sel[E];
        for (int e = 0; e < E; e++) {
            p[e] = exp(s[e] - smax) / sum;
            ck_assert_double_eq_tol(tc->probs[(size_t)t * E + e], p[e], 1e-15);

            /* Expert e is kept when fewer than k experts beat it (ties: lower index beats). */
            int beaten_by = 0;
            for (int j = 0; j < E; j++)
                beaten_by += s[j] > s[e] || (s[j] == s[e] && j < e);
            sel[e] = beaten_by < tc->p.k;
            ck_assert_int_eq(tc->mask[(size_t)t * E + e], sel[e]);
            if (sel[e])
                kept += p[e];
        }
        for (int e = 0; e < E; e++) {
            double w = sel[e] ? (tc->p.renormalize ? p[e] / kept : p[e]) : 0.0;
            ck_assert_double_eq_tol(tc->w[(size_t)t * E + e], w, 1e-15);
        }
    }
}

static void check_topk_case(int n, int E, int k, int renormalize, uint64_t seed)
{
    test_rng rng = {seed};
    topk_case tc = topk_case_make(n, E, k, renormalize);
    size_t ne = (size_t)n * E;

    test_fill_normal(&rng, tc.logits, ne, 1.5);
    test_fill_normal(&rng, tc.r, ne, 1.0);
    topk_forward(&tc);
    check_topk_forward(&tc);
    memcpy(tc.mask0, tc.mask, ne * sizeof(int32_t));

    /* Backward accumulates: start from random values and subtract them after. */
    double *base = test_calloc(ne, sizeof(double));
    double *grad = test_calloc(ne, sizeof(double));
    test_fill_normal(&rng, base, ne, 1.0);
    memcpy(grad, base, ne * sizeof(double));
    dm_ref_d_topk_route_backward(&tc.p, grad, tc.r, tc.probs, tc.mask, tc.w);
    for (size_t i = 0; i < ne; i++)
        grad[i] -= base[i];

    test_check_gradient(renormalize ? "topk ds" : "switch ds", tc.logits, ne, 1, grad, 1e-3, FD_TOL,
                        topk_loss, &tc);
    free(base);
    free(grad);
    topk_case_free(&tc);
}

START_TEST(test_topk_grad)
{
    check_topk_case(5, 6, 1, 1, 1);
    check_topk_case(5, 6, 2, 1, 2);
    check_topk_case(5, 6, 6, 1, 3);
    check_topk_case(1, 8, 3, 1, 4);
}
END_TEST

START_TEST(test_switch_grad)
{
    check_topk_case(5, 6, 1, 0, 5);
    check_topk_case(5, 6, 2, 0, 6);
    check_topk_case(1, 4, 1, 0, 7);
}
END_TEST

START_TEST(test_topk_ties_and_extremes)
{
    int E = 5;
    topk_case tc = topk_case_make(3, E, 2, 1);
    double s[3][5] = {{1.0, 1.0, 1.0, 1.0, 1.0},
                      {80.0, -80.0, 80.0, -80.0, 0.0},
                      {-80.0, -80.0, -80.0, -80.0, 80.0}};

    memcpy(tc.logits, s, sizeof s);
    topk_forward(&tc);
    check_topk_forward(&tc);

    /* All equal: the two lowest indices, each with weight 1/2. */
    ck_assert_int_eq(tc.mask[0], 1);
    ck_assert_int_eq(tc.mask[1], 1);
    ck_assert_double_eq_tol(tc.w[0], 0.5, 1e-15);

    /* Two +80 experts share the weight; the rest underflow but stay finite. */
    ck_assert_double_eq_tol(tc.w[E + 0], 0.5, 1e-15);
    ck_assert_double_eq_tol(tc.w[E + 2], 0.5, 1e-15);
    for (int i = 0; i < 3 * E; i++)
        ck_assert(isfinite(tc.probs[i]) && isfinite(tc.w[i]));

    /* Switch on the same data: w = p of the kept expert, so equal logits give 1/E. */
    tc.p.k = 1;
    tc.p.renormalize = 0;
    topk_forward(&tc);
    check_topk_forward(&tc);
    ck_assert_int_eq(tc.mask[0], 1);
    ck_assert_double_eq_tol(tc.w[0], 1.0 / E, 1e-15);
    ck_assert_double_eq_tol(tc.w[2 * E + 4], 1.0, 1e-15);

    double dlogits[15] = {0};
    for (int i = 0; i < 3 * E; i++)
        tc.r[i] = 1.0;
    dm_ref_d_topk_route_backward(&tc.p, dlogits, tc.r, tc.probs, tc.mask, tc.w);
    for (int i = 0; i < 3 * E; i++)
        ck_assert(isfinite(dlogits[i]));
    topk_case_free(&tc);
}
END_TEST

START_TEST(test_topk_single_expert)
{
    topk_case tc = topk_case_make(4, 1, 1, 1);
    double dlogits[4] = {0};

    for (int t = 0; t < 4; t++) {
        tc.logits[t] = 3.0 * t - 4.0;
        tc.r[t] = 1.0 + t;
    }
    topk_forward(&tc);
    for (int t = 0; t < 4; t++) {
        ck_assert_int_eq(tc.mask[t], 1);
        ck_assert_double_eq(tc.w[t], 1.0);
    }
    dm_ref_d_topk_route_backward(&tc.p, dlogits, tc.r, tc.probs, tc.mask, tc.w);
    for (int t = 0; t < 4; t++)
        ck_assert_double_eq(dlogits[t], 0.0);
    topk_case_free(&tc);
}
END_TEST

static Suite *router_topk_suite(void)
{
    Suite *s = suite_create("router_topk");
    TCase *tc = tcase_create("reference");

    tcase_add_test(tc, test_topk_grad);
    tcase_add_test(tc, test_switch_grad);
    tcase_add_test(tc, test_topk_ties_and_extremes);
    tcase_add_test(tc, test_topk_single_expert);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(router_topk_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
