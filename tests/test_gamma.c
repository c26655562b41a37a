/*
 * Statistical tests of the Marsaglia-Tsang Gamma sampler and of the implicit
 * gradient d log g/d alpha. Every test uses fixed seeds, so results are
 * reproducible; each comment states the false-failure rate a correct sampler
 * would have over random seeds.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "dm_math.h"

#define SEED 20240611ull

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static const double ks_alphas[] = {1e-3, 0.01, 0.1, 0.5, 1.0, 2.5, 10.0, 100.0, 1e4};

/* Kolmogorov-Smirnov of n = 4000 draws of log g against exp(dm_log_gamma_p):
 * the critical value 1.95 / sqrt(n) has a false-failure rate of 1e-3 per alpha. */
START_TEST(gamma_sample_ks)
{
    enum { N = 4000 };
    static double log_g[N];
    float alpha = (float)ks_alphas[_i];

    for (int i = 0; i < N; i++) {
        int fallback = -1;
        float lg = dm_gamma_sample_logf(alpha, SEED, (uint32_t)i, (uint32_t)_i, 7, &fallback);
        ck_assert_int_eq(fallback, 0);
        ck_assert(isfinite(lg));
        log_g[i] = lg;
    }
    qsort(log_g, N, sizeof log_g[0], compare_double);

    double d_max = 0;
    for (int i = 0; i < N; i++) {
        double cdf = exp(dm_log_gamma_p((double)alpha, log_g[i]));
        d_max = fmax(d_max, fmax(fabs(cdf - (double)i / N), fabs((double)(i + 1) / N - cdf)));
    }
    double critical = 1.95 / sqrt((double)N);
    printf("KS alpha %g: D = %.4f (critical %.4f)\n", (double)alpha, d_max, critical);
    ck_assert_msg(d_max < critical, "alpha %g: KS D %g >= %g", (double)alpha, d_max, critical);
}
END_TEST

/* Softmax of E independent log-gammas is Dirichlet(alpha): each component's
 * mean alpha_e / A and variance alpha_e (A - alpha_e) / (A^2 (A + 1)), checked
 * to 4.5 standard errors (false-failure rate about 7e-6 per check, 8 checks). */
START_TEST(dirichlet_moments)
{
    enum { E = 4, N = 20000 };
    const float alpha[E] = {0.05f, 0.5f, 2.0f, 10.0f};
    double a_sum = 0;
    for (int e = 0; e < E; e++)
        a_sum += alpha[e];

    static double w[N][E];
    for (int t = 0; t < N; t++) {
        double lg[E], vmax = -INFINITY, z = 0;
        for (int e = 0; e < E; e++) {
            lg[e] = dm_gamma_sample_logf(alpha[e], SEED + 1, (uint32_t)(t * E + e), 0, 3, NULL);
            vmax = fmax(vmax, lg[e]);
        }
        for (int e = 0; e < E; e++)
            z += exp(lg[e] - vmax);
        for (int e = 0; e < E; e++)
            w[t][e] = exp(lg[e] - vmax) / z;
    }

    for (int e = 0; e < E; e++) {
        double mean = 0, m2 = 0, m4 = 0;
        for (int t = 0; t < N; t++)
            mean += w[t][e];
        mean /= N;
        for (int t = 0; t < N; t++) {
            double dv = w[t][e] - mean;
            m2 += dv * dv;
            m4 += dv * dv * dv * dv;
        }
        m2 /= N - 1;
        m4 /= N;

        double exact_mean = alpha[e] / a_sum;
        double exact_var = alpha[e] * (a_sum - alpha[e]) / (a_sum * a_sum * (a_sum + 1));
        double se_mean = sqrt(m2 / N);
        double se_var = sqrt((m4 - m2 * m2) / N);
        ck_assert_msg(fabs(mean - exact_mean) < 4.5 * se_mean, "expert %d: mean %g, exact %g", e,
                      mean, exact_mean);
        ck_assert_msg(fabs(m2 - exact_var) < 4.5 * se_var, "expert %d: variance %g, exact %g", e, m2,
                      exact_var);
    }
}
END_TEST

static const double mc_alphas[] = {0.01, 0.3, 1.0, 2.5, 10.0, 100.0};

/* Monte-Carlo derivatives through the implicit gradient D = d log g/d alpha:
 * d/d alpha E[g] = E[g D] = 1, d/d alpha E[g^2] = E[2 g^2 D] = 2 alpha + 1 and
 * d/d alpha E[log g] = E[D] = trigamma(alpha), each to 4.5 standard errors
 * (false-failure rate about 7e-6 per check, 18 checks). */
