/*
 * Reference router losses: the DirMoE regularisers (Bernoulli KL to the
 * prior Bernoulli(p0), Dirichlet KL to the symmetric prior Dirichlet(alpha0),
 * and the sparsity term on the expected realised count Kbar), and the Switch
 * load-balancing loss with the router z-loss. All reductions and the KL
 * terms are computed in double; only the outputs are rounded to ref_real.
 * The softmax cross-entropy ops declared next to these live in ref_layers.c.
 */
#include "config.h"

#include <math.h>

#include "dm_math.h"
#include "ref_ops.h"

/* ------------------------------------------------------------------------ */
/* DirMoE regularisers                                                       */

/* Concentration alpha = min(softplus(c) + alpha_min, alpha_max), in double;
 * *dalpha_dc is sigmoid(c), or 0 where the upper clamp binds. */
static double concentration(double c, double alpha_min, double alpha_max, double *dalpha_dc)
{
    double a = dm_softplus(c) + alpha_min;

    if (a >= alpha_max) {
        *dalpha_dc = 0.0;
        return alpha_max;
    }
    *dalpha_dc = dm_sigmoid(c);
    return a;
}

/* Returns the log of the batch mean of sigmoid(sign * s_e) over the tokens, by
 * log-sum-exp of log sigmoid(x) = -softplus(-x), so it stays finite when every
 * term underflows. sign = +1 gives log pibar_e, and sign = -1 gives log(1 - pibar_e). */
static double log_batch_mean_sigmoid(const ref_real *logits, int n, int n_expert, int e, double sign)
{
    double vmax = -INFINITY, sum = 0.0;

    for (int t = 0; t < n; t++) {
        double v = -dm_softplus(-sign * (double)logits[(size_t)t * 2 * n_expert + e]);
        if (v > vmax)
            vmax = v;
    }
    for (int t = 0; t < n; t++) {
        double v = -dm_softplus(-sign * (double)logits[(size_t)t * 2 * n_expert + e]);
        sum += exp(v - vmax);
    }
    return vmax + log(sum) - log((double)n);
}

/* Returns KL(q || p0) of Bernoulli variables from log q and log(1 - q), with 0 log 0 = 0. */
static double bernoulli_kl(double log_q, double log_1mq, double log_p0, double log_1mp0)
{
    double q = exp(log_q), q1 = exp(log_1mq);
    double kl = 0.0;

    if (q > 0.0)
        kl += q * (log_q - log_p0);
    if (q1 > 0.0)
        kl += q1 * (log_1mq - log_1mp0);
    return kl;
}

/* Returns KL(Dir(alpha) || Dir(alpha0, ..., alpha0)) of one token over E experts
 * without the constant -lnG(E alpha0) + E lnG(alpha0), which the caller adds. */
static double dirichlet_kl_variable(const double *alpha, int n_expert, double alpha0)
{
    double sum_alpha = 0.0, kl = 0.0;

    for (int e = 0; e < n_expert; e++)
        sum_alpha += alpha[e];

    double psi_sum = dm_digamma(sum_alpha);
    kl += dm_lgamma(sum_alpha);
    for (int e = 0; e < n_expert; e++) {
        kl -= dm_lgamma(alpha[e]);
        kl += (alpha[e] - alpha0) * (dm_digamma(alpha[e]) - psi_sum);
    }
    return kl;
}

/* Batch means of the per-token quantities: KL_B in token form, KL_D and K. */
typedef struct reg_means {
    double kl_b_token;
    double kl_d;
    double kbar;
} reg_means;

static reg_means token_means(const dm_dirmoe_reg_params *p, const ref_real *logits)
{
    const int E = p->n_expert;
    const double kl_d_const = -dm_lgamma(E * p->alpha0) + E * dm_lgamma(p->alpha0);
    reg_means m = {0.0, 0.0, 0.0};

    for (int t = 0; t < p->n_tokens; t++) {
        const ref_real *s = logits + (size_t)t * 2 * E;
        const ref_real *c = s + E;
        double alpha[E];
        double sum_pi = 0.0, sum_softplus = 0.0;

        for (int e = 0; e < E; e++) {
            double log_pi = -dm_softplus(-(double)s[e]);
            double log_1mpi = -dm_softplus((double)s[e]);
            double unused;

            m.kl_b_token += bernoulli_kl(log_pi, log_1mpi, p->log_p0, p->log_1mp0);
            sum_pi += exp(log_pi);
            sum_softplus += -log_1mpi;
            alpha[e] = concentration(c[e], p->alpha_min, p->alpha_max, &unused);
        }

        /* K = sum pi + prod(1 - pi), the product as exp(-sum softplus(s)). */
        m.kbar += sum_pi + exp(-sum_softplus);
        m.kl_d += dirichlet_kl_variable(alpha, E, p->alpha0) + kl_d_const;
    }

    m.kl_b_token /= p->n_tokens;
    m.kl_d /= p->n_tokens;
    m.kbar /= p->n_tokens;
    return m;
}

