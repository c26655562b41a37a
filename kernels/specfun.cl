/*
 * Special functions of the router, the same algorithms as common/specfun.c:
 * Stirling series after an upward recurrence to x >= 10. They run in acc_t,
 * double when the device has cl_khr_fp64; without fp64 they run in float and
 * lose about 7 significant digits (see docs/OPENCL.md).
 */

#define DM_LOG_SQRT_2PI 0.91893853320467274178 /* log(2 pi) / 2 */
#define DM_ASYMPTOTIC_MIN 10.0

/* Stirling series of stirlerr(a) for a >= 10. */
inline acc_t dm_stirlerr_series(acc_t a)
{
    acc_t r = 1.0 / a;
    acc_t r2 = r * r;
    acc_t s = 1.0 / 156.0;
    s = s * r2 - 691.0 / 360360.0;
    s = s * r2 + 1.0 / 1188.0;
    s = s * r2 - 1.0 / 1680.0;
    s = s * r2 + 1.0 / 1260.0;
    s = s * r2 - 1.0 / 360.0;
    s = s * r2 + 1.0 / 12.0;
    return s * r;
}

/* stirlerr(a) = lgamma(a) - ((a - 1/2) log a - a + log(2 pi)/2), a > 0. */
inline acc_t dm_stirlerr(acc_t a)
{
    acc_t shift = 0.0;
    while (a < DM_ASYMPTOTIC_MIN) {
        shift += (a + 0.5) * log1p(1.0 / a) - 1.0;
        a += 1.0;
    }
    return shift + dm_stirlerr_series(a);
}

inline acc_t dm_lgamma(acc_t x)
{
    return (x - 0.5) * log(x) - x + DM_LOG_SQRT_2PI + dm_stirlerr(x);
}

inline acc_t dm_digamma(acc_t x)
{
    acc_t shift = 0.0;
    while (x < DM_ASYMPTOTIC_MIN) {
        shift -= 1.0 / x;
        x += 1.0;
    }
    acc_t r2 = 1.0 / (x * x);
    acc_t s = -1.0 / 12.0;
    s = s * r2 + 691.0 / 32760.0;
    s = s * r2 - 1.0 / 132.0;
    s = s * r2 + 1.0 / 240.0;
    s = s * r2 - 1.0 / 252.0;
    s = s * r2 + 1.0 / 120.0;
    s = s * r2 - 1.0 / 12.0;
    return shift + log(x) - 0.5 / x + s * r2;
}

inline acc_t dm_trigamma(acc_t x)
{
    acc_t shift = 0.0;
    while (x < DM_ASYMPTOTIC_MIN) {
        shift += 1.0 / (x * x);
        x += 1.0;
    }
    acc_t r = 1.0 / x;
    acc_t r2 = r * r;
    acc_t s = 7.0 / 6.0;
    s = s * r2 - 691.0 / 2730.0;
    s = s * r2 + 5.0 / 66.0;
    s = s * r2 - 1.0 / 30.0;
    s = s * r2 + 1.0 / 42.0;
    s = s * r2 - 1.0 / 30.0;
    s = s * r2 + 1.0 / 6.0;
    return shift + r + 0.5 * r2 + s * r2 * r;
}

/* Implicit reparameterisation gradient d log g / d alpha of g ~ Gamma(alpha, 1).
 * TODO: port dm_gamma_dlogg_dalpha from common/specfun.c. */
inline acc_t dm_gamma_dlogg_dalpha(acc_t alpha, acc_t log_g)
{
    (void)alpha;
    (void)log_g;
    return 0.0;
}