START_TEST(implicit_gradient_monte_carlo)
{
    enum { N = 40000 };
    double alpha = mc_alphas[_i];
    double sum[3] = {0}, sum_sq[3] = {0};

    for (int i = 0; i < N; i++) {
        float lg = dm_gamma_sample_logf((float)alpha, SEED + 2, (uint32_t)i, 2, 5, NULL);
        double d = dm_gamma_dlogg_dalpha((float)alpha, lg);
        double g = exp((double)lg);
        double terms[3] = {g * d, 2 * g * g * d, d};
        for (int k = 0; k < 3; k++) {
            sum[k] += terms[k];
            sum_sq[k] += terms[k] * terms[k];
        }
    }

    /* The samples are drawn at alpha rounded to float, so the targets use that alpha. */
    double a = (float)alpha;
    double exact[3] = {1.0, 2 * a + 1, dm_trigamma(a)};
    const char *names[3] = {"dE[g]", "dE[g^2]", "dE[log g]"};
    for (int k = 0; k < 3; k++) {
        double mean = sum[k] / N;
        double se = sqrt((sum_sq[k] / N - mean * mean) / N);
        printf("alpha %g %s: %.5g (exact %.5g, %.1f se)\n", alpha, names[k], mean, exact[k],
               (mean - exact[k]) / se);
        ck_assert_msg(fabs(mean - exact[k]) < 4.5 * se, "alpha %g %s: %g, exact %g, se %g", alpha,
                      names[k], mean, exact[k], se);
    }
}
END_TEST

/* log g with P(alpha, g) = p, by bisection on log P in double. */
static double inverse_cdf_log(double alpha, double log_p)
{
    double lo = (log_p + dm_lgamma(alpha + 1)) / alpha - 1; /* P <= x^a / Gamma(a + 1) */
    double hi = log(alpha + 10 * sqrt(alpha) + 40);
    for (int it = 0; it < 200; it++) {
        double mid = 0.5 * (lo + hi);
        if (mid == lo || mid == hi)
            break;
        if (dm_log_gamma_p(alpha, mid) < log_p)
            lo = mid;
        else
            hi = mid;
    }
    return 0.5 * (lo + hi);
}

/* Central difference of log g at fixed F(g; alpha), step h = 1e-4 alpha,
 * against the implicit gradient. Deterministic. */
START_TEST(implicit_gradient_finite_difference)
{
    const double alphas[] = {0.01, 0.5, 3.0, 50.0, 1000.0};
    const double probs[] = {1e-4, 0.1, 0.5, 0.9, 0.99};
    double worst = 0;

    for (size_t i = 0; i < sizeof alphas / sizeof alphas[0]; i++) {
        for (size_t j = 0; j < sizeof probs / sizeof probs[0]; j++) {
            double a = alphas[i], log_p = log(probs[j]), h = 1e-4 * a;
            double fd = (inverse_cdf_log(a + h, log_p) - inverse_cdf_log(a - h, log_p)) / (2 * h);
            double grad = dm_gamma_dlogg_dalpha(a, inverse_cdf_log(a, log_p));
            double err = fabs(fd - grad) / fabs(grad);
            worst = fmax(worst, err);
            ck_assert_msg(err < 1e-5, "alpha %g F %g: finite difference %.10g, gradient %.10g", a,
                          probs[j], fd, grad);
        }
    }
    printf("finite difference at fixed F: worst relative difference %.2e\n", worst);
}
END_TEST

/* With one attempt allowed, an element whose attempt 0 is rejected falls back
 * to log alpha and reports it; with 64 it takes attempt 1 or later. Deterministic. */
START_TEST(gamma_fallback_reported)
{
    const float alpha = 1.5f;
    int found = 0;

    for (uint32_t index = 0; index < 10000 && !found; index++) {
        int fallback = -1;
        float one = dm_gamma_sample_logf_attempts(alpha, SEED, index, 0, 0, 1, &fallback);
        if (!fallback)
            continue;
        found = 1;
        ck_assert(one == logf(alpha));

        float full = dm_gamma_sample_logf(alpha, SEED, index, 0, 0, &fallback);
        ck_assert_int_eq(fallback, 0);
        ck_assert(isfinite(full));
    }
    ck_assert_msg(found, "no rejected first attempt in 10000 elements");

    int fallback = -1;
    float none = dm_gamma_sample_logf_attempts(alpha, SEED, 0, 0, 0, 0, &fallback);
    ck_assert_int_eq(fallback, 1);
    ck_assert(none == logf(alpha));
}
END_TEST

/* No fallback and no NaN/Inf over 2e5 draws spanning alpha in [1e-3, 1e4]. Deterministic. */
START_TEST(gamma_sample_finite_no_fallback)
{
    int fallbacks = 0;
    for (uint32_t i = 0; i < 200000; i++) {
        float alpha = powf(10.0f, -3.0f + 7.0f * (float)(i % 1000) / 999.0f);
        int fallback = 0;
        float lg = dm_gamma_sample_logf(alpha, SEED + 3, i, 1, 1, &fallback);
        fallbacks += fallback;
        ck_assert_msg(isfinite(lg), "alpha %g index %u: log g %g", (double)alpha, i, (double)lg);
        float d = dm_gamma_dlogg_dalphaf(alpha, lg);
        ck_assert_msg(isfinite(d), "alpha %g log g %g: gradient %g", (double)alpha, (double)lg, (double)d);
    }
    ck_assert_int_eq(fallbacks, 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gamma");
    TCase *tc = tcase_create("gamma");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, gamma_sample_ks, 0, (int)(sizeof ks_alphas / sizeof ks_alphas[0]));
    tcase_add_test(tc, dirichlet_moments);
    tcase_add_loop_test(tc, implicit_gradient_monte_carlo, 0,
                        (int)(sizeof mc_alphas / sizeof mc_alphas[0]));
    tcase_add_test(tc, implicit_gradient_finite_difference);
    tcase_add_test(tc, gamma_fallback_reported);
    tcase_add_test(tc, gamma_sample_finite_no_fallback);
    suite_add_tcase(s, tc);

    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
