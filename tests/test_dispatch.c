/*
 * Reference dispatch and combine: dispatch_build against an independent
 * grouping (dropless and with capacity dropping), gather and combine
 * forward against direct sums, and their backward passes by finite
 * differences in double.
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

typedef struct dispatch_out {
    int32_t *slot, *counts, *demand, *offsets, *token_of_slot;
} dispatch_out;

static dispatch_out dispatch_run(int n, int E, int capacity, const int32_t *mask)
{
    dispatch_out d;

    d.slot = test_calloc((size_t)n * E, sizeof(int32_t));
    d.counts = test_calloc(E, sizeof(int32_t));
    d.demand = test_calloc(E, sizeof(int32_t));
    d.offsets = test_calloc(E + 1, sizeof(int32_t));
    d.token_of_slot = test_calloc((size_t)n * E, sizeof(int32_t));
    dm_ref_d_dispatch_build(n, E, capacity, mask, d.slot, d.counts, d.demand, d.offsets,
                            d.token_of_slot);
    return d;
}

static void dispatch_free(dispatch_out *d)
{
    free(d->slot);
    free(d->counts);
    free(d->demand);
    free(d->offsets);
    free(d->token_of_slot);
}

/* Independent check: walk experts in order and tokens ascending, numbering kept assignments. */
static void check_dispatch(int n, int E, int capacity, const int32_t *mask, const dispatch_out *d)
{
    int next_slot = 0;

    for (int x = 0; x < E; x++) {
        int seen = 0;
        ck_assert_int_eq(d->offsets[x], next_slot);
        for (int t = 0; t < n; t++) {
            int32_t got = d->slot[(size_t)t * E + x];
            if (!mask[(size_t)t * E + x]) {
                ck_assert_int_eq(got, -1);
                continue;
            }
            seen++;
            if (capacity > 0 && seen > capacity) {
                ck_assert_msg(got == -1, "token %d expert %d beyond capacity %d has slot %d", t, x,
                              capacity, got);
                continue;
            }
            ck_assert_msg(got == next_slot, "token %d expert %d: slot %d, expected %d", t, x, got,
                          next_slot);
            ck_assert_int_eq(d->token_of_slot[next_slot], t);
            next_slot++;
        }
        ck_assert_int_eq(d->demand[x], seen);
        ck_assert_int_eq(d->counts[x], next_slot - d->offsets[x]);
    }
    ck_assert_int_eq(d->offsets[E], next_slot);
    for (int s = next_slot; s < n * E; s++)
        ck_assert_int_eq(d->token_of_slot[s], -1);
}

static int32_t *random_mask(test_rng *rng, int n, int E, double p_select)
{
    int32_t *mask = test_calloc((size_t)n * E, sizeof(int32_t));

    for (size_t i = 0; i < (size_t)n * E; i++)
        mask[i] = test_rng_uniform(rng) < p_select;
    return mask;
}

START_TEST(test_dispatch_dropless)
{
    test_rng rng = {1};
    int n = 11, E = 4;
    int32_t *mask = random_mask(&rng, n, E, 0.45);
    dispatch_out d = dispatch_run(n, E, 0, mask);

    check_dispatch(n, E, 0, mask, &d);
    for (int x = 0; x < E; x++)
        ck_assert_int_eq(d.counts[x], d.demand[x]);
    dispatch_free(&d);
    free(mask);
}
END_TEST

START_TEST(test_dispatch_capacity_drops)
{
    test_rng rng = {2};
    int n = 12, E = 3, capacity = 2;
    int32_t *mask = random_mask(&rng, n, E, 0.6);

    /* Expert 0 is wanted by every token, so it must drop tokens 2..11. */
    for (int t = 0; t < n; t++)
        mask[(size_t)t * E] = 1;
    dispatch_out d = dispatch_run(n, E, capacity, mask);

    check_dispatch(n, E, capacity, mask, &d);
    ck_assert_int_eq(d.demand[0], n);
    ck_assert_int_eq(d.counts[0], capacity);
    ck_assert_int_eq(d.slot[0], 0);
    ck_assert_int_eq(d.slot[E], 1);
    ck_assert_int_eq(d.slot[2 * E], -1);
    dispatch_free(&d);
    free(mask);
}
END_TEST

