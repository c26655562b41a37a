/*
 * Sampling statistics of the reference DirMoE routing forward (float build,
 * the one the plugin runs), with Philox noise drawn by the op itself:
 *  - the gate s + l > 0, with l from the op's u output, fires with
 *    probability sigmoid(s), measured before the at-least-one and k_max rules;
 *  - with k_max = E the realised count has mean sum pi + prod(1 - pi);
 *  - with every expert selected the weights are Dirichlet(alpha): mean
 *    alpha_e / A and variance alpha_e (A - alpha_e) / (A^2 (A + 1)).
 *
 * Each check is a two-sided z-test at |z| < 4.5 (false-failure rate 6.8e-6
 * under the normal approximation); with the 8 checks below, a correct
 * implementation fails with probability below 6e-5 for a random seed. The
 * seeds are fixed, so a run is deterministic.
 */
#include "config.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>

#include "ref_ops.h"

#include "router_util.h"

#define Z_LIMIT 4.5

static double sigmoid_ref(double x)
{
    return 1.0 / (1.0 + exp(-x));
}

typedef struct float_route {
    dm_dirmoe_params p;
    float *logits, *u, *log_g, *zt, *alpha, *w;
    int32_t *mask;
    uint32_t fallbacks;
} float_route;

/* N tokens that all share the logits row s (E), c (E). */
static float_route float_route_run(int n, int E, const double *s, const double *c, uint64_t seed)
{
    float_route fr = {0};
    size_t ne = (size_t)n * E;

    fr.p.n_tokens = n;
    fr.p.n_expert = E;
    fr.p.k_max = E;
    fr.p.selection = DM_SELECTION_HARD;
    fr.p.fixed_noise = 0;
    fr.p.tau = 1.0f;
    fr.p.alpha_min = 1e-2f;
    fr.p.alpha_max = 1e4f;
    fr.p.rng.seed = seed;
    fr.p.rng.layer = 1;
    fr.p.rng.step = 1000;
    fr.p.rng.token_base = 12345;
    fr.logits = test_calloc(2 * ne, sizeof(float));
    fr.u = test_calloc(ne, sizeof(float));
    fr.log_g = test_calloc(ne, sizeof(float));
    fr.zt = test_calloc(ne, sizeof(float));
    fr.alpha = test_calloc(ne, sizeof(float));
    fr.w = test_calloc(ne, sizeof(float));
    fr.mask = test_calloc(ne, sizeof(int32_t));

    for (int t = 0; t < n; t++) {
        for (int e = 0; e < E; e++) {
            fr.logits[(size_t)t * 2 * E + e] = (float)s[e];
            fr.logits[(size_t)t * 2 * E + E + e] = (float)c[e];
        }
    }
    dm_ref_f_dirmoe_route_forward(&fr.p, fr.logits, fr.u, fr.log_g, fr.zt, fr.alpha, fr.mask, fr.w,
                                  &fr.fallbacks);
    return fr;
}

static void float_route_free(float_route *fr)
{
    free(fr->logits);
    free(fr->u);
    free(fr->log_g);
    free(fr->zt);
    free(fr->alpha);
    free(fr->w);
    free(fr->mask);
}

START_TEST(test_stats_gate_and_count)
{
    enum { N = 20000, E = 4 };
    const double s[E] = {-1.5, -0.3, 0.4, 2.0};
    const double c[E] = {0.0, 0.0, 0.0, 0.0};
    float_route fr = float_route_run(N, E, s, c, 0xD1B54A32D192ED03ull);
    long fired[E] = {0};
    double count_sum = 0.0, count_sq = 0.0;

    ck_assert_uint_eq(fr.fallbacks, 0);
    for (int t = 0; t < N; t++) {
        int gate[E], n_gate = 0, count = 0;
        for (int e = 0; e < E; e++) {
            double u = fr.u[(size_t)t * E + e];
            ck_assert(u > 0.0 && u < 1.0);
            gate[e] = s[e] + log(u) - log1p(-u) > 0.0;
            fired[e] += gate[e];
            n_gate += gate[e];
            count += fr.mask[(size_t)t * E + e];
        }

        /* With k_max = E the rules only act on a token whose gate selected nothing. */
        if (n_gate > 0)
            for (int e = 0; e < E; e++)
                ck_assert_int_eq(fr.mask[(size_t)t * E + e], gate[e]);
        else
            ck_assert_int_eq(count, 1);

        count_sum += count;
        count_sq += (double)count * count;
    }

    double prod = 1.0, sum_pi = 0.0;
    for (int e = 0; e < E; e++) {
        double pi = sigmoid_ref(s[e]);
        double z = test_z((double)fired[e] / N, pi, pi * (1.0 - pi), N);
        ck_assert_msg(fabs(z) < Z_LIMIT, "expert %d: gate frequency %.5f, expected pi = %.5f (z = %.2f)",
                      e, (double)fired[e] / N, pi, z);
        sum_pi += pi;
        prod *= 1.0 - pi;
    }

    double mean = count_sum / N;
    double var = count_sq / N - mean * mean;
    double expected = sum_pi + prod;
    double z = test_z(mean, expected, var, N);
    ck_assert_msg(fabs(z) < Z_LIMIT, "realised count %.5f, expected sum pi + prod(1 - pi) = %.5f (z = %.2f)",
                  mean, expected, z);
    float_route_free(&fr);
}
END_TEST

START_TEST(test_stats_dirichlet_weights)
{
    enum { N = 20000, E = 3 };
    const double alpha[E] = {0.3, 1.5, 6.0};
    const double s[E] = {80.0, 80.0, 80.0}; /* every expert passes the gate */
    double c[E], total = 0.0;

    for (int e = 0; e < E; e++)
        c[e] = log(expm1(alpha[e] - (double)1e-2f));
    float_route fr = float_route_run(N, E, s, c, 0x9E3779B97F4A7C15ull);
    ck_assert_uint_eq(fr.fallbacks, 0);

    /* The op's float alpha, which the sampler used. */
    for (int e = 0; e < E; e++)
        total += fr.alpha[e];

    for (int e = 0; e < E; e++) {
        double sum = 0.0;
        for (int t = 0; t < N; t++) {
            ck_assert_int_eq(fr.mask[(size_t)t * E + e], 1);
            sum += fr.w[(size_t)t * E + e];
        }
        double a = fr.alpha[e];
        double mean = a / total;
        double var = a * (total - a) / (total * total * (total + 1.0));
        double z = test_z(sum / N, mean, var, N);
        ck_assert_msg(fabs(z) < Z_LIMIT, "expert %d (alpha %.3g): mean weight %.5f, expected %.5f (z = %.2f)",
                      e, a, sum / N, mean, z);
    }
    float_route_free(&fr);
}
END_TEST

static Suite *router_stats_suite(void)
{
    Suite *s = suite_create("router_stats");
    TCase *tc = tcase_create("reference_float");

    tcase_add_test(tc, test_stats_gate_and_count);
    tcase_add_test(tc, test_stats_dirichlet_weights);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(router_stats_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
