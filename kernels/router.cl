/*
 * Router kernels: Philox words, Gamma sampling and its implicit gradient,
 * DirMoE training forward/backward, evaluation routing and regularisers,
 * top-k / Switch routing. One work-item per token (or element); intermediate
 * values in acc_t (double with fp64), as the reference backend computes them,
 * so decisions agree except within rounding of their thresholds.
 * Ties between equal values go to the lower expert index everywhere.
 */

kernel void dm_philox_words(ulong n, uint k0, uint k1, uint index_base, uint attempt, uint layer,
                            uint purpose, uint step, global uint *out, uint oo)
{
    size_t i = get_global_id(0);
    if (i >= n)
        return;
    uint4 w = dm_philox_at(k0, k1, index_base + (uint)i, attempt, layer, purpose, step);
    vstore4(w, 0, out + oo + 4 * i);
}

/* Box-Muller normal from two words, in float: sqrt(-2 log u0) cos(2 pi u1). */
inline float dm_normal(uint w0, uint w1)
{
    float u0 = dm_uniform(w0);
    float u1 = dm_uniform(w1);
    return sqrt(-2.0f * log(u0)) * cos(6.28318531f * u1);
}

/* log1p(y) - y + y^2/2 - y^3/3; below |y| = 0.1 the series -y^4/4 + y^5/5 - ... (9 terms),
 * because the direct form cancels there. The same evaluation order as common/gamma.c. */
inline float dm_log1p_tail(float y)
{
    if (fabs(y) >= 0.1f)
        return log1p(y) - y + y * y * (0.5f - y * (1.0f / 3.0f));
    float s = 0.0f;
    for (int n = 12; n >= 4; n--)
        s = s * -y + 1.0f / (float)n;
    float y2 = y * y;
    return -(y2 * y2) * s;
}

/* log g for g ~ Gamma(alpha, 1) by Marsaglia-Tsang in float, attempts 0..63 of element
 * `index` (purpose DM_RNG_GAMMA), as dm_gamma_sample_logf in common/gamma.c.
 * *fallback = 1 when every attempt was rejected; the result is then log alpha. */
inline float dm_gamma_log_sample(float alpha, uint k0, uint k1, uint index, uint layer, uint step,
                                 int *fallback)
{
    /* alpha < 1 samples Gamma(alpha + 1) and multiplies by u^(1/alpha). */
    int boost = alpha < 1.0f;
    float shape = boost ? alpha + 1.0f : alpha;
    float d = shape - 1.0f / 3.0f;
    float c = 1.0f / sqrt(9.0f * d);

    *fallback = 0;
    for (uint a = 0; a < 64; a++) {
        uint4 w = dm_philox_at(k0, k1, index, a, layer, DM_RNG_GAMMA, step);
        float x = dm_normal(w.x, w.y);
        float y = c * x;
        if (y <= -1.0f)
            continue; /* v = (1 + y)^3 <= 0: this attempt is used up */

        float u = dm_uniform(w.z);
        float x2 = x * x;
        int accept = u < 1.0f - 0.0331f * (x2 * x2);
        if (!accept)
            accept = log(u) < 3.0f * d * dm_log1p_tail(y);
        if (!accept)
            continue;

        float lg = log(d) + 3.0f * log1p(y);
        if (boost)
            lg += log(dm_uniform(w.w)) / alpha;
        return lg;
    }
    *fallback = 1;
    return log(alpha);
}

kernel void dm_gamma_sample(ulong n, uint k0, uint k1, uint index_base, uint layer, uint step,
                            global float *log_g, uint lgo, global const float *alpha, uint ao,
                            global uint *fallbacks, uint fo)
{
    size_t i = get_global_id(0);
    if (i >= n)
        return;
    int fb;
    log_g[lgo + i] = dm_gamma_log_sample(alpha[ao + i], k0, k1, index_base + (uint)i, layer, step, &fb);
    if (fb)
        atomic_inc(fallbacks + fo);
}

