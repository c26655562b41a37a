/*
 * DirMoE regularisers of one layer: Bernoulli KL to Bernoulli(p0) (batch or
 * token form), Dirichlet KL to Dirichlet(alpha0) and the sparsity term on the
 * expected realised count. Reductions run in three deterministic steps over an
 * acc_t scratch buffer laid out as
 *   part[3t + 0..2]  per token: token-form KL_B, KL_D, K = sum pi + prod(1 - pi)
 *   part[3N + 2e + 0..1]  per expert: log pibar_e, log(1 - pibar_e)
 *   part[3N + 2E + 0..2]  means of the per-token terms
 * The host scalars (log p0, alpha0, coefficients) arrive as acc_t.
 */

inline acc_t dm_bernoulli_kl(acc_t log_q, acc_t log_1mq, acc_t log_p0, acc_t log_1mp0)
{
    acc_t q = exp(log_q), q1 = exp(log_1mq);
    acc_t kl = 0.0;
    if (q > 0.0)
        kl += q * (log_q - log_p0);
    if (q1 > 0.0)
        kl += q1 * (log_1mq - log_1mp0);
    return kl;
}

/* Step 1a: one work-item per token. */
kernel void dm_reg_tokens(int n, int e_len, float alpha_min, float alpha_max, acc_t log_p0,
                          acc_t log_1mp0, acc_t alpha0, global const float *logits, uint lo,
                          global acc_t *part)
{
    int t = get_global_id(0);
    if (t >= n)
        return;
    global const float *s = logits + lo + (size_t)t * 2 * e_len;
    global const float *c = s + e_len;

    acc_t kl_b = 0.0, sum_pi = 0.0, sum_softplus = 0.0, sum_alpha = 0.0;
    for (int e = 0; e < e_len; e++) {
        acc_t log_pi = -dm_softplus(-(acc_t)s[e]);
        acc_t log_1mpi = -dm_softplus((acc_t)s[e]);
        kl_b += dm_bernoulli_kl(log_pi, log_1mpi, log_p0, log_1mp0);
        sum_pi += exp(log_pi);
        sum_softplus += -log_1mpi;
        int clamped;
        sum_alpha += dm_concentration(c[e], alpha_min, alpha_max, &clamped);
    }

    acc_t psi_sum = dm_digamma(sum_alpha);
    acc_t kl_d = dm_lgamma(sum_alpha);
    for (int e = 0; e < e_len; e++) {
        int clamped;
        acc_t a = dm_concentration(c[e], alpha_min, alpha_max, &clamped);
        kl_d -= dm_lgamma(a);
        kl_d += (a - alpha0) * (dm_digamma(a) - psi_sum);
    }
    kl_d += -dm_lgamma(e_len * alpha0) + e_len * dm_lgamma(alpha0);

    part[3 * (size_t)t + 0] = kl_b;
    part[3 * (size_t)t + 1] = kl_d;
    part[3 * (size_t)t + 2] = sum_pi + exp(-sum_softplus);
}

/* log of the batch mean of sigmoid(sign * s_e), by log-sum-exp of -softplus(-sign s). */
inline acc_t dm_log_mean_sigmoid(global const float *logits, int n, int e_len, int e, acc_t sign)
{
    acc_t vmax = -INFINITY, sum = 0.0;
    for (int t = 0; t < n; t++)
        vmax = fmax(vmax, -dm_softplus(-sign * (acc_t)logits[(size_t)t * 2 * e_len + e]));
    for (int t = 0; t < n; t++)
        sum += exp(-dm_softplus(-sign * (acc_t)logits[(size_t)t * 2 * e_len + e]) - vmax);
    return vmax + log(sum) - log((acc_t)n);
}

/* Step 1b: one work-item per expert (batch form of KL_B only). */
kernel void dm_reg_experts(int n, int e_len, global const float *logits, uint lo, global acc_t *part)
{
    int e = get_global_id(0);
    if (e >= e_len)
        return;
    global acc_t *out = part + 3 * (size_t)n + 2 * e;
    out[0] = dm_log_mean_sigmoid(logits + lo, n, e_len, e, 1.0);
    out[1] = dm_log_mean_sigmoid(logits + lo, n, e_len, e, -1.0);
}

