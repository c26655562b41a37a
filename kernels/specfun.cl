/*
 * Special functions of the router: the same algorithms as common/specfun.c.
 * stirlerr, digamma, the incomplete-gamma series and continued fraction and
 * the implicit gradient come from common/igamma_impl.h (embedded before this
 * file with REAL = acc_t); this file adds log-gamma and trigamma and the names
 * the other kernels use. They run in double when the device has cl_khr_fp64;
 * without fp64 they run in float, as the float path of common/specfun.c
 * (dm_gamma_dlogg_dalphaf) does.
 */

#define DM_LOG_SQRT_2PI 0.91893853320467274178 /* log(2 pi) / 2 */

inline acc_t dm_stirlerr(acc_t a)
{
    return stirlerr_k(a);
}

inline acc_t dm_lgamma(acc_t x)
{
    return (x - 0.5) * log(x) - x + DM_LOG_SQRT_2PI + stirlerr_k(x);
}

inline acc_t dm_digamma(acc_t x)
{
    return digamma_k(x);
}

/* psi'(x) = psi'(x + 1) + 1/x^2 up to x >= 10, then 1/x + 1/(2x^2) + sum B_2k / x^(2k + 1). */
inline acc_t dm_trigamma(acc_t x)
{
    acc_t shift = 0.0;
    while (x < 10.0) {
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

/* Implicit reparameterisation gradient d log g / d alpha of g ~ Gamma(alpha, 1), from log g. */
inline acc_t dm_gamma_dlogg_dalpha(acc_t alpha, acc_t log_g)
{
    return dlogg_dalpha_k(alpha, log_g);
}