kernel void dm_gamma_grad(ulong n, global float *out, uint oo, global const float *alpha, uint ao,
                          global const float *log_g, uint lgo)
{
    size_t i = get_global_id(0);
    if (i >= n)
        return;
    out[oo + i] = (float)dm_gamma_dlogg_dalpha(alpha[ao + i], log_g[lgo + i]);
}

/* alpha = min(softplus(c) + alpha_min, alpha_max); *clamped where the upper clamp binds. */
inline acc_t dm_concentration(acc_t c, acc_t alpha_min, acc_t alpha_max, int *clamped)
{
    acc_t a = dm_softplus(c) + alpha_min;
    *clamped = a >= alpha_max;
    return *clamped ? alpha_max : a;
}

/* Training forward of one token per work-item. score (N,E) acc_t scratch holds s + l,
 * the gate's decision variable, so the hard rules compare the same values the
 * reference compares. */
kernel void dm_dirmoe_fwd(int n, int e_len, int k_max, int soft, int fixed_noise, float tau,
                          float alpha_min, float alpha_max, uint k0, uint k1, uint layer, uint step,
                          uint token_base, global const float *logits, uint lo, global float *u, uint uo,
                          global float *log_g, uint lgo, global float *zt, uint zo,
                          global float *alpha, uint ao, global int *mask, uint mo, global float *w,
                          uint wo, global uint *fallbacks, uint fo, global acc_t *score)
{
    int t = get_global_id(0);
    if (t >= n)
        return;
    global const float *s = logits + lo + (size_t)t * 2 * e_len;
    global const float *c = s + e_len;
    size_t row = (size_t)t * e_len;
    global acc_t *sc = score + row;
    global int *sel = mask + mo + row;

    /* Concentrations, selection noise and the relaxed gate. */
    for (int e = 0; e < e_len; e++) {
        int clamped;
        alpha[ao + row + e] = (float)dm_concentration(c[e], alpha_min, alpha_max, &clamped);
        uint index = (token_base + (uint)t) * (uint)e_len + (uint)e;
        if (!fixed_noise) {
            uint4 wd = dm_philox_at(k0, k1, index, 0, layer, DM_RNG_SELECT, step);
            u[uo + row + e] = dm_uniform(wd.x);
        }
        acc_t ue = u[uo + row + e];
        sc[e] = (acc_t)s[e] + (log(ue) - log1p(-ue));
        zt[zo + row + e] = (float)dm_sigmoid(sc[e] / tau);
    }

    /* Mask: every expert in soft mode; else 1[score > 0], at least one, at most k_max. */
    int n_sel = 0;
    for (int e = 0; e < e_len; e++) {
        sel[e] = soft ? 1 : sc[e] > 0.0;
        n_sel += sel[e];
    }
    if (n_sel == 0) {
        int best = 0;
        for (int e = 1; e < e_len; e++)
            if (sc[e] > sc[best])
                best = e;
        sel[best] = 1;
    } else if (!soft && n_sel > k_max) {
        /* The rank is taken among the selected before any is dropped, so the loop marks
         * drops with 2 first and clears them afterwards. */
        for (int e = 0; e < e_len; e++) {
            if (!sel[e])
                continue;
            int rank = 0;
            for (int j = 0; j < e_len; j++) {
                if (j == e || !sel[j])
                    continue;
                if (sc[j] > sc[e] || (sc[j] == sc[e] && j < e))
                    rank++;
            }
            if (rank >= k_max)
                sel[e] = 2;
        }
        for (int e = 0; e < e_len; e++)
            if (sel[e] == 2)
                sel[e] = 0;
    }

    /* Contribution noise for the selected experts; 0 for the others when drawn. */
    if (!fixed_noise) {
        for (int e = 0; e < e_len; e++) {
            if (!sel[e]) {
                log_g[lgo + row + e] = 0.0f;
                continue;
            }
            int fb;
            uint index = (token_base + (uint)t) * (uint)e_len + (uint)e;
            log_g[lgo + row + e] = dm_gamma_log_sample(alpha[ao + row + e], k0, k1, index, layer, step, &fb);
            if (fb)
                atomic_inc(fallbacks + fo);
        }
    }

    /* Weights: softmax over the selected of log g (+ log zt in soft mode). */
    acc_t vmax = -INFINITY;
    for (int e = 0; e < e_len; e++) {
        acc_t v = log_g[lgo + row + e];
        if (soft)
            v -= dm_softplus(-sc[e] / tau);
        if (sel[e] && v > vmax)
            vmax = v;
    }
    acc_t sum = 0.0;
    for (int e = 0; e < e_len; e++) {
        acc_t v = log_g[lgo + row + e];
        if (soft)
            v -= dm_softplus(-sc[e] / tau);
        if (sel[e])
            sum += exp(v - vmax);
    }
    for (int e = 0; e < e_len; e++) {
        acc_t v = log_g[lgo + row + e];
        if (soft)
            v -= dm_softplus(-sc[e] / tau);
        w[wo + row + e] = sel[e] ? (float)(exp(v - vmax) / sum) : 0.0f;
    }
}

