/* Losses and the optimizer: load balancing, z-loss, softmax cross-entropy, AdamW. */

/* Per-row log-sum-exp of the first e_len columns of a row with stride `stride`. */
inline float dm_row_lse(global const float *s, int e_len)
{
    float maxv = -INFINITY;
    for (int e = 0; e < e_len; e++)
        maxv = fmax(maxv, s[e]);
    acc_t sum = 0;
    for (int e = 0; e < e_len; e++)
        sum += exp(s[e] - maxv);
    return maxv + (float)log(sum);
}

/* Balance statistics, step 1: one work-item per expert (P_e = mean of probs over tokens,
 * into part[e]) and one per token (z_t = lse_t^2, into part[E + t]); grid E + N. */
kernel void dm_balance_parts(int n, int e_len, int stride, global const float *logits, uint lo,
                             global const float *probs, uint po, global acc_t *part)
{
    int id = get_global_id(0);
    if (id < e_len) {
        acc_t sum = 0;
        for (int t = 0; t < n; t++)
            sum += probs[po + (size_t)t * e_len + id];
        part[id] = sum / n;
    } else if (id < e_len + n) {
        int t = id - e_len;
        float l = dm_row_lse(logits + lo + (size_t)t * stride, e_len);
        part[id] = (acc_t)l * l;
    }
}

/* Balance statistics, step 2 (one work-item): stats[0] = E sum f_e P_e with
 * f_e = demand_e / (N k), stats[1] = mean over tokens of z_t. */
kernel void dm_balance_final(int n, int e_len, int k, global const acc_t *part,
                             global const int *demand, uint dmo, global float *stats, uint so)
{
    if (get_global_id(0) != 0)
        return;
    acc_t bal = 0;
    for (int e = 0; e < e_len; e++)
        bal += ((acc_t)demand[dmo + e] / ((acc_t)n * k)) * part[e];
    acc_t z = 0;
    for (int t = 0; t < n; t++)
        z += part[e_len + t];
    stats[so + 0] = n > 0 ? (float)(e_len * bal) : 0.0f;
    stats[so + 1] = n > 0 ? (float)(z / n) : 0.0f;
}

/* dlogits[t, :E] += coef_balance * softmax-backward of E f_e / N
 *                 + coef_z * 2 lse_t / N * p_t; one work-item per token. */
kernel void dm_balance_bwd(int n, int e_len, int k, int stride, acc_t coef_balance, acc_t coef_z,
                           global const float *logits, uint lo, global const float *probs, uint po,
                           global const int *demand, uint dmo, global float *dlogits, uint dlo)
{
    int t = get_global_id(0);
    if (t >= n)
        return;
    global const float *p = probs + po + (size_t)t * e_len;
    global float *ds = dlogits + dlo + (size_t)t * stride;
    acc_t scale_f = (acc_t)e_len / ((acc_t)n * n * k); /* dL/dp_e = E f_e / N = scale_f * demand_e */

    acc_t dot = 0;
    for (int e = 0; e < e_len; e++)
        dot += (acc_t)p[e] * (scale_f * demand[dmo + e]);
    float l = dm_row_lse(logits + lo + (size_t)t * stride, e_len);
    acc_t zfac = coef_z * 2.0 * l / n;

    for (int e = 0; e < e_len; e++) {
        acc_t g = scale_f * demand[dmo + e];
        acc_t grad = coef_balance * p[e] * (g - dot) + zfac * p[e];
        ds[e] += (float)grad;
    }
}

/* losses[t] = lse(logits_t) - logits_t[target], probs_t = softmax(logits_t); one work-item per row. */
kernel void dm_xent_fwd(int n, int v, global float *losses, uint lso, global float *probs, uint po,
                        global const float *logits, uint lo, global const int *targets, uint to)
{
    int i = get_global_id(0);
    if (i >= n)
        return;
    global const float *x = logits + lo + (size_t)i * v;
    global float *p = probs + po + (size_t)i * v;

    float maxv = -INFINITY;
    for (int j = 0; j < v; j++)
        maxv = fmax(maxv, x[j]);
    acc_t sum = 0;
    for (int j = 0; j < v; j++)
        sum += exp(x[j] - maxv);
    float inv = (float)(1.0 / sum);
    for (int j = 0; j < v; j++)
        p[j] = exp(x[j] - maxv) * inv;
    int tgt = targets[to + i];
    losses[lso + i] = (float)(log(sum) + (acc_t)maxv - (acc_t)x[tgt]);
}

/* dlogits = scale * (probs - onehot(target)); 2-D grid (V, N); dlogits may alias probs. */
kernel void dm_xent_bwd(int v, float scale, global float *dlogits, uint dlo, global const float *probs,
                        uint po, global const int *targets, uint to)
{
    int j = get_global_id(0);
    int i = get_global_id(1);
    if (j >= v)
        return;
    size_t at = (size_t)i * v + j;
    float ind = (j == targets[to + i]) ? 1.0f : 0.0f;
    dlogits[dlo + at] = scale * (probs[po + at] - ind);
}

/* AdamW with decoupled weight decay; bc1 = 1 - beta1^t and bc2 = 1 - beta2^t from the host. */
kernel void dm_adamw(ulong n, float lr, float beta1f, float beta2f, float eps, float wd, acc_t bc1,
                     acc_t bc2, global float *params, uint po, global const float *grads, uint go,
                     global float *m, uint mo, global float *v, uint vo)
{
    size_t i = get_global_id(0);
    if (i >= n)
        return;
    acc_t beta1 = beta1f, beta2 = beta2f;
    acc_t g = grads[go + i];
    acc_t mi = beta1 * m[mo + i] + (1.0 - beta1) * g;
    acc_t vi = beta2 * v[vo + i] + (1.0 - beta2) * g * g;
    acc_t mhat = mi / bc1;
    acc_t vhat = vi / bc2;
    acc_t p = params[po + i];
    acc_t update = mhat / (sqrt(vhat) + (acc_t)eps) + (acc_t)wd * p;
    m[mo + i] = (float)mi;
    v[vo + i] = (float)vi;
    params[po + i] = (float)(p - (acc_t)lr * update);
}
