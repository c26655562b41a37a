/*
 * Special functions against mpmath tables (the .tsv files in tests/data, made by
 * scripts/gen_gamma_tables.py at 50 digits), finiteness of the implicit
 * gradient far into the tails, and the Bernoulli prior solver.
 * Deterministic: no false failures. Worst errors per region are printed
 * for docs/ACCURACY.md.
 */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dm_math.h"

#ifndef DM_TEST_SRCDIR
#define DM_TEST_SRCDIR "."
#endif

/* Opens tests/data/<name> under $DIRMOE_TOP_SRCDIR, else the configured source tree. */
static FILE *open_table(const char *name)
{
    const char *top = getenv("DIRMOE_TOP_SRCDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/%s", top ? top : DM_TEST_SRCDIR, name);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s: set DIRMOE_TOP_SRCDIR to the source tree", path);
    return f;
}

/* Reads the next data row of up to 4 numbers; returns how many were read, 0 at the end. */
static int read_row(FILE *f, double v[4])
{
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n')
            continue;
        return sscanf(line, "%lf %lf %lf %lf", &v[0], &v[1], &v[2], &v[3]);
    }
    return 0;
}

static double rel_err(double got, double exact)
{
    return fabs(got - exact) / fabs(exact);
}

/* Error scaled by max(1, |exact|): absolute near zeros, relative elsewhere. */
static double mixed_err(double got, double exact)
{
    return fabs(got - exact) / fmax(1.0, fabs(exact));
}

START_TEST(specfun_against_mpmath)
{
    FILE *f = open_table("specfun.tsv");
    double v[4];
    double worst[6] = {0};
    int rows = 0;

    while (read_row(f, v) == 4) {
        double x = v[0];
        float xf = (float)x;
        double errs[6] = {
            mixed_err(dm_lgamma(x), v[1]), mixed_err(dm_digamma(x), v[2]),
            mixed_err(dm_trigamma(x), v[3]),
            /* The table's x are doubles; the float functions get x rounded to float,
             * so the float rows compare against the double function at that x. */
            mixed_err(dm_lgammaf(xf), dm_lgamma(xf)), mixed_err(dm_digammaf(xf), dm_digamma(xf)),
            mixed_err(dm_trigammaf(xf), dm_trigamma(xf)),
        };
        for (int i = 0; i < 6; i++)
            worst[i] = fmax(worst[i], errs[i]);
        rows++;
    }
    fclose(f);

    printf("specfun: %d rows, x in [1e-3, 1e6], worst err / max(1, |value|):\n", rows);
    printf("  double lgamma %.2e digamma %.2e trigamma %.2e\n", worst[0], worst[1], worst[2]);
    printf("  float  lgamma %.2e digamma %.2e trigamma %.2e (against double at the float x)\n",
           worst[3], worst[4], worst[5]);
    ck_assert_int_gt(rows, 150);
    for (int i = 0; i < 3; i++)
        ck_assert_msg(worst[i] < 1e-13, "double function %d error %g", i, worst[i]);
    for (int i = 3; i < 6; i++)
        ck_assert_msg(worst[i] < 2e-7, "float function %d error %g", i, worst[i]);
}
END_TEST

START_TEST(stirlerr_matches_lgamma)
{
    /* stirlerr is defined through lgamma; spot values from mpmath. */
    ck_assert_double_eq_tol(dm_stirlerr(1.0), 0.081061466795327258, 1e-15);
    ck_assert_double_eq_tol(dm_stirlerr(10.0), 0.0083305634333628713, 1e-15);
    ck_assert_double_eq_tol(dm_stirlerr(1e4) * 1e4, 0.0833333333055555556, 1e-13);
}
END_TEST

/* Regions of the gradient table: alpha < 1, 1 <= alpha < 20, alpha >= 20, each
 * split into the lower (F < 1/2) and upper half. */
static int grad_region(double alpha, double q)
{
    int band = alpha < 1.0 ? 0 : alpha < 20.0 ? 1 : 2;
    return 2 * band + (q >= 0.5);
}

static const char *const region_names[6] = {
    "alpha < 1, F < 1/2",       "alpha < 1, F >= 1/2",       "1 <= alpha < 20, F < 1/2",
    "1 <= alpha < 20, F >= 1/2", "alpha >= 20, F < 1/2",     "alpha >= 20, F >= 1/2",
};

