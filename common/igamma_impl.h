/*
 * Incomplete-gamma kernels, written once and compiled twice by specfun.c:
 * REAL = double with SFX(name) = name_d, and REAL = float with SFX(name) =
 * name_f (the float-only path of devices without fp64). The including file
 * defines REAL, SFX, the math wrappers R_LOG, R_EXP, R_LOG1P, R_EXPM1,
 * R_SQRT, the constants R_EPS (relative stop criterion), R_LOG_MAX (largest
 * log g whose exp is finite) and R_MAX (largest finite value), and includes
 * temme_coef.h first.
 */

/* Stirling-series error for a >= 10 (terms B_2k / (2k (2k - 1) a^(2k - 1))). */
static REAL SFX(stirlerr_series)(REAL a)
{
    REAL r = (REAL)1 / a;
    REAL r2 = r * r;
    REAL s = (REAL)(1.0 / 156.0);
    s = s * r2 - (REAL)(691.0 / 360360.0);
    s = s * r2 + (REAL)(1.0 / 1188.0);
    s = s * r2 - (REAL)(1.0 / 1680.0);
    s = s * r2 + (REAL)(1.0 / 1260.0);
    s = s * r2 - (REAL)(1.0 / 360.0);
    s = s * r2 + (REAL)(1.0 / 12.0);
    return s * r;
}

static REAL SFX(stirlerr)(REAL a)
{
    /* stirlerr(a) = stirlerr(a + 1) + (a + 1/2) log(1 + 1/a) - 1 carries small
     * arguments up to the series. Each step term is at least 7e-4 for a < 10,
     * so the subtraction loses under two digits. */
    REAL shift = 0;
    while (a < (REAL)10) {
        shift += (a + (REAL)0.5) * R_LOG1P((REAL)1 / a) - (REAL)1;
        a += (REAL)1;
    }
    return shift + SFX(stirlerr_series)(a);
}

static REAL SFX(digamma)(REAL x)
{
    /* psi(x) = psi(x + 1) - 1/x up to x >= 10, then the asymptotic series
     * log x - 1/(2x) - sum B_2k / (2k x^2k), whose first omitted term is below 1e-17. */
    REAL shift = 0;
    while (x < (REAL)10) {
        shift -= (REAL)1 / x;
        x += (REAL)1;
    }

    REAL r2 = (REAL)1 / (x * x);
    REAL s = (REAL)(-1.0 / 12.0);
    s = s * r2 + (REAL)(691.0 / 32760.0);
    s = s * r2 - (REAL)(1.0 / 132.0);
    s = s * r2 + (REAL)(1.0 / 240.0);
    s = s * r2 - (REAL)(1.0 / 252.0);
    s = s * r2 + (REAL)(1.0 / 120.0);
    s = s * r2 - (REAL)(1.0 / 12.0);
    return shift + R_LOG(x) - (REAL)0.5 / x + s * r2;
}

/* Power series of P(a, x) = x^a e^-x / Gamma(a + 1) * S with
 * S = sum_n x^n / ((a + 1) ... (a + n)); also returns dS/da. */
static void SFX(igamma_series)(REAL a, REAL x, REAL *s_out, REAL *ds_out)
{
    REAL term = 1, s = 1, ds = 0, harmonic = 0;

    for (int n = 1; n < 20000; n++) {
        term *= x / (a + (REAL)n);
        harmonic += (REAL)1 / (a + (REAL)n);
        s += term;
        ds -= term * harmonic;
        if (term <= R_EPS * s && term * harmonic <= R_EPS * -ds)
            break;
    }
    *s_out = s;
    *ds_out = ds;
}

/* Legendre continued fraction of Q(a, x) = x^a e^-x / Gamma(a) * CF with
 * CF = 1 / (x + 1 - a - 1 (1 - a) / (x + 3 - a - 2 (2 - a) / (x + 5 - a - ...))),
 * evaluated by the modified Lentz method on (value, d/da) pairs; returns CF and dCF/da. */
static void SFX(igamma_cf)(REAL a, REAL x, REAL *cf_out, REAL *dcf_out)
{
    const REAL tiny = (REAL)1e-30;
    REAL f = x + (REAL)1 - a, df = -1;
    if (f == (REAL)0)
        f = tiny;
    REAL c = f, dc = df, d = 0, dd = 0;

    for (int n = 1; n < 20000; n++) {
        /* Partial numerator an = -n (n - a) and denominator bn = x + 2n + 1 - a. */
        REAL an = -(REAL)n * ((REAL)n - a), dan = (REAL)n;
        REAL bn = x + (REAL)(2 * n + 1) - a, dbn = -1;

        REAL dnew = bn + an * d;
        if (dnew == (REAL)0)
            dnew = tiny;
        dnew = (REAL)1 / dnew;
        dd = -(dbn + dan * d + an * dd) * dnew * dnew;
        d = dnew;

        REAL cnew = bn + an / c;
        if (cnew == (REAL)0)
            cnew = tiny;
        dc = dbn + dan / c - an * dc / (c * c);
        c = cnew;

        REAL delta = c * d;
        REAL df_new = df * delta + f * (dc * d + c * dd);
        REAL f_new = f * delta;
        REAL dchange = df_new - df;
        f = f_new;
        df = df_new;
        if (R_FABS(delta - (REAL)1) <= R_EPS && R_FABS(dchange) <= R_EPS * R_FABS(df))
            break;
    }
    *cf_out = (REAL)1 / f;
    *dcf_out = -df / (f * f);
}

