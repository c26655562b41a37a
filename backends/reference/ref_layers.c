/*
 * Reference transformer layers: token and position embedding, layer norm,
 * causal multi-head attention, GELU, bias, and the fused softmax
 * cross-entropy of the language-model head.
 *
 * Each op comes as an op_forward / op_backward pair over plain arrays.
 * Forward functions overwrite their outputs; backward functions add (+=)
 * into every gradient, except xent_backward, which writes (as the op table
 * states). Reductions over a row accumulate in double.
 */
#include <math.h>

#include "ref_ops.h"

#define LAYERNORM_EPS 1e-5

/* ------------------------------------------------------------------------ */
/* encoder: token embedding plus learned position embedding                  */

/* out (B,T,C) = wte[tokens[b,t]] (V,C) + wpe[t] (T,C). */
void REF(encoder_forward)(int b, int t, int c, ref_real *out, const int32_t *tokens,
                          const ref_real *wte, const ref_real *wpe)
{
    for (int bi = 0; bi < b; bi++) {
        for (int ti = 0; ti < t; ti++) {
            ref_real *out_bt = out + ((size_t)bi * t + ti) * c;
            const ref_real *wte_row = wte + (size_t)tokens[bi * t + ti] * c;
            const ref_real *wpe_row = wpe + (size_t)ti * c;

            for (int i = 0; i < c; i++)
                out_bt[i] = wte_row[i] + wpe_row[i];
        }
    }
}

/* dwte[tokens[b,t]] += dout[b,t]; dwpe[t] += dout[b,t]. A token that occurs
 * several times receives the sum of its rows (scatter-add). */
void REF(encoder_backward)(int b, int t, int c, ref_real *dwte, ref_real *dwpe,
                           const ref_real *dout, const int32_t *tokens)
{
    for (int bi = 0; bi < b; bi++) {
        for (int ti = 0; ti < t; ti++) {
            const ref_real *dout_bt = dout + ((size_t)bi * t + ti) * c;
            ref_real *dwte_row = dwte + (size_t)tokens[bi * t + ti] * c;
            ref_real *dwpe_row = dwpe + (size_t)ti * c;

            for (int i = 0; i < c; i++) {
                dwte_row[i] += dout_bt[i];
                dwpe_row[i] += dout_bt[i];
            }
        }
    }
}

/* ------------------------------------------------------------------------ */
/* layer norm over the last axis                                             */

/* out (N,C) = (inp - mean) * rstd * weight + bias, with the biased variance
 * and rstd = 1 / sqrt(var + 1e-5). Writes mean (N) and rstd (N) for backward. */
void REF(layernorm_forward)(int n, int c, ref_real *out, ref_real *mean, ref_real *rstd,
                            const ref_real *inp, const ref_real *weight, const ref_real *bias)
{
    for (int row = 0; row < n; row++) {
        const ref_real *x = inp + (size_t)row * c;
        ref_real *y = out + (size_t)row * c;

        double sum = 0.0;
        for (int i = 0; i < c; i++)
            sum += x[i];
        double mu = sum / c;

        /* Second pass over centred values, because E[x^2] - mean^2 cancels. */
        double sum_sq = 0.0;
        for (int i = 0; i < c; i++) {
            double d = x[i] - mu;
            sum_sq += d * d;
        }
        double rs = 1.0 / sqrt(sum_sq / c + LAYERNORM_EPS);

        for (int i = 0; i < c; i++)
            y[i] = (ref_real)((x[i] - mu) * rs * weight[i] + bias[i]);
        mean[row] = (ref_real)mu;
        rstd[row] = (ref_real)rs;
    }
}

/* With xhat = (inp - mean) * rstd and g = weight * dout (per row):
 *   dbias += dout, dweight += xhat * dout,
 *   dinp += rstd * (g - mean(g) - xhat * mean(g * xhat)).
 * mean and rstd are those the forward wrote. */
void REF(layernorm_backward)(int n, int c, ref_real *dinp, ref_real *dweight, ref_real *dbias,
                             const ref_real *dout, const ref_real *inp, const ref_real *weight,
                             const ref_real *mean, const ref_real *rstd)
{
    for (int row = 0; row < n; row++) {
        const ref_real *x = inp + (size_t)row * c;
        const ref_real *dy = dout + (size_t)row * c;
        ref_real *dx = dinp + (size_t)row * c;
        double mu = mean[row];
        double rs = rstd[row];

        double g_sum = 0.0;
        double g_xhat_sum = 0.0;
        for (int i = 0; i < c; i++) {
            double xhat = (x[i] - mu) * rs;
            double g = (double)weight[i] * dy[i];
            g_sum += g;
            g_xhat_sum += g * xhat;
        }
        double g_mean = g_sum / c;
        double g_xhat_mean = g_xhat_sum / c;

        for (int i = 0; i < c; i++) {
            double xhat = (x[i] - mu) * rs;
            double g = (double)weight[i] * dy[i];

            dbias[i] += dy[i];
            dweight[i] += (ref_real)(xhat * dy[i]);
            dx[i] += (ref_real)(rs * (g - g_mean - xhat * g_xhat_mean));
        }
    }
}

