/*
 * Shared helpers of the router tests: a seeded generator for test data and a
 * finite-difference gradient check in double.
 *
 * Gradients are compared element by element with
 *   err = |analytic - numeric| / max(|analytic|, |numeric|, 1e-4 * max_j |analytic_j|, 1e-12),
 * so elements far below the gradient's scale are compared against that scale
 * (their finite difference is rounding noise of the loss). The numeric value
 * is the 4-point central stencil (8 (f(x+h) - f(x-h)) - (f(x+2h) - f(x-2h))) / 12h,
 * whose truncation error is O(h^4). Set DM_TEST_VERBOSE=1 to print the largest
 * error of every check.
 */
#ifndef DM_TEST_ROUTER_UTIL_H
#define DM_TEST_ROUTER_UTIL_H

#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* splitmix64: test data only, never the library's Philox streams. */
typedef struct test_rng {
    uint64_t state;
} test_rng;

static inline uint64_t test_rng_next(test_rng *r)
{
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1). */
static inline double test_rng_uniform(test_rng *r)
{
    return ((double)(test_rng_next(r) >> 11) + 0.5) * 0x1p-53;
}

/* Uniform in (lo, hi). */
static inline double test_rng_range(test_rng *r, double lo, double hi)
{
    return lo + (hi - lo) * test_rng_uniform(r);
}

static inline double test_rng_normal(test_rng *r)
{
    double u0 = test_rng_uniform(r), u1 = test_rng_uniform(r);
    return sqrt(-2.0 * log(u0)) * cos(2.0 * M_PI * u1);
}

static inline void test_fill_normal(test_rng *r, double *x, size_t n, double scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = scale * test_rng_normal(r);
}

static inline void *test_calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    ck_assert_ptr_nonnull(p);
    return p;
}

/* A scalar loss of the test's current inputs. */
typedef double (*test_loss_fn)(void *ctx);

/* 4-point central difference of loss w.r.t. *x (restored afterwards). */
static inline double test_fd_derivative(double *x, double h, test_loss_fn loss, void *ctx)
{
    double x0 = *x;

    *x = x0 + h;
    double fp1 = loss(ctx);
    *x = x0 - h;
    double fm1 = loss(ctx);
    *x = x0 + 2 * h;
    double fp2 = loss(ctx);
    *x = x0 - 2 * h;
    double fm2 = loss(ctx);
    *x = x0;
    return (8.0 * (fp1 - fm1) - (fp2 - fm2)) / (12.0 * h);
}

/* Checks grad[i] = dloss/dx[i] for the n inputs at stride `stride` starting at x,
 * and returns the largest relative error (definition in the header comment). */
static inline double test_check_gradient(const char *what, double *x, size_t n, size_t stride,
                                         const double *grad, double h, double tol,
                                         test_loss_fn loss, void *ctx)
{
    double scale = 0.0, worst = 0.0;

    for (size_t i = 0; i < n; i++)
        if (fabs(grad[i * stride]) > scale)
            scale = fabs(grad[i * stride]);

    for (size_t i = 0; i < n; i++) {
        double numeric = test_fd_derivative(&x[i * stride], h, loss, ctx);
        double analytic = grad[i * stride];
        double denom = fmax(fmax(fabs(analytic), fabs(numeric)), fmax(1e-4 * scale, 1e-12));
        double err = fabs(analytic - numeric) / denom;

        ck_assert_msg(isfinite(analytic), "%s: analytic gradient [%zu] = %g is not finite", what, i,
                      analytic);
        ck_assert_msg(err <= tol, "%s: gradient [%zu] analytic %.12g, finite difference %.12g, "
                      "relative error %.3g > %.1g", what, i, analytic, numeric, err, tol);
        if (err > worst)
            worst = err;
    }
    if (getenv("DM_TEST_VERBOSE"))
        printf("%s: %zu elements, largest relative error %.2e\n", what, n, worst);
    return worst;
}

/* Two-sided z statistic of an observed mean against its expectation. */
static inline double test_z(double observed_mean, double expected_mean, double variance, double n)
{
    return (observed_mean - expected_mean) / sqrt(variance / n);
}

#endif