START_TEST(gamma_gradient_against_mpmath)
{
    FILE *f = open_table("gamma_grad.tsv");
    double v[4];
    double worst_d[6] = {0}, worst_f[6] = {0}, worst_p = 0;
    int rows = 0;

    while (read_row(f, v) == 4) {
        double alpha = v[0], log_g = v[1], q = v[2], exact = v[3];
        int r = grad_region(alpha, q);

        double got = dm_gamma_dlogg_dalpha(alpha, log_g);
        worst_d[r] = fmax(worst_d[r], rel_err(got, exact));

        /* The float function takes float inputs; the exact value at the rounded
         * inputs comes from the double function, whose own error is 1e5 times smaller. */
        float af = (float)alpha, lf = (float)log_g;
        float gotf = dm_gamma_dlogg_dalphaf(af, lf);
        worst_f[r] = fmax(worst_f[r], rel_err(gotf, dm_gamma_dlogg_dalpha(af, lf)));
        ck_assert_msg(isfinite(gotf), "float gradient not finite at alpha %g log g %g", alpha, log_g);

        /* The table's F has 8 significant digits. */
        double p = exp(dm_log_gamma_p(alpha, log_g));
        double perr = q < 0.5 ? rel_err(p, q) : fabs(p - q);
        worst_p = fmax(worst_p, perr);
        rows++;
    }
    fclose(f);

    printf("d log g/d alpha: %d rows, alpha in [1e-3, 1e4], log g in its [1e-6, 1 - 1e-6] quantiles\n",
           rows);
    printf("  %-28s %-12s %-12s\n", "region", "double", "float");
    for (int r = 0; r < 6; r++)
        printf("  %-28s %.2e     %.2e\n", region_names[r], worst_d[r], worst_f[r]);
    printf("  log P(alpha, g): worst error %.2e (relative for F < 1/2, absolute above)\n", worst_p);

    ck_assert_int_gt(rows, 1000);
    for (int r = 0; r < 6; r++) {
        ck_assert_msg(worst_d[r] <= 1e-6, "double gradient, %s: relative error %g", region_names[r],
                      worst_d[r]);
        ck_assert_msg(worst_f[r] <= 1e-4, "float gradient, %s: relative error %g", region_names[r],
                      worst_f[r]);
    }
    ck_assert_msg(worst_p < 1e-7, "log P error %g", worst_p);
}
END_TEST

START_TEST(gamma_gradient_finite_in_tails)
{
    /* Every (alpha, log g) from far below the 1e-6 quantile (log g down to
     * log alpha - 2e4 / alpha) to far above exp's range gives a finite, non-negative gradient. */
    const double extremes[] = {-1e30, -1e6, -3e4, -700, -100, 60, 89, 100, 710, 1e4, 1e30};
    int checked = 0;

    for (int i = 0; i <= 70; i++) {
        double alpha = pow(10.0, -3.0 + i / 10.0);
        double log_a = log(alpha);
        for (int j = 0; j <= 400; j++) {
            double log_g = log_a + (-2e4 / alpha) * pow(1.0 - j / 400.0, 4) + 3.0 * j / 400.0 * (1 + 3 / sqrt(alpha));
            double d = dm_gamma_dlogg_dalpha(alpha, log_g);
            float df = dm_gamma_dlogg_dalphaf((float)alpha, (float)log_g);
            ck_assert_msg(isfinite(d) && d >= 0, "double at alpha %g log g %g: %g", alpha, log_g, d);
            ck_assert_msg(isfinite(df) && df >= 0, "float at alpha %g log g %g: %g", alpha, log_g, df);
            checked++;
        }
        for (size_t j = 0; j < sizeof extremes / sizeof extremes[0]; j++) {
            double d = dm_gamma_dlogg_dalpha(alpha, extremes[j]);
            float df = dm_gamma_dlogg_dalphaf((float)alpha, (float)extremes[j]);
            ck_assert_msg(isfinite(d) && d >= 0, "double at alpha %g log g %g: %g", alpha, extremes[j], d);
            ck_assert_msg(isfinite(df) && df >= 0, "float at alpha %g log g %g: %g", alpha,
                          extremes[j], df);
            double lp = dm_log_gamma_p(alpha, extremes[j]);
            ck_assert_msg(!isnan(lp) && lp <= 0, "log P at alpha %g log g %g: %g", alpha, extremes[j], lp);
        }
    }
    ck_assert_int_gt(checked, 20000);
}
END_TEST

START_TEST(solve_p0_values)
{
    ck_assert_double_eq_tol(dm_solve_p0(8, 2.0), 0.2354, 5e-5);
    double p = dm_solve_p0(8, 2.0);
    ck_assert_double_eq_tol(8 * p + pow(1 - p, 8), 2.0, 1e-12);
    ck_assert_double_eq(dm_solve_p0(8, 1.0), 1e-6);
    ck_assert_double_eq(dm_solve_p0(8, 8.0), 1.0 - 1e-6);
    ck_assert_double_eq(dm_solve_p0(8, 0.5), 1e-6);
}
END_TEST

START_TEST(logistic_functions_extremes)
{
    ck_assert_double_eq_tol(dm_softplus(0.0), log(2.0), 1e-15);
    ck_assert_double_eq(dm_softplus(1000.0), 1000.0);
    ck_assert_double_eq_tol(dm_softplus(-50.0), exp(-50.0), 1e-35);
    ck_assert_float_eq(dm_softplusf(200.0f), 200.0f);
    ck_assert(dm_softplusf(-200.0f) >= 0.0f);
    ck_assert_double_eq(dm_sigmoid(-1000.0), 0.0);
    ck_assert_double_eq(dm_sigmoid(1000.0), 1.0);
    ck_assert_double_eq_tol(dm_sigmoid(-40.0), exp(-40.0), 1e-30);
    ck_assert(dm_sigmoidf(0.0f) == 0.5f);
    ck_assert(isfinite(dm_sigmoidf(-200.0f)) && isfinite(dm_sigmoidf(200.0f)));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("specfun");
    TCase *tc = tcase_create("specfun");
    tcase_add_test(tc, specfun_against_mpmath);
    tcase_add_test(tc, stirlerr_matches_lgamma);
    tcase_add_test(tc, gamma_gradient_against_mpmath);
    tcase_add_test(tc, gamma_gradient_finite_in_tails);
    tcase_add_test(tc, solve_p0_values);
    tcase_add_test(tc, logistic_functions_extremes);
    suite_add_tcase(s, tc);

    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
