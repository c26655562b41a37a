#!/usr/bin/env python3
"""Generate the reference tables of the special-function tests and the Temme
coefficients of common/temme_coef.h, with mpmath at 50 significant digits.

Usage (from the repository root; takes a few minutes on 2 cores):
    python3 scripts/gen_gamma_tables.py [--jobs 2]

Writes:
    tests/data/gamma_grad.tsv  alpha, log g, quantile F(g; alpha), d log g/d alpha
    tests/data/specfun.tsv     x, lgamma(x), digamma(x), trigamma(x)
    common/temme_coef.h        Taylor coefficients of Temme's c_k(eta)
"""
import argparse
import multiprocessing
import os
from fractions import Fraction

import mpmath as mp

DIGITS = 50
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Quantiles of each alpha's table rows: the accuracy domain runs from the
# 1e-6 to the 1 - 1e-6 quantile of log g.
QUANTILES = ["1e-6", "1e-5", "1e-4", "1e-3", "0.01", "0.05", "0.1", "0.25", "0.5",
             "0.75", "0.9", "0.95", "0.99", "0.999", "0.9999", "0.99999", "0.999999"]
EXTRA_PER_ALPHA = 10  # rows evenly spaced in log g between the extreme quantiles


def alphas():
    """Log-spaced alphas over [1e-3, 1e4] plus the region boundaries 1 and 20."""
    grid = [mp.mpf(10) ** (mp.mpf(i) / 5 - 3) for i in range(36)]  # 1e-3 .. 1e4
    grid += [mp.mpf(1), mp.mpf("19.9"), mp.mpf(20), mp.mpf("20.1"), mp.mpf("2.5")]
    return sorted(set(grid))


def log_p(a, t):
    return mp.log(mp.gammainc(a, 0, mp.exp(t), regularized=True))


def log_q(a, t):
    return mp.log(mp.gammainc(a, mp.exp(t), mp.inf, regularized=True))


def quantile_log_g(a, q):
    """log g with F(g; a) = q, by bracketed root finding on log P or log Q."""
    q = mp.mpf(q)
    # P(a, x) <= x^a / Gamma(a + 1), so below t_lo the CDF is under q; above
    # x = a + 10 sqrt(a) + 40 the upper tail is far below 1e-6.
    t_lo = (mp.log(q) + mp.loggamma(a + 1)) / a - 1
    t_hi = mp.log(a + 10 * mp.sqrt(a) + 40)
    if q <= mp.mpf("0.5"):
        f = lambda t: log_p(a, t) - mp.log(q)
    else:
        f = lambda t: mp.log(1 - q) - log_q(a, t)
    for _ in range(60):  # bisection to a small bracket, then the secant method
        mid = (t_lo + t_hi) / 2
        if f(mid) < 0:
            t_lo = mid
        else:
            t_hi = mid
    return mp.findroot(f, (t_lo, t_hi), solver="anderson")


def dlogg_dalpha(a, t):
    """-(dF/da)(g; a) / (g f(g; a)) by high-precision numerical differentiation."""
    x = mp.exp(t)
    lower = mp.gammainc(a, 0, x, regularized=True) < mp.mpf("0.5")
    if lower:
        dfda = mp.diff(lambda s: mp.gammainc(s, 0, x, regularized=True), a)
    else:
        dfda = -mp.diff(lambda s: mp.gammainc(s, x, mp.inf, regularized=True), a)
    g_f = mp.exp(a * t - x - mp.loggamma(a))
    return -dfda / g_f


def rows_for_alpha(a):
    mp.mp.dps = DIGITS
    a = mp.mpf(a)
    points = [(quantile_log_g(a, q), mp.mpf(q)) for q in QUANTILES]
    lo, hi = points[0][0], points[-1][0]
    for i in range(1, EXTRA_PER_ALPHA + 1):
        t = lo + (hi - lo) * i / (EXTRA_PER_ALPHA + 1)
        points.append((t, mp.gammainc(a, 0, mp.exp(t), regularized=True)))
    rows = []
    for t, q in sorted(points):
        # Round log g to double first so the table is exact at the tested input.
        t = mp.mpf(float(t))
        rows.append("%s\t%s\t%s\t%s" % (mp.nstr(a, 20), repr(float(t)), mp.nstr(q, 8),
                                          mp.nstr(dlogg_dalpha(a, t), 25)))
    return rows


def specfun_rows():
    mp.mp.dps = DIGITS
    xs = set()
    for i in range(0, 181):  # 1e-3 .. 1e6, log-spaced, 20 per decade
        xs.add(float(mp.mpf(10) ** (mp.mpf(i) / 20 - 3)))
    for x in [0.5, 1.0, 1.4616321449683622, 2.0, 2.5, 3.0, 9.5, 10.0, 10.5]:
        xs.add(x)
    rows = []
    for x in sorted(xs):
        xm = mp.mpf(x)
        rows.append("%r\t%s\t%s\t%s" % (x, mp.nstr(mp.loggamma(xm), 25),
                                          mp.nstr(mp.digamma(xm), 25), mp.nstr(mp.psi(1, xm), 25)))
    return rows


