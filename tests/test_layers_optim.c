/*
 * Reference AdamW against a two-step example worked by hand. The
 * hyperparameters are powers of two or short binary fractions, so they are
 * exact in the float fields of dm_adamw_params and the moments are exact.
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>

#define REF_REAL double
#define REF_DOUBLE
#include "ref_ops.h"

void dm_ref_f_adamw(size_t n, const dm_adamw_params *p, float *params, const float *grads,
                    float *m, float *v);

static const dm_adamw_params base = {
    .lr = 0.125f, .beta1 = 0.75f, .beta2 = 0.875f, .eps = 0.0625f, .weight_decay = 0.25f, .t = 1,
};

/* Element 0 starts at 1 with gradients 0.5 then -0.25:
 *   t=1: m = 0.25*0.5 = 0.125, v = 0.125*0.25 = 0.03125, mhat = 0.5, vhat = 0.25,
 *        p = 1 - 0.125*(0.5/(0.5+0.0625) + 0.25*1) = 1 - 0.125*(8/9 + 1/4) = 247/288.
 *   t=2: m = 0.75*0.125 - 0.25*0.25 = 0.03125,
 *        v = 0.875*0.03125 + 0.125*0.0625 = 0.03515625,
 *        mhat = 0.03125/(1 - 0.75^2) = 1/14, vhat = 0.03515625/(1 - 0.875^2) = 0.15,
 *        p = 247/288 - 0.125*((1/14)/(sqrt(0.15) + 0.0625) + 0.25*247/288)
 *          = 0.81098750801167693611 (mpmath, 40 digits).
 * Element 1 starts at 2 with zero gradients, so only the decay acts:
 *   p = 2 * (1 - 0.125*0.25) = 1.9375, then 1.9375 * 0.96875 = 1.876953125. */
START_TEST(adamw_two_steps_double)
{
    double params[2] = {1.0, 2.0}, m[2] = {0.0, 0.0}, v[2] = {0.0, 0.0};
    const double g1[2] = {0.5, 0.0}, g2[2] = {-0.25, 0.0};
    dm_adamw_params p = base;

    dm_ref_d_adamw(2, &p, params, g1, m, v);
    ck_assert_double_eq(m[0], 0.125);
    ck_assert_double_eq(v[0], 0.03125);
    ck_assert_double_eq_tol(params[0], 247.0 / 288.0, 1e-15);
    ck_assert_double_eq(params[1], 1.9375);
    ck_assert_double_eq(m[1], 0.0);
    ck_assert_double_eq(v[1], 0.0);

    p.t = 2;
    dm_ref_d_adamw(2, &p, params, g2, m, v);
    ck_assert_double_eq(m[0], 0.03125);
    ck_assert_double_eq(v[0], 0.03515625);
    ck_assert_double_eq_tol(params[0], 0.81098750801167693611, 1e-15);
    ck_assert_double_eq(params[1], 1.876953125);
}
END_TEST

START_TEST(adamw_two_steps_float)
{
    float params[2] = {1.0f, 2.0f}, m[2] = {0.0f, 0.0f}, v[2] = {0.0f, 0.0f};
    const float g1[2] = {0.5f, 0.0f}, g2[2] = {-0.25f, 0.0f};
    dm_adamw_params p = base;

    dm_ref_f_adamw(2, &p, params, g1, m, v);
    p.t = 2;
    dm_ref_f_adamw(2, &p, params, g2, m, v);

    ck_assert_float_eq(m[0], 0.03125f);
    ck_assert_float_eq(v[0], 0.03515625f);
    ck_assert_float_eq_tol(params[0], 0.81098750801167693611f, 1e-7f);
    ck_assert_float_eq(params[1], 1.876953125f);
}
END_TEST

/* Zero weight decay: with g of constant sign the first step moves each
 * parameter by lr * g / (|g| + eps) exactly. */
START_TEST(adamw_first_step_without_decay)
{
    double params[3] = {0.0, 0.0, 0.0}, m[3] = {0}, v[3] = {0};
    const double g[3] = {2.0, -0.5, 1e-3};
    dm_adamw_params p = base;
    p.weight_decay = 0.0f;

    dm_ref_d_adamw(3, &p, params, g, m, v);
    for (int i = 0; i < 3; i++) {
        double want = -0.125 * g[i] / (fabs(g[i]) + 0.0625);
        ck_assert_double_eq_tol(params[i], want, 1e-15);
    }
}
END_TEST

static Suite *optim_suite(void)
{
    Suite *s = suite_create("reference adamw");
    TCase *tc = tcase_create("adamw");

    tcase_add_test(tc, adamw_two_steps_double);
    tcase_add_test(tc, adamw_two_steps_float);
    tcase_add_test(tc, adamw_first_step_without_decay);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(optim_suite());

    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