/* Step 2, one work-item: the token means in token order, and the stats when requested. */
kernel void dm_reg_final(int n, int e_len, int token_mode, acc_t log_p0, acc_t log_1mp0,
                         acc_t k_target, acc_t coef_kl_b, acc_t coef_kl_d, acc_t coef_sq,
                         acc_t coef_lin, global acc_t *part, int write_stats, global float *stats,
                         uint so)
{
    if (get_global_id(0) != 0)
        return;
    acc_t kl_b_token = 0.0, kl_d = 0.0, kbar = 0.0;
    for (int t = 0; t < n; t++) {
        kl_b_token += part[3 * (size_t)t + 0];
        kl_d += part[3 * (size_t)t + 1];
        kbar += part[3 * (size_t)t + 2];
    }
    kl_b_token /= n;
    kl_d /= n;
    kbar /= n;
    global acc_t *means = part + 3 * (size_t)n + 2 * e_len;
    means[0] = kl_b_token;
    means[1] = kl_d;
    means[2] = kbar;
    if (!write_stats)
        return;

    acc_t kl_b = kl_b_token;
    if (!token_mode) {
        kl_b = 0.0;
        for (int e = 0; e < e_len; e++) {
            global const acc_t *pe = part + 3 * (size_t)n + 2 * e;
            kl_b += dm_bernoulli_kl(pe[0], pe[1], log_p0, log_1mp0);
        }
    }
    acc_t gap = kbar - k_target;
    stats[so + 0] = (float)kl_b;
    stats[so + 1] = (float)kl_d;
    stats[so + 2] = (float)kbar;
    stats[so + 3] = (float)(coef_kl_b * kl_b + coef_kl_d * kl_d + coef_sq * gap * gap + coef_lin * gap);
}

/* Step 3 (backward only): dlogits of one token per work-item. */
kernel void dm_reg_bwd(int n, int e_len, int token_mode, float alpha_min, float alpha_max,
                       acc_t log_p0, acc_t log_1mp0, acc_t alpha0, acc_t k_target, acc_t coef_kl_b,
                       acc_t coef_kl_d, acc_t coef_sq, acc_t coef_lin, global const float *logits,
                       uint lo, global const acc_t *part, global float *dlogits, uint dlo)
{
    int t = get_global_id(0);
    if (t >= n)
        return;
    global const float *s = logits + lo + (size_t)t * 2 * e_len;
    global const float *c = s + e_len;
    global float *ds = dlogits + dlo + (size_t)t * 2 * e_len;
    global float *dc = ds + e_len;
    acc_t kbar = part[3 * (size_t)n + 2 * e_len + 2];
    acc_t dloss_dkbar = 2.0 * coef_sq * (kbar - k_target) + coef_lin;

    acc_t sum_softplus = 0.0, sum_excess = 0.0, sum_alpha = 0.0;
    for (int e = 0; e < e_len; e++) {
        int clamped;
        acc_t a = dm_concentration(c[e], alpha_min, alpha_max, &clamped);
        sum_softplus += dm_softplus((acc_t)s[e]);
        sum_excess += a - alpha0;
        sum_alpha += a;
    }
    acc_t prod_1mpi = exp(-sum_softplus);
    acc_t trigamma_sum = dm_trigamma(sum_alpha);

    for (int e = 0; e < e_len; e++) {
        acc_t se = s[e];
        acc_t pi = dm_sigmoid(se);
        acc_t one_minus_pi = dm_sigmoid(-se);
        acc_t pi_var = pi * one_minus_pi;
        acc_t dkl_b;
        if (token_mode) {
            dkl_b = pi_var * (se - log_p0 + log_1mp0);
        } else {
            global const acc_t *pe = part + 3 * (size_t)n + 2 * e;
            dkl_b = pi_var * ((pe[0] - log_p0) - (pe[1] - log_1mp0));
        }
        acc_t dk = pi * (one_minus_pi - prod_1mpi);
        ds[e] += (float)((coef_kl_b * dkl_b + dloss_dkbar * dk) / n);

        int clamped;
        acc_t a = dm_concentration(c[e], alpha_min, alpha_max, &clamped);
        acc_t dalpha_dc = clamped ? 0.0 : dm_sigmoid((acc_t)c[e]);
        acc_t dkl_d = (a - alpha0) * dm_trigamma(a) - trigamma_sum * sum_excess;
        dc[e] += (float)(coef_kl_d * dkl_d * dalpha_dc / n);
    }
}