# ---------------------------------------------------------------------------
# Temme coefficients: exact power series in eta with rational coefficients.

N_SERIES = 40   # working length; every division by eta costs one order
TEMME_K = 7     # c_0 .. c_6
TEMME_DEGREE = 22


def _mul(a, b):
    r = [Fraction(0)] * N_SERIES
    for i, x in enumerate(a):
        if x:
            for j in range(N_SERIES - i):
                r[i + j] += x * b[j]
    return r


def _inv(a):
    r = [Fraction(0)] * N_SERIES
    r[0] = 1 / a[0]
    for n in range(1, N_SERIES):
        r[n] = -sum(a[k] * r[n - k] for k in range(1, n + 1)) / a[0]
    return r


def _sqrt1(a):
    r = [Fraction(0)] * N_SERIES
    r[0] = Fraction(1)
    for n in range(1, N_SERIES):
        r[n] = (a[n] - sum(r[k] * r[n - k] for k in range(1, n))) / 2
    return r


def _compose(a, b):
    r = [Fraction(0)] * N_SERIES
    p = [Fraction(0)] * N_SERIES
    p[0] = Fraction(1)
    for k in range(N_SERIES):
        if a[k]:
            for i in range(N_SERIES):
                r[i] += a[k] * p[i]
        p = _mul(p, b)
    return r


def temme_coefficients():
    """c_k(eta) Taylor coefficients from c_0 = 1/mu - 1/eta and
    c_k = (c_{k-1}'(eta) + (-1)^k gamma_k / (mu/eta)) / eta, with mu = lambda - 1,
    eta^2/2 = mu - log(1 + mu) and gamma_k the Stirling coefficients of Gamma*(a)."""
    # eta = mu w(mu), w = sqrt(2 sum_{n>=2} (-1)^n mu^(n-2) / n); invert to mu = eta m(eta).
    w = _sqrt1([Fraction(2 * (-1) ** n, n + 2) for n in range(N_SERIES)])
    m = [Fraction(0)] * N_SERIES
    m[0] = Fraction(1)
    for _ in range(N_SERIES + 1):
        m = _inv(_compose(w, [Fraction(0)] + m[:-1]))
    gammas = [Fraction(1), Fraction(1, 12), Fraction(1, 288), Fraction(-139, 51840),
              Fraction(-571, 2488320), Fraction(163879, 209018880),
              Fraction(5246819, 75246796800)]
    inv_m = _inv(m)
    numerator = [inv_m[0] - 1] + inv_m[1:]
    coefs = []
    for k in range(TEMME_K):
        if k > 0:
            deriv = [(i + 1) * ck[i + 1] for i in range(N_SERIES - 1)] + [Fraction(0)]
            numerator = [deriv[i] + (-1) ** k * gammas[k] * inv_m[i] for i in range(N_SERIES)]
        assert numerator[0] == 0
        ck = numerator[1:] + [Fraction(0)]
        coefs.append(ck[:TEMME_DEGREE])
    return coefs


def write_temme_header(path):
    coefs = temme_coefficients()
    lines = ["/* Generated by scripts/gen_gamma_tables.py: do not edit. */",
             "/* Taylor coefficients in eta of Temme's c_k(eta), k = 0..%d, degree 0..%d:"
             % (TEMME_K - 1, TEMME_DEGREE - 1),
             " * Q(a, x) = erfc(eta sqrt(a/2)) / 2 + exp(-a eta^2/2) / sqrt(2 pi a) sum_k c_k(eta) a^-k,",
             " * eta = sign(x/a - 1) sqrt(2 (x/a - 1 - log(x/a))). */",
             "#define DM_TEMME_K %d" % TEMME_K,
             "#define DM_TEMME_DEGREE %d" % TEMME_DEGREE,
             "static const double dm_temme_coef[DM_TEMME_K][DM_TEMME_DEGREE] = {"]
    for ck in coefs:
        chunks = [", ".join("%.17e" % float(x) for x in ck[i:i + 3]) for i in range(0, len(ck), 3)]
        lines.append("    {" + ",\n     ".join(chunks) + "},")
    lines.append("};")
    with open(path, "w") as out:
        out.write("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    args = parser.parse_args()

    write_temme_header(os.path.join(ROOT, "common", "temme_coef.h"))

    mp.mp.dps = DIGITS
    grid = [str(a) for a in alphas()]
    with multiprocessing.Pool(args.jobs) as pool:
        per_alpha = pool.map(rows_for_alpha, grid)
    with open(os.path.join(ROOT, "tests", "data", "gamma_grad.tsv"), "w") as out:
        out.write("# alpha\tlog_g\tF(g;alpha)\tdlogg_dalpha (mpmath, %d digits)\n" % DIGITS)
        for rows in per_alpha:
            out.write("\n".join(rows) + "\n")

    with open(os.path.join(ROOT, "tests", "data", "specfun.tsv"), "w") as out:
        out.write("# x\tlgamma\tdigamma\ttrigamma (mpmath, %d digits)\n" % DIGITS)
        out.write("\n".join(specfun_rows()) + "\n")


if __name__ == "__main__":
    main()
