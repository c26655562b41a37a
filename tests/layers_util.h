/*
 * Helpers shared by the reference-kernel tests: a small deterministic random
 * generator, norm-wise error measures and a central-difference gradient.
 * Everything is static so each test program includes its own copy.
 */
#ifndef DM_LAYERS_UTIL_H
#define DM_LAYERS_UTIL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* Floor of the norm in relative errors, so an all-zero reference gradient
 * compares by absolute error instead of dividing by zero. */
#define TL_NORM_FLOOR 1e-12

/* Step of the central differences. The truncation error is O(h^2) and the
 * rounding error O(eps |L| / h), both near 1e-10 for the losses used here. */
#define TL_FD_STEP 1e-5

/* splitmix64: fixed seeds give the same test data on every platform. */
typedef struct tl_rng {
    uint64_t state;
} tl_rng;

static inline uint64_t tl_next(tl_rng *rng)
{
    uint64_t z = (rng->state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Uniform in [lo, hi), with 53 random bits. */
static inline double tl_uniform(tl_rng *rng, double lo, double hi)
{
    return lo + (hi - lo) * (double)(tl_next(rng) >> 11) * 0x1.0p-53;
}

/* Uniform integer in [0, n). The modulo bias is irrelevant for test data. */
static inline int tl_int(tl_rng *rng, int n)
{
    return (int)(tl_next(rng) % (uint64_t)n);
}

/* Fills x with values in [lo, hi) that are exactly representable in float,
 * so the float and double kernels see identical inputs. */
static inline void tl_fill(tl_rng *rng, double *x, size_t n, double lo, double hi)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (double)(float)tl_uniform(rng, lo, hi);
}

static inline double *tl_alloc(size_t n)
{
    return calloc(n ? n : 1, sizeof(double));
}

static inline float *tl_to_float(const double *x, size_t n)
{
    float *out = calloc(n ? n : 1, sizeof(float));
    for (size_t i = 0; i < n; i++)
        out[i] = (float)x[i];
    return out;
}

/* ||got - want||_2 / max(||want||_2, TL_NORM_FLOOR). */
static inline double tl_rel_err(const double *got, const double *want, size_t n)
{
    double diff = 0.0, norm = 0.0;

    for (size_t i = 0; i < n; i++) {
        diff += (got[i] - want[i]) * (got[i] - want[i]);
        norm += want[i] * want[i];
    }
    return sqrt(diff) / fmax(sqrt(norm), TL_NORM_FLOOR);
}

/* The same measure for a float result against a double reference. */
static inline double tl_rel_err_f(const float *got, const double *want, size_t n)
{
    double diff = 0.0, norm = 0.0;

    for (size_t i = 0; i < n; i++) {
        diff += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
        norm += want[i] * want[i];
    }
    return sqrt(diff) / fmax(sqrt(norm), TL_NORM_FLOOR);
}

/* sum_i r[i] * y[i]: the scalar loss whose gradient with respect to y is r. */
static inline double tl_dot(const double *r, const double *y, size_t n)
{
    double sum = 0.0;

    for (size_t i = 0; i < n; i++)
        sum += r[i] * y[i];
    return sum;
}

/* Writes grad[i] = (L(x + h e_i) - L(x - h e_i)) / 2h for i < n, where
 * loss(ctx) evaluates L reading x. x is restored after each element. */
static inline void tl_numeric_grad(double *x, size_t n, double (*loss)(void *ctx), void *ctx,
                                   double *grad)
{
    for (size_t i = 0; i < n; i++) {
        double saved = x[i];

        x[i] = saved + TL_FD_STEP;
        double plus = loss(ctx);
        x[i] = saved - TL_FD_STEP;
        double minus = loss(ctx);
        x[i] = saved;

        grad[i] = (plus - minus) / (2.0 * TL_FD_STEP);
    }
}

#endif
