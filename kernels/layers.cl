/* Transformer layers: embeddings, layer norm, causal attention, GELU, bias. */

/* out (B,T,C) = wte[tokens[b,t]] + wpe[t]; 2-D grid (C, B*T). */
kernel void dm_encoder_fwd(int t_len, int c, global float *out, uint oo,
                           global const int *tokens, uint to, global const float *wte, uint weo,
                           global const float *wpe, uint wpo)
{
    int j = get_global_id(0);
    int bt = get_global_id(1);
    if (j >= c)
        return;
    int tok = tokens[to + bt];
    int t = bt % t_len;
    out[oo + (size_t)bt * c + j] = wte[weo + (size_t)tok * c + j] + wpe[wpo + (size_t)t * c + j];
}

/* dwte[tokens[bt]] += dout[bt]: one work-item per channel walks the tokens in order,
 * so repeated tokens accumulate in a fixed order without atomics. */
kernel void dm_encoder_bwd_wte(int bt_len, int c, global float *dwte, uint dwo,
                               global const float *dout, uint doo, global const int *tokens, uint to)
{
    int j = get_global_id(0);
    if (j >= c)
        return;
    for (int bt = 0; bt < bt_len; bt++) {
        int tok = tokens[to + bt];
        dwte[dwo + (size_t)tok * c + j] += dout[doo + (size_t)bt * c + j];
    }
}

/* dwpe[t] += dout[b,t] for b ascending; 2-D grid (C, T). */
kernel void dm_encoder_bwd_wpe(int b_len, int t_len, int c, global float *dwpe, uint dpo,
                               global const float *dout, uint doo)
{
    int j = get_global_id(0);
    int t = get_global_id(1);
    if (j >= c)
        return;
    float acc = dwpe[dpo + (size_t)t * c + j];
    for (int b = 0; b < b_len; b++)
        acc += dout[doo + ((size_t)b * t_len + t) * c + j];
    dwpe[dpo + (size_t)t * c + j] = acc;
}

/* One work-item per row: statistics in acc_t (double with fp64), eps 1e-5. */
kernel void dm_layernorm_fwd(int n, int c, global float *out, uint oo, global float *mean, uint mo,
                             global float *rstd, uint ro, global const float *inp, uint io,
                             global const float *weight, uint wo, global const float *bias, uint bo)
{
    int i = get_global_id(0);
    if (i >= n)
        return;
    global const float *x = inp + io + (size_t)i * c;
    global float *y = out + oo + (size_t)i * c;

    acc_t sum = 0;
    for (int j = 0; j < c; j++)
        sum += x[j];
    acc_t m = sum / c;
    acc_t var = 0;
    for (int j = 0; j < c; j++) {
        acc_t d = x[j] - m;
        var += d * d;
    }
    var /= c;
    float mf = (float)m;
    float s = (float)(1.0 / sqrt(var + 1e-5));

    for (int j = 0; j < c; j++) {
        float norm = s * (x[j] - mf);
        y[j] = norm * weight[wo + j] + bias[bo + j];
    }
    mean[mo + i] = mf;
    rstd[ro + i] = s;
}

/* dinp += per row: (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) * rstd. */
kernel void dm_layernorm_bwd_inp(int n, int c, global float *dinp, uint dio,
                                 global const float *dout, uint doo, global const float *inp, uint io,
                                 global const float *weight, uint wo, global const float *mean, uint mo,
                                 global const float *rstd, uint ro)
{
    int i = get_global_id(0);
    if (i >= n)
        return;
    global const float *x = inp + io + (size_t)i * c;
    global const float *dy = dout + doo + (size_t)i * c;
    global float *dx = dinp + dio + (size_t)i * c;
    float m = mean[mo + i];
    float s = rstd[ro + i];

    acc_t dnorm_sum = 0, dnorm_norm_sum = 0;
    for (int j = 0; j < c; j++) {
        float norm = (x[j] - m) * s;
        float dnorm = weight[wo + j] * dy[j];
        dnorm_sum += dnorm;
        dnorm_norm_sum += (acc_t)dnorm * norm;
    }
    float dnorm_mean = (float)(dnorm_sum / c);
    float dnorm_norm_mean = (float)(dnorm_norm_sum / c);

    for (int j = 0; j < c; j++) {
        float norm = (x[j] - m) * s;
        float dnorm = weight[wo + j] * dy[j];
        float v = dnorm - dnorm_mean - norm * dnorm_norm_mean;
        dx[j] += v * s;
    }
}

/* dweight += sum over rows of dout * norm, dbias += sum of dout; one work-item per column. */
kernel void dm_layernorm_bwd_params(int n, int c, global float *dweight, uint dwo,
                                    global float *dbias, uint dbo, global const float *dout, uint doo,
                                    global const float *inp, uint io, global const float *mean, uint mo,
                                    global const float *rstd, uint ro)
{
    int j = get_global_id(0);
    if (j >= c)
        return;
    acc_t dw = 0, db = 0;
    for (int i = 0; i < n; i++) {
        float norm = (inp[io + (size_t)i * c + j] - mean[mo + i]) * rstd[ro + i];
        float dy = dout[doo + (size_t)i * c + j];
        dw += (acc_t)norm * dy;
        db += dy;
    }
    dweight[dwo + j] += (float)dw;
    dbias[dbo + j] += (float)db;
}