/* Training backward of one token per work-item (straight-through in hard mode). */
kernel void dm_dirmoe_bwd(int n, int e_len, int soft, float tau, float alpha_min, float alpha_max,
                          global float *dlogits, uint dlo, global const float *dw, uint dwo,
                          global const float *logits, uint lo, global const float *zt, uint zo,
                          global const float *alpha, uint ao, global const float *log_g, uint lgo,
                          global const int *mask, uint mo, global const float *w, uint wo)
{
    int t = get_global_id(0);
    if (t >= n)
        return;
    size_t row = (size_t)t * e_len;
    global const float *c = logits + lo + (size_t)t * 2 * e_len + e_len;
    global float *ds = dlogits + dlo + (size_t)t * 2 * e_len;
    global float *dc = ds + e_len;

    acc_t abar = 0.0;
    for (int e = 0; e < e_len; e++)
        if (mask[mo + row + e])
            abar += (acc_t)w[wo + row + e] * (acc_t)dw[dwo + row + e];

    for (int e = 0; e < e_len; e++) {
        if (!mask[mo + row + e])
            continue;
        acc_t dlogit = (acc_t)w[wo + row + e] * ((acc_t)dw[dwo + row + e] - abar);
        acc_t z = zt[zo + row + e];
        acc_t gate = soft ? (1.0 - z) : z * (1.0 - z);
        ds[e] += (float)(dlogit * gate / tau);

        int clamped;
        dm_concentration(c[e], alpha_min, alpha_max, &clamped);
        if (clamped)
            continue;
        acc_t dalpha = dlogit * dm_gamma_dlogg_dalpha(alpha[ao + row + e], log_g[lgo + row + e]);
        dc[e] += (float)(dalpha * dm_sigmoid((acc_t)c[e]));
    }
}

/* Evaluation routing of one token per work-item: the n = clamp(floor(K + 1/2), 1, k_max)
 * largest s, weights alpha / sum of the kept alpha. */
