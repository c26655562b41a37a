/*
 * Special functions of the DirMoE router: log-gamma, digamma, trigamma, the
 * Stirling-series error, the regularised lower incomplete gamma function and
 * the implicit reparameterisation gradient of a Gamma(alpha, 1) sample.
 *
 * Everything is plain C over log, exp, log1p, expm1 and sqrt, so the OpenCL
 * kernels can carry the same algorithms. The float versions compute in double
 * and round once, except dm_gamma_dlogg_dalphaf, which is float throughout
 * (the path of devices without fp64). docs/ACCURACY.md lists the method per
 * region and the measured errors.
 */
#include <float.h>
#include <math.h>

#include "dm_math.h"

#define DM_LOG_SQRT_2PI 0.91893853320467274178 /* log(2 pi) / 2 */

/* Arguments below this are shifted up by recurrence before the asymptotic
 * series; at 10 the first omitted series term is below 1e-17. */
#define DM_ASYMPTOTIC_MIN 10.0


/* ------------------------------------------------------------------------ */
/* Log-gamma, digamma, trigamma                                              */

#include "temme_coef.h"

#define REAL double
#define SFX(name) name##_d
#define R_LOG log
#define R_EXP exp
#define R_LOG1P log1p
#define R_EXPM1 expm1
#define R_SQRT sqrt
#define R_FABS fabs
#define R_EPS 1e-16
#define R_LOG_MAX 700.0
#define R_MAX DBL_MAX
#include "igamma_impl.h"
#undef REAL
#undef SFX
#undef R_LOG
#undef R_EXP
#undef R_LOG1P
#undef R_EXPM1
#undef R_SQRT
#undef R_FABS
#undef R_EPS
#undef R_LOG_MAX
#undef R_MAX

#define REAL float
#define SFX(name) name##_f
#define R_LOG logf
#define R_EXP expf
#define R_LOG1P log1pf
#define R_EXPM1 expm1f
#define R_SQRT sqrtf
#define R_FABS fabsf
#define R_EPS 3e-8f
#define R_LOG_MAX 80.0f
#define R_MAX FLT_MAX
#include "igamma_impl.h"

double dm_stirlerr(double a)
{
    return stirlerr_d(a);
}

double dm_lgamma(double x)
{
    return (x - 0.5) * log(x) - x + DM_LOG_SQRT_2PI + dm_stirlerr(x);
}

double dm_digamma(double x)
{
    return digamma_d(x);
}

double dm_trigamma(double x)
{
    /* psi'(x) = psi'(x + 1) + 1/x^2 up to x >= 10, then
     * 1/x + 1/(2x^2) + sum B_2k / x^(2k + 1). */
    double shift = 0.0;
    while (x < DM_ASYMPTOTIC_MIN) {
        shift += 1.0 / (x * x);
        x += 1.0;
    }

    double r = 1.0 / x;
    double r2 = r * r;
    double s = 7.0 / 6.0;
    s = s * r2 - 691.0 / 2730.0;
    s = s * r2 + 5.0 / 66.0;
    s = s * r2 - 1.0 / 30.0;
    s = s * r2 + 1.0 / 42.0;
    s = s * r2 - 1.0 / 30.0;
    s = s * r2 + 1.0 / 6.0;
    return shift + r + 0.5 * r2 + s * r2 * r;
}

float dm_lgammaf(float x)
{
    return (float)dm_lgamma((double)x);
}

float dm_digammaf(float x)
{
    return (float)dm_digamma((double)x);
}

float dm_trigammaf(float x)
{
    return (float)dm_trigamma((double)x);
}

/* ------------------------------------------------------------------------ */
/* Incomplete gamma function and the implicit gradient                       */

double dm_log_gamma_p(double alpha, double log_g)
{
    if (log_g > 700.0)
        return 0.0; /* x > 1e304, so Q < exp(-1e303) for every alpha <= 1e4 */

    double x = exp(log_g);
    if (x < alpha + 1.0) {
        double s, ds;
        igamma_series_d(alpha, x, &s, &ds);
        return alpha * log_g - x - (dm_lgamma(alpha) + log(alpha)) + log(s);
    }

    double cf, dcf;
    igamma_cf_d(alpha, x, &cf, &dcf);
    double log_q = alpha * log_g - x - dm_lgamma(alpha) + log(cf);
    return log1p(-exp(log_q));
}

double dm_gamma_dlogg_dalpha(double alpha, double log_g)
{
    return dlogg_dalpha_d(alpha, log_g);
}

float dm_gamma_dlogg_dalphaf(float alpha, float log_g)
{
    return dlogg_dalpha_f(alpha, log_g);
}

/* ------------------------------------------------------------------------ */
/* Logistic functions and the Bernoulli prior                                */

double dm_softplus(double x)
{
    if (x > 0.0)
        return x + log1p(exp(-x));
    return log1p(exp(x));
}

float dm_softplusf(float x)
{
    if (x > 0.0f)
        return x + log1pf(expf(-x));
    return log1pf(expf(x));
}

double dm_sigmoid(double x)
{
    if (x >= 0.0)
        return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}

float dm_sigmoidf(float x)
{
    if (x >= 0.0f)
        return 1.0f / (1.0f + expf(-x));
    float e = expf(x);
    return e / (1.0f + e);
}

double dm_solve_p0(int n_expert, double k)
{
    const double lo_clamp = 1e-6, hi_clamp = 1.0 - 1e-6;

    /* h(p) = E p + (1 - p)^E - k rises on [0, 1] (h' = E (1 - (1 - p)^(E-1)) >= 0)
     * from 1 - k to E - k, so bisection finds the root when 1 <= k <= E; outside
     * that range, or for NaN, the root lies beyond a clamp. */
    if (n_expert < 1 || !(k > 1.0))
        return lo_clamp;
    if (k >= (double)n_expert)
        return hi_clamp;

    double lo = 0.0, hi = 1.0;
    for (int it = 0; it < 200 && hi - lo > 1e-17; it++) {
        double mid = 0.5 * (lo + hi);
        double h = n_expert * mid + pow(1.0 - mid, n_expert) - k;
        if (h < 0.0)
            lo = mid;
        else
            hi = mid;
    }

    double p = 0.5 * (lo + hi);
    if (p < lo_clamp)
        return lo_clamp;
    if (p > hi_clamp)
        return hi_clamp;
    return p;
}