/* Attention scores of one (b, h, t): writes P[b,h,t,:] = softmax over t2 <= t of
 * scale * <q_t, k_t2> (0 for t2 > t) into scratch and lse[b,h,t]. */
kernel void dm_attn_probs(int b_len, int t_len, int c, int nh, global float *lse, uint lo,
                          global const float *qkv, uint qo, global float *probs)
{
    int id = get_global_id(0);
    if (id >= b_len * nh * t_len)
        return;
    int t = id % t_len;
    int h = (id / t_len) % nh;
    int b = id / (t_len * nh);
    int hs = c / nh;
    float scale = 1.0f / sqrt((float)hs);
    size_t c3 = 3 * (size_t)c;
    global const float *q = qkv + qo + ((size_t)b * t_len + t) * c3 + h * hs;
    global float *p = probs + (size_t)id * t_len;

    float maxv = -INFINITY;
    for (int t2 = 0; t2 <= t; t2++) {
        global const float *k = qkv + qo + ((size_t)b * t_len + t2) * c3 + c + h * hs;
        acc_t dot = 0.0;
        for (int d = 0; d < hs; d++)
            dot += (acc_t)q[d] * k[d];
        float sv = (float)(dot * scale);
        p[t2] = sv;
        maxv = fmax(maxv, sv);
    }
    acc_t sum = 0;
    for (int t2 = 0; t2 <= t; t2++)
        sum += exp(p[t2] - maxv);
    float l = maxv + (float)log(sum);
    for (int t2 = 0; t2 <= t; t2++)
        p[t2] = exp(p[t2] - l);
    for (int t2 = t + 1; t2 < t_len; t2++)
        p[t2] = 0.0f;
    lse[lo + id] = l;
}

/* out[b,t,col] = sum over t2 <= t of P[b,h,t,t2] v[b,t2,col]; 2-D grid (C, B*T). */
kernel void dm_attn_out(int t_len, int c, int nh, global float *out, uint oo,
                        global const float *qkv, uint qo, global const float *probs)
{
    int col = get_global_id(0);
    int bt = get_global_id(1);
    if (col >= c)
        return;
    int b = bt / t_len, t = bt % t_len;
    int hs = c / nh;
    int h = col / hs;
    size_t c3 = 3 * (size_t)c;
    global const float *p = probs + (((size_t)b * nh + h) * t_len + t) * t_len;

    acc_t acc = 0.0;
    for (int t2 = 0; t2 <= t; t2++)
        acc += p[t2] * qkv[qo + ((size_t)b * t_len + t2) * c3 + 2 * c + col];
    out[oo + (size_t)bt * c + col] = acc;
}

/* Backward, step 1 for one (b, h, t): recomputes P from lse and writes P and
 * dS = P * (<dout_t, v_t2> - <dout_t, out_t>) (the score gradient before scaling). */
kernel void dm_attn_bwd_scores(int b_len, int t_len, int c, int nh, global const float *dout, uint doo,
                               global const float *qkv, uint qo, global const float *out, uint oo,
                               global const float *lse, uint lo, global float *probs,
                               global float *dscores)
{
    int id = get_global_id(0);
    if (id >= b_len * nh * t_len)
        return;
    int t = id % t_len;
    int h = (id / t_len) % nh;
    int b = id / (t_len * nh);
    int hs = c / nh;
    float scale = 1.0f / sqrt((float)hs);
    size_t c3 = 3 * (size_t)c;
    size_t row = (size_t)b * t_len + t;
    global const float *q = qkv + qo + row * c3 + h * hs;
    global const float *dy = dout + doo + row * c + h * hs;
    global const float *y = out + oo + row * c + h * hs;
    global float *p = probs + (size_t)id * t_len;
    global float *ds = dscores + (size_t)id * t_len;
    float l = lse[lo + id];

    acc_t dsum = 0.0;
    for (int d = 0; d < hs; d++)
        dsum += dy[d] * y[d];
    for (int t2 = 0; t2 <= t; t2++) {
        size_t row2 = (size_t)b * t_len + t2;
        global const float *k = qkv + qo + row2 * c3 + c + h * hs;
        global const float *v = qkv + qo + row2 * c3 + 2 * c + h * hs;
        acc_t dot = 0.0, dp = 0.0;
        for (int d = 0; d < hs; d++) {
            dot += (acc_t)q[d] * k[d];
            dp += (acc_t)dy[d] * v[d];
        }
        float pv = exp(dot * scale - l);
        p[t2] = pv;
        ds[t2] = pv * (dp - dsum);
    }
}