kernel void dm_dirmoe_eval(int n, int e_len, int k_max, float alpha_min, float alpha_max,
                           global const float *logits, uint lo, global int *mask, uint mo,
                           global float *w, uint wo)
{
    int t = get_global_id(0);
    if (t >= n)
        return;
    global const float *s = logits + lo + (size_t)t * 2 * e_len;
    global const float *c = s + e_len;
    size_t row = (size_t)t * e_len;

    acc_t sum_pi = 0.0, sum_softplus = 0.0;
    for (int e = 0; e < e_len; e++) {
        sum_pi += dm_sigmoid((acc_t)s[e]);
        sum_softplus += dm_softplus((acc_t)s[e]);
    }
    acc_t expected = sum_pi + exp(-sum_softplus);
    int n_keep = (int)floor(expected + 0.5);
    n_keep = clamp(n_keep, 1, k_max);

    acc_t sum_alpha = 0.0;
    for (int e = 0; e < e_len; e++) {
        int rank = 0;
        for (int j = 0; j < e_len; j++)
            if (j != e && (s[j] > s[e] || (s[j] == s[e] && j < e)))
                rank++;
        int keep = rank < n_keep;
        mask[mo + row + e] = keep;
        if (keep) {
            int clamped;
            sum_alpha += dm_concentration(c[e], alpha_min, alpha_max, &clamped);
        }
    }
    for (int e = 0; e < e_len; e++) {
        int clamped;
        acc_t a = dm_concentration(c[e], alpha_min, alpha_max, &clamped);
        w[wo + row + e] = mask[mo + row + e] ? (float)(a / sum_alpha) : 0.0f;
    }
}

/* Top-k of one token per work-item: probs = softmax(s), the k largest s kept. */
kernel void dm_topk_fwd(int n, int e_len, int k, int renormalize, global const float *logits, uint lo,
                        global float *probs, uint po, global int *mask, uint mo, global float *w, uint wo)
{
    int t = get_global_id(0);
    if (t >= n)
        return;
    size_t row = (size_t)t * e_len;
    global const float *s = logits + lo + row;

    acc_t smax = -INFINITY, sum = 0.0;
    for (int e = 0; e < e_len; e++)
        smax = fmax(smax, (acc_t)s[e]);
    for (int e = 0; e < e_len; e++)
        sum += exp((acc_t)s[e] - smax);

    acc_t kept_sum = 0.0;
    for (int e = 0; e < e_len; e++) {
        acc_t prob = exp((acc_t)s[e] - smax) / sum;
        probs[po + row + e] = (float)prob;
        int rank = 0;
        for (int j = 0; j < e_len; j++)
            if (j != e && (s[j] > s[e] || (s[j] == s[e] && j < e)))
                rank++;
        mask[mo + row + e] = rank < k;
        if (rank < k)
            kept_sum += prob;
    }
    for (int e = 0; e < e_len; e++) {
        acc_t we = 0.0;
        if (mask[mo + row + e]) {
            acc_t prob = exp((acc_t)s[e] - smax) / sum;
            we = renormalize ? prob / kept_sum : prob;
        }
        w[wo + row + e] = (float)we;
    }
}

kernel void dm_topk_bwd(int n, int e_len, int renormalize, global float *dlogits, uint dlo,
                        global const float *dw, uint dwo, global const float *probs, uint po,
                        global const int *mask, uint mo, global const float *w, uint wo)
{
    int t = get_global_id(0);
    if (t >= n)
        return;
    size_t row = (size_t)t * e_len;

    if (renormalize) {
        acc_t gbar = 0.0;
        for (int e = 0; e < e_len; e++)
            if (mask[mo + row + e])
                gbar += (acc_t)w[wo + row + e] * (acc_t)dw[dwo + row + e];
        for (int e = 0; e < e_len; e++)
            if (mask[mo + row + e])
                dlogits[dlo + row + e] += (float)((acc_t)w[wo + row + e] * ((acc_t)dw[dwo + row + e] - gbar));
    } else {
        acc_t gbar = 0.0;
        for (int e = 0; e < e_len; e++)
            if (mask[mo + row + e])
                gbar += (acc_t)probs[po + row + e] * (acc_t)dw[dwo + row + e];
        for (int e = 0; e < e_len; e++) {
            acc_t g = mask[mo + row + e] ? (acc_t)dw[dwo + row + e] : 0.0;
            dlogits[dlo + row + e] += (float)((acc_t)probs[po + row + e] * (g - gbar));
        }
    }
}