/* mu - log1p(mu), without cancellation for small |mu|. */
static REAL SFX(mu_minus_log1p)(REAL mu)
{
    if (R_FABS(mu) >= (REAL)0.1)
        return mu - R_LOG1P(mu);

    /* mu^2 (1/2 - mu/3 + mu^2/4 - ...): 18 terms reach 1e-18 at |mu| = 0.1. */
    REAL s = 0;
    for (int n = 19; n >= 2; n--)
        s = s * -mu + (REAL)1 / (REAL)n;
    return mu * mu * s;
}

/* Temme's uniform expansion differentiated in a at fixed x, divided by g f(g).
 * With lambda = x/a = 1 + mu, eta as in temme_coef.h, S = sum_k c_k(eta) a^-k:
 * d log g/d a = e^stirlerr(a) / a * [mu/eta - eta/2 + (mu - eta^2/2 - 1/(2a)) S
 *               - sum_k k c_k a^-(k+1) - (mu/eta) / a * sum_k c_k'(eta) a^-k],
 * using g f(g) = sqrt(a / 2 pi) exp(-a eta^2/2 - stirlerr(a)), so no exponential
 * of a large, cancelling argument is ever formed. */
static REAL SFX(dlogg_temme)(REAL a, REAL mu, REAL eta)
{
    REAL inv_a = (REAL)1 / a;
    REAL s = 0, sk = 0, sd = 0, power = 1;

    for (int k = 0; k < DM_TEMME_K; k++) {
        REAL ck = 0, dck = 0;
        for (int i = DM_TEMME_DEGREE - 1; i >= 0; i--) {
            dck = dck * eta + ck;
            ck = ck * eta + (REAL)dm_temme_coef[k][i];
        }
        s += ck * power;
        sk += (REAL)k * ck * power * inv_a;
        sd += dck * power;
        power *= inv_a;
    }

    REAL ratio = eta == (REAL)0 ? (REAL)1 : mu / eta;
    REAL bracket = ratio - (REAL)0.5 * eta + (mu - (REAL)0.5 * eta * eta - (REAL)0.5 * inv_a) * s - sk -
                   ratio * inv_a * sd;
    return R_EXP(SFX(stirlerr)(a)) * inv_a * bracket;
}

/* d log g / d alpha for g ~ Gamma(a, 1), from log g; region choice in docs/ACCURACY.md. */
static REAL SFX(dlogg_dalpha)(REAL a, REAL log_g)
{
    REAL log_a = R_LOG(a);
    REAL mu = R_EXPM1(log_g - log_a);

    /* Large a near the bulk: Temme's expansion (|eta| <= 1 keeps its Taylor
     * coefficients converged; the a^-7 truncation is below 1e-12 at a = 20). */
    if (a >= (REAL)20) {
        REAL h = SFX(mu_minus_log1p)(mu);
        REAL eta = R_SQRT((REAL)2 * h);
        if (mu < (REAL)0)
            eta = -eta;
        if (R_FABS(eta) <= (REAL)1)
            return SFX(dlogg_temme)(a, mu, eta);
    }

    /* Beyond exp's range: CF tends to 1/x, so the result tends to (log x - psi(a)) / x. */
    if (log_g > R_LOG_MAX)
        return (log_g - SFX(digamma)(a)) * R_EXP(-log_g);

    REAL x = R_EXP(log_g);
    REAL result;
    if (x < a + (REAL)1) {
        /* dP/da / (g f) = (S / a) (log x - psi(a + 1) + S'/S). */
        REAL s, ds;
        SFX(igamma_series)(a, x, &s, &ds);
        result = -(s * (log_g - SFX(digamma)(a + (REAL)1)) + ds) / a;
    } else {
        /* dQ/da / (g f) = (log x - psi(a)) CF + dCF/da. */
        REAL cf, dcf;
        SFX(igamma_cf)(a, x, &cf, &dcf);
        result = (log_g - SFX(digamma)(a)) * cf + dcf;
    }

    /* Only a log g far beyond what the sampler emits (about -1e4 / a) gets here. */
    if (result > R_MAX)
        return R_MAX;
    if (result < -R_MAX)
        return -R_MAX;
    return result;
}