/* ------------------------------------------------------------------------ */
/* causal multi-head self-attention                                          */

/* Head h of position (bi, ti) in qkv (B,T,3C): part 0 = q, 1 = k, 2 = v. */
static const ref_real *qkv_head(const ref_real *qkv, int t, int c, int hs, int bi, int ti,
                                int part, int h)
{
    return qkv + ((size_t)bi * t + ti) * 3 * c + (size_t)part * c + (size_t)h * hs;
}

/* Columns of the output accumulated at once in attention_forward. */
#define ATTN_BLOCK 64

static double dot_hs(const ref_real *x, const ref_real *y, int hs)
{
    double sum = 0.0;

    for (int i = 0; i < hs; i++)
        sum += (double)x[i] * (double)y[i];
    return sum;
}

/* Writes out (B,T,C) and lse (B,NH,T). With head size hs = C/NH and
 * s_tj = q_t . k_j / sqrt(hs) for j <= t:
 *   lse_t = log sum_j exp(s_tj),  out_t = sum_j exp(s_tj - lse_t) v_j.
 * Requires C % NH == 0 (the plugin checks it). */
void REF(attention_forward)(int b, int t, int c, int nh, ref_real *out, ref_real *lse,
                            const ref_real *qkv)
{
    int hs = c / nh;
    double scale = 1.0 / sqrt((double)hs);

    for (int bi = 0; bi < b; bi++) {
        for (int h = 0; h < nh; h++) {
            for (int ti = 0; ti < t; ti++) {
                const ref_real *q = qkv_head(qkv, t, c, hs, bi, ti, 0, h);

                /* Max of the scores first, so exp() below never overflows. */
                double max_score = -INFINITY;
                for (int tj = 0; tj <= ti; tj++) {
                    double s = dot_hs(q, qkv_head(qkv, t, c, hs, bi, tj, 1, h), hs) * scale;
                    if (s > max_score)
                        max_score = s;
                }
                double sum_exp = 0.0;
                for (int tj = 0; tj <= ti; tj++) {
                    double s = dot_hs(q, qkv_head(qkv, t, c, hs, bi, tj, 1, h), hs) * scale;
                    sum_exp += exp(s - max_score);
                }
                double lse_t = max_score + log(sum_exp);

                /* Weighted sum of the values, accumulated in double over
                 * blocks of ATTN_BLOCK columns, so the kernel needs no heap
                 * memory and recomputes each score once per block. */
                ref_real *out_t = out + ((size_t)bi * t + ti) * c + (size_t)h * hs;
                for (int i0 = 0; i0 < hs; i0 += ATTN_BLOCK) {
                    int width = hs - i0 < ATTN_BLOCK ? hs - i0 : ATTN_BLOCK;
                    double acc[ATTN_BLOCK] = {0};

                    for (int tj = 0; tj <= ti; tj++) {
                        double s = dot_hs(q, qkv_head(qkv, t, c, hs, bi, tj, 1, h), hs) * scale;
                        double p = exp(s - lse_t);
                        const ref_real *v = qkv_head(qkv, t, c, hs, bi, tj, 2, h);
                        for (int i = 0; i < width; i++)
                            acc[i] += p * v[i0 + i];
                    }
                    for (int i = 0; i < width; i++)
                        out_t[i0 + i] = (ref_real)acc[i];
                }
                lse[((size_t)bi * nh + h) * t + ti] = (ref_real)lse_t;
            }
        }
    }
}

/* dqkv (B,T,3C) += gradient of out. The probabilities are recomputed as
 * p_tj = exp(s_tj - lse_t). With D_t = dout_t . out_t over the head's columns
 * (equal to sum_j p_tj (dout_t . v_j)), the score gradient is
 * ds_tj = p_tj (dout_t . v_j - D_t), and
 *   dv_j += p_tj dout_t,  dq_t += ds_tj k_j / sqrt(hs),  dk_j += ds_tj q_t / sqrt(hs). */