/* KL_B in batch form: sum over experts of KL(pibar_e || p0). */
static double kl_b_batch(const dm_dirmoe_reg_params *p, const ref_real *logits)
{
    double kl = 0.0;

    for (int e = 0; e < p->n_expert; e++) {
        double log_pibar = log_batch_mean_sigmoid(logits, p->n_tokens, p->n_expert, e, 1.0);
        double log_qbar = log_batch_mean_sigmoid(logits, p->n_tokens, p->n_expert, e, -1.0);
        kl += bernoulli_kl(log_pibar, log_qbar, p->log_p0, p->log_1mp0);
    }
    return kl;
}

/* Writes stats (DM_REG_NSTATS, indexed by enum dm_reg_stat) from logits (N,2E)
 * with rows [s | c]. No tokens or no experts give all-zero stats. */
void REF(dirmoe_reg_forward)(const dm_dirmoe_reg_params *p, const ref_real *logits,
                             ref_real *stats)
{
    if (p->n_tokens <= 0 || p->n_expert <= 0) {
        for (int i = 0; i < DM_REG_NSTATS; i++)
            stats[i] = 0;
        return;
    }

    reg_means m = token_means(p, logits);
    double kl_b = p->kl_b_mode == DM_KL_B_TOKEN ? m.kl_b_token : kl_b_batch(p, logits);
    double gap = m.kbar - p->k_target;

    stats[DM_REG_KL_B] = (ref_real)kl_b;
    stats[DM_REG_KL_D] = (ref_real)m.kl_d;
    stats[DM_REG_KBAR] = (ref_real)m.kbar;
    stats[DM_REG_LOSS] = (ref_real)(p->coef_kl_b * kl_b + p->coef_kl_d * m.kl_d +
                                    p->coef_sq * gap * gap + p->coef_lin * gap);
}

/* dlogits (N,2E) += d(stats[DM_REG_LOSS]) / dlogits. With pi = sigmoid(s):
 *   KL_B batch: ds = pi (1 - pi) / N * (log(pibar / p0) - log((1 - pibar) / (1 - p0)))
 *   KL_B token: ds = pi (1 - pi) / N * (s - log p0 + log(1 - p0))
 *   KL_D:       dalpha_e = ((alpha_e - alpha0) psi'(alpha_e) - psi'(A) sum_j (alpha_j - alpha0)) / N
 *   sparsity:   dK/ds_e = pi_e ((1 - pi_e) - prod_j (1 - pi_j)), scaled by
 *               (2 coef_sq (Kbar - k) + coef_lin) / N
 * and dc = dalpha * sigmoid(c), 0 where the alpha_max clamp binds. */