START_TEST(test_dispatch_empty_and_single)
{
    /* No assignment at all, and a single token on a single expert. */
    int32_t none[6] = {0};
    dispatch_out d = dispatch_run(2, 3, 0, none);
    check_dispatch(2, 3, 0, none, &d);
    ck_assert_int_eq(d.offsets[3], 0);
    dispatch_free(&d);

    int32_t one[1] = {1};
    d = dispatch_run(1, 1, 1, one);
    check_dispatch(1, 1, 1, one, &d);
    ck_assert_int_eq(d.slot[0], 0);
    dispatch_free(&d);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Gather and combine                                                        */

typedef struct moe_case {
    int n, E, C, S;
    dispatch_out d;
    int32_t *mask;
    double *x, *xg, *yg, *w, *y, *r_gather, *r_combine;
} moe_case;

static moe_case moe_case_make(int n, int E, int C, int capacity, uint64_t seed)
{
    test_rng rng = {seed};
    moe_case mc;

    mc.n = n;
    mc.E = E;
    mc.C = C;
    mc.mask = random_mask(&rng, n, E, 0.5);
    mc.d = dispatch_run(n, E, capacity, mc.mask);
    mc.S = mc.d.offsets[E];
    mc.x = test_calloc((size_t)n * C, sizeof(double));
    mc.xg = test_calloc((size_t)mc.S * C, sizeof(double));
    mc.yg = test_calloc((size_t)mc.S * C, sizeof(double));
    mc.w = test_calloc((size_t)n * E, sizeof(double));
    mc.y = test_calloc((size_t)n * C, sizeof(double));
    mc.r_gather = test_calloc((size_t)mc.S * C, sizeof(double));
    mc.r_combine = test_calloc((size_t)n * C, sizeof(double));
    test_fill_normal(&rng, mc.x, (size_t)n * C, 1.0);
    test_fill_normal(&rng, mc.yg, (size_t)mc.S * C, 1.0);
    test_fill_normal(&rng, mc.w, (size_t)n * E, 1.0);
    test_fill_normal(&rng, mc.r_gather, (size_t)mc.S * C, 1.0);
    test_fill_normal(&rng, mc.r_combine, (size_t)n * C, 1.0);
    return mc;
}

static void moe_case_free(moe_case *mc)
{
    dispatch_free(&mc->d);
    free(mc->mask);
    free(mc->x);
    free(mc->xg);
    free(mc->yg);
    free(mc->w);
    free(mc->y);
    free(mc->r_gather);
    free(mc->r_combine);
}

static double gather_loss(void *ctx)
{
    moe_case *mc = ctx;
    double L = 0.0;

    dm_ref_d_gather_forward(mc->S, mc->C, mc->xg, mc->x, mc->d.token_of_slot);
    for (size_t i = 0; i < (size_t)mc->S * mc->C; i++)
        L += mc->r_gather[i] * mc->xg[i];
    return L;
}

static double combine_loss(void *ctx)
{
    moe_case *mc = ctx;
    double L = 0.0;

    dm_ref_d_combine_forward(mc->n, mc->E, mc->C, mc->y, mc->yg, mc->d.slot, mc->w);
    for (size_t i = 0; i < (size_t)mc->n * mc->C; i++)
        L += mc->r_combine[i] * mc->y[i];
    return L;
}

static void check_gather_combine(int n, int E, int C, int capacity, uint64_t seed)
{
    moe_case mc = moe_case_make(n, E, C, capacity, seed);

    /* Gather forward copies token rows; backward scatter-adds (accumulating). */
    gather_loss(&mc);
    for (int s = 0; s < mc.S; s++)
        for (int j = 0; j < C; j++)
            ck_assert_double_eq(mc.xg[(size_t)s * C + j], mc.x[(size_t)mc.d.token_of_slot[s] * C + j]);
    double *dx = test_calloc((size_t)n * C, sizeof(double));
    for (size_t i = 0; i < (size_t)n * C; i++)
        dx[i] = 0.25;
    dm_ref_d_gather_backward(mc.S, C, dx, mc.r_gather, mc.d.token_of_slot);
    for (size_t i = 0; i < (size_t)n * C; i++)
        dx[i] -= 0.25;
    test_check_gradient("gather dx", mc.x, (size_t)n * C, 1, dx, 1e-3, FD_TOL, gather_loss, &mc);

    /* Combine forward against the direct sum over kept assignments. */
    combine_loss(&mc);
    for (int t = 0; t < n; t++) {
        for (int j = 0; j < C; j++) {
            double want = 0.0;
            for (int x = 0; x < E; x++) {
                int32_t sl = mc.d.slot[(size_t)t * E + x];
                if (sl >= 0)
                    want += mc.w[(size_t)t * E + x] * mc.yg[(size_t)sl * C + j];
            }
            ck_assert_double_eq_tol(mc.y[(size_t)t * C + j], want, 1e-14);
        }
    }

    /* Combine backward writes dyg and dw (dw is 0 for unselected or dropped assignments). */
    double *dyg = test_calloc((size_t)mc.S * C, sizeof(double));
    double *dw = test_calloc((size_t)n * E, sizeof(double));
    for (size_t i = 0; i < (size_t)n * E; i++)
        dw[i] = 123.0;
    dm_ref_d_combine_backward(n, E, C, dyg, dw, mc.r_combine, mc.yg, mc.d.slot, mc.w);
    for (size_t i = 0; i < (size_t)n * E; i++)
        if (mc.d.slot[i] < 0)
            ck_assert_double_eq(dw[i], 0.0);
    test_check_gradient("combine dyg", mc.yg, (size_t)mc.S * C, 1, dyg, 1e-3, FD_TOL, combine_loss, &mc);
    test_check_gradient("combine dw", mc.w, (size_t)n * E, 1, dw, 1e-3, FD_TOL, combine_loss, &mc);

    free(dx);
    free(dyg);
    free(dw);
    moe_case_free(&mc);
}

START_TEST(test_gather_combine_dropless)
{
    check_gather_combine(9, 4, 5, 0, 21);
}
END_TEST

START_TEST(test_gather_combine_capacity)
{
    check_gather_combine(12, 3, 4, 2, 22);
}
END_TEST

START_TEST(test_gather_combine_one_token)
{
    check_gather_combine(1, 5, 3, 0, 23);
}
END_TEST

static Suite *dispatch_suite(void)
{
    Suite *s = suite_create("dispatch");
    TCase *tc = tcase_create("reference");

    tcase_add_test(tc, test_dispatch_dropless);
    tcase_add_test(tc, test_dispatch_capacity_drops);
    tcase_add_test(tc, test_dispatch_empty_and_single);
    tcase_add_test(tc, test_gather_combine_dropless);
    tcase_add_test(tc, test_gather_combine_capacity);
    tcase_add_test(tc, test_gather_combine_one_token);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(dispatch_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