void REF(attention_backward)(int b, int t, int c, int nh, ref_real *dqkv, const ref_real *dout,
                             const ref_real *qkv, const ref_real *out, const ref_real *lse)
{
    int hs = c / nh;
    double scale = 1.0 / sqrt((double)hs);

    for (int bi = 0; bi < b; bi++) {
        for (int h = 0; h < nh; h++) {
            for (int ti = 0; ti < t; ti++) {
                size_t row_off = ((size_t)bi * t + ti) * c + (size_t)h * hs;
                const ref_real *dout_t = dout + row_off;
                const ref_real *q = qkv_head(qkv, t, c, hs, bi, ti, 0, h);
                ref_real *dq = (ref_real *)qkv_head(dqkv, t, c, hs, bi, ti, 0, h);
                double lse_t = lse[((size_t)bi * nh + h) * t + ti];
                double d_t = dot_hs(dout_t, out + row_off, hs);

                for (int tj = 0; tj <= ti; tj++) {
                    const ref_real *k = qkv_head(qkv, t, c, hs, bi, tj, 1, h);
                    const ref_real *v = qkv_head(qkv, t, c, hs, bi, tj, 2, h);
                    ref_real *dk = (ref_real *)qkv_head(dqkv, t, c, hs, bi, tj, 1, h);
                    ref_real *dv = (ref_real *)qkv_head(dqkv, t, c, hs, bi, tj, 2, h);

                    double p = exp(dot_hs(q, k, hs) * scale - lse_t);
                    double ds = p * (dot_hs(dout_t, v, hs) - d_t);

                    for (int i = 0; i < hs; i++) {
                        dv[i] += (ref_real)(p * dout_t[i]);
                        dq[i] += (ref_real)(ds * scale * k[i]);
                        dk[i] += (ref_real)(ds * scale * q[i]);
                    }
                }
            }
        }
    }
}

/* ------------------------------------------------------------------------ */
/* GELU, tanh approximation                                                  */

/* sqrt(2 / pi) */
#define GELU_SCALE 0.7978845608028654
#define GELU_CUBIC 0.044715

/* out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), n elements. */
void REF(gelu_forward)(size_t n, ref_real *out, const ref_real *inp)
{
    for (size_t i = 0; i < n; i++) {
        double x = inp[i];
        double th = tanh(GELU_SCALE * (x + GELU_CUBIC * x * x * x));
        out[i] = (ref_real)(0.5 * x * (1.0 + th));
    }
}

/* dinp += gelu'(inp) * dout, the derivative of the tanh form above. */
void REF(gelu_backward)(size_t n, ref_real *dinp, const ref_real *inp, const ref_real *dout)
{
    for (size_t i = 0; i < n; i++) {
        double x = inp[i];
        double th = tanh(GELU_SCALE * (x + GELU_CUBIC * x * x * x));
        double dth_dx = (1.0 - th * th) * GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x * x);
        double grad = 0.5 * (1.0 + th) + 0.5 * x * dth_dx;
        dinp[i] += (ref_real)(grad * dout[i]);
    }
}

/* ------------------------------------------------------------------------ */
/* bias broadcast over rows                                                  */

/* out (M,N) += bias (N) on every row. */
void REF(bias_forward)(int m, int n, ref_real *out, const ref_real *bias)
{
    for (int row = 0; row < m; row++)
        for (int j = 0; j < n; j++)
            out[(size_t)row * n + j] += bias[j];
}

/* dbias (N) += column sums of dout (M,N), accumulated in double. */
void REF(bias_backward)(int m, int n, ref_real *dbias, const ref_real *dout)
{
    for (int j = 0; j < n; j++) {
        double sum = 0.0;
        for (int row = 0; row < m; row++)
            sum += dout[(size_t)row * n + j];
        dbias[j] += (ref_real)sum;
    }
}

/* ------------------------------------------------------------------------ */
/* fused softmax cross-entropy                                               */

/* Per row of logits (N,V): probs = softmax(logits) and
 * losses = logsumexp(logits) - logits[target]. Targets must lie in [0, V)
 * (the plugin checks them). */
void REF(xent_forward)(int n, int v, ref_real *losses, ref_real *probs, const ref_real *logits,
                       const int32_t *targets)
{
    for (int row = 0; row < n; row++) {
        const ref_real *z = logits + (size_t)row * v;
        ref_real *p = probs + (size_t)row * v;

        double max_logit = -INFINITY;
        for (int j = 0; j < v; j++)
            if (z[j] > max_logit)
                max_logit = z[j];
        double sum_exp = 0.0;
        for (int j = 0; j < v; j++)
            sum_exp += exp(z[j] - max_logit);
        double log_sum_exp = max_logit + log(sum_exp);

        for (int j = 0; j < v; j++)
            p[j] = (ref_real)exp(z[j] - log_sum_exp);
        losses[row] = (ref_real)(log_sum_exp - z[targets[row]]);
    }
}

/* Writes dlogits (N,V) = scale * (probs - onehot(targets)). Each element is
 * read before it is written, so dlogits may alias probs. */
void REF(xent_backward)(int n, int v, ref_real scale, ref_real *dlogits, const ref_real *probs,
                        const int32_t *targets)
{
    for (int row = 0; row < n; row++) {
        for (int j = 0; j < v; j++) {
            size_t idx = (size_t)row * v + j;
            ref_real onehot = (j == targets[row]) ? 1 : 0;
            dlogits[idx] = scale * (probs[idx] - onehot);
        }
    }
}