void REF(dirmoe_reg_backward)(const dm_dirmoe_reg_params *p, const ref_real *logits,
                              ref_real *dlogits)
{
    const int E = p->n_expert;
    const int N = p->n_tokens;

    if (N <= 0 || E <= 0)
        return;

    reg_means m = token_means(p, logits);
    double dloss_dkbar = 2.0 * p->coef_sq * (m.kbar - p->k_target) + p->coef_lin;

    /* Per-expert factor of the batch-form KL_B gradient. */
    double batch_factor[E];
    for (int e = 0; e < E; e++) {
        batch_factor[e] = 0.0;
        if (p->kl_b_mode == DM_KL_B_TOKEN)
            continue;
        double log_pibar = log_batch_mean_sigmoid(logits, N, E, e, 1.0);
        double log_qbar = log_batch_mean_sigmoid(logits, N, E, e, -1.0);
        batch_factor[e] = (log_pibar - p->log_p0) - (log_qbar - p->log_1mp0);
    }

    for (int t = 0; t < N; t++) {
        const ref_real *s = logits + (size_t)t * 2 * E;
        const ref_real *c = s + E;
        ref_real *ds = dlogits + (size_t)t * 2 * E;
        ref_real *dc = ds + E;
        double alpha[E], dalpha_dc[E];

        /* prod(1 - pi) of this token, and the Dirichlet sums. */
        double sum_softplus = 0.0, sum_excess = 0.0, sum_alpha = 0.0;
        for (int e = 0; e < E; e++) {
            sum_softplus += dm_softplus((double)s[e]);
            alpha[e] = concentration(c[e], p->alpha_min, p->alpha_max, &dalpha_dc[e]);
            sum_excess += alpha[e] - p->alpha0;
            sum_alpha += alpha[e];
        }
        double prod_1mpi = exp(-sum_softplus);
        double trigamma_sum = dm_trigamma(sum_alpha);

        for (int e = 0; e < E; e++) {
            double se = s[e];
            double pi = dm_sigmoid(se);
            double one_minus_pi = dm_sigmoid(-se);
            double pi_var = pi * one_minus_pi;

            /* Selection logits: KL_B and the sparsity term. */
            double dkl_b = p->kl_b_mode == DM_KL_B_TOKEN
                               ? pi_var * (se - p->log_p0 + p->log_1mp0)
                               : pi_var * batch_factor[e];
            double dk = pi * (one_minus_pi - prod_1mpi);
            ds[e] += (ref_real)((p->coef_kl_b * dkl_b + dloss_dkbar * dk) / N);

            /* Concentration pre-activations: KL_D through alpha. */
            double dkl_d = (alpha[e] - p->alpha0) * dm_trigamma(alpha[e]) - trigamma_sum * sum_excess;
            dc[e] += (ref_real)(p->coef_kl_d * dkl_d * dalpha_dc[e] / N);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Switch load balancing and router z-loss                                   */

/* Returns the log-sum-exp of the first E entries of one logits row, in double. */
static double row_logsumexp(const ref_real *row, int n_expert)
{
    double vmax = -INFINITY, sum = 0.0;

    for (int e = 0; e < n_expert; e++)
        if ((double)row[e] > vmax)
            vmax = row[e];
    for (int e = 0; e < n_expert; e++)
        sum += exp((double)row[e] - vmax);
    return vmax + log(sum);
}

/* logits rows of stride logits_stride (first E used); probs (N,E); demand (E) int32.
 * Writes stats[DM_BAL_LOSS] = E * sum_e f_e P_e with f_e = demand_e / (N k) and
 * P_e = mean_t probs[t,e], and stats[DM_BAL_ZLOSS] = mean_t (logsumexp_e s[t,e])^2. */
void REF(balance_forward)(const dm_balance_params *p, const ref_real *logits,
                          const ref_real *probs, const int32_t *demand, ref_real *stats)
{
    const int E = p->n_expert;
    const int N = p->n_tokens;

    if (N <= 0 || E <= 0) {
        stats[DM_BAL_LOSS] = 0;
        stats[DM_BAL_ZLOSS] = 0;
        return;
    }

    double balance = 0.0;
    for (int e = 0; e < E; e++) {
        double mean_p = 0.0;
        for (int t = 0; t < N; t++)
            mean_p += probs[(size_t)t * E + e];
        mean_p /= N;
        double f = (double)demand[e] / ((double)N * p->k);
        balance += f * mean_p;
    }

    double z = 0.0;
    for (int t = 0; t < N; t++) {
        double lse = row_logsumexp(logits + (size_t)t * p->logits_stride, E);
        z += lse * lse;
    }

    stats[DM_BAL_LOSS] = (ref_real)(E * balance);
    stats[DM_BAL_ZLOSS] = (ref_real)(z / N);
}

/* dlogits (rows of stride logits_stride, first E) += coef_balance * E / N * p_j (f_j - sum_e f_e p_e)
 *                                                   + coef_z * 2 lse_t p_j / N,
 * holding f constant (it counts discrete assignments). */
void REF(balance_backward)(const dm_balance_params *p, const ref_real *logits,
                           const ref_real *probs, const int32_t *demand, ref_real *dlogits)
{
    const int E = p->n_expert;
    const int N = p->n_tokens;

    if (N <= 0 || E <= 0)
        return;

    double f[E];
    for (int e = 0; e < E; e++)
        f[e] = (double)demand[e] / ((double)N * p->k);

    for (int t = 0; t < N; t++) {
        const ref_real *pt = probs + (size_t)t * E;
        ref_real *ds = dlogits + (size_t)t * p->logits_stride;
        double lse = row_logsumexp(logits + (size_t)t * p->logits_stride, E);

        double fbar = 0.0;
        for (int e = 0; e < E; e++)
            fbar += f[e] * (double)pt[e];

        for (int j = 0; j < E; j++) {
            double pj = pt[j];
            double dbal = (double)E / N * pj * (f[j] - fbar);
            double dz = 2.0 * lse * pj / N;
            ds[j] += (ref_real)(p->coef_balance * dbal + p->coef_z * dz);
        }
    }
}