/* dq[b,t,col] += scale * sum over t2 <= t of dS[t,t2] k[t2,col]; 2-D grid (C, B*T). */
kernel void dm_attn_bwd_dq(int t_len, int c, int nh, global float *dqkv, uint dqo,
                           global const float *qkv, uint qo, global const float *dscores)
{
    int col = get_global_id(0);
    int bt = get_global_id(1);
    if (col >= c)
        return;
    int b = bt / t_len, t = bt % t_len;
    int hs = c / nh;
    int h = col / hs;
    float scale = 1.0f / sqrt((float)hs);
    size_t c3 = 3 * (size_t)c;
    global const float *ds = dscores + (((size_t)b * nh + h) * t_len + t) * t_len;

    acc_t acc = 0.0;
    for (int t2 = 0; t2 <= t; t2++)
        acc += ds[t2] * qkv[qo + ((size_t)b * t_len + t2) * c3 + c + col];
    dqkv[dqo + (size_t)bt * c3 + col] += acc * scale;
}

/* dk[b,t2,col] += scale * sum over t >= t2 of dS[t,t2] q[t,col] and
 * dv[b,t2,col] += sum over t >= t2 of P[t,t2] dout[t,col]; 2-D grid (C, B*T). */
kernel void dm_attn_bwd_dkv(int t_len, int c, int nh, global float *dqkv, uint dqo,
                            global const float *dout, uint doo, global const float *qkv, uint qo,
                            global const float *probs, global const float *dscores)
{
    int col = get_global_id(0);
    int bt2 = get_global_id(1);
    if (col >= c)
        return;
    int b = bt2 / t_len, t2 = bt2 % t_len;
    int hs = c / nh;
    int h = col / hs;
    float scale = 1.0f / sqrt((float)hs);
    size_t c3 = 3 * (size_t)c;
    size_t head = ((size_t)b * nh + h) * t_len;

    acc_t dk = 0.0, dv = 0.0;
    for (int t = t2; t < t_len; t++) {
        size_t row = (size_t)b * t_len + t;
        size_t at = (head + t) * t_len + t2;
        dk += dscores[at] * qkv[qo + row * c3 + col];
        dv += probs[at] * dout[doo + row * c + col];
    }
    dqkv[dqo + (size_t)bt2 * c3 + c + col] += dk * scale;
    dqkv[dqo + (size_t)bt2 * c3 + 2 * c + col] += dv;
}

#define DM_GELU_SCALE 0.7978845608028654 /* sqrt(2 / pi) */

inline float dm_gelu(float xf)
{
    acc_t x = xf;
    acc_t th = tanh((acc_t)DM_GELU_SCALE * (x + (acc_t)0.044715 * x * x * x));
    return (float)(0.5 * x * (1.0 + th));
}

kernel void dm_gelu_fwd(ulong n, global float *out, uint oo, global const float *inp, uint io)
{
    size_t i = get_global_id(0);
    if (i >= n)
        return;
    out[oo + i] = dm_gelu(inp[io + i]);
}

kernel void dm_gelu_bwd(ulong n, global float *dinp, uint dio, global const float *inp, uint io,
                        global const float *dout, uint doo)
{
    size_t i = get_global_id(0);
    if (i >= n)
        return;
    acc_t x = inp[io + i];
    acc_t th = tanh((acc_t)DM_GELU_SCALE * (x + (acc_t)0.044715 * x * x * x));
    acc_t dth_dx = (1.0 - th * th) * (acc_t)DM_GELU_SCALE * (1.0 + 3.0 * (acc_t)0.044715 * x * x);
    acc_t grad = 0.5 * (1.0 + th) + 0.5 * x * dth_dx;
    dinp[dio + i] += (float)(grad * dout[doo + i]);
}

/* out (M,N) += bias; 2-D grid (N, M). */
kernel void dm_bias_fwd(int m, int n, global float *out, uint oo, global const float *bias, uint bo)
{
    int j = get_global_id(0);
    int i = get_global_id(1);
    if (j >= n || i >= m)
        return;
    out[oo + (size_t)i * n + j] += bias[bo + j];
}

/* dbias (N) += column sums of dout (M,N), rows in order. */
kernel void dm_bias_bwd(int m, int n, global float *dbias, uint dbo, global const float *dout, uint doo)
{
    int j = get_global_id(0);
    if (j >= n)
        return;
    acc_t sum = 0;
    for (int i = 0; i < m; i++)
        sum += dout[doo + (size_t)i * n + j];
    dbias[dbo + j] += (float)sum;
}

/* pre (M,N) += bias, out = gelu(pre); 2-D grid (N, M). */
kernel void dm_bias_gelu_fwd(int m, int n, global float *out, uint oo, global float *pre, uint po,
                             global const float *bias, uint bo)
{
    int j = get_global_id(0);
    int i = get_global_id(1);
    if (j >= n || i >= m)
        return;
    size_t at = (size_t)i * n + j;
    float v = pre[po + at] + bias[bo + j];
    pre[po + at] = v;
    out[oo + at] = dm_gelu(v);
}
