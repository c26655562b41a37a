/*
 * cpu backend: embedding, layer norm, GELU and bias ops. Column reductions
 * (bias and layer-norm gradients, scatter-adds) give each thread whole
 * columns and walk the rows in order, so sums never depend on the thread
 * count and need no atomics.
 */
#include "config.h"

#include <math.h>
#include <string.h>

#include "cpu_ops.h"
#include "cpu_vecmath.h"

/* Columns per block of a column reduction: one double accumulator line each. */
#define COL_BLOCK 64
/* Rows below which a row-parallel loop stays on one thread. */
#define ROWS_PARALLEL_MIN 64

#define GELU_SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_CUBIC 0.044715f

/* acc[j] += x[r * ld + j] over rows r in order, for j < width: one column block's sums. */
CPU_SIMD_CLONES
static void column_sums(double *acc, const float *x, size_t ld, int rows, int width)
{
    for (int r = 0; r < rows; r++) {
        const float *row = x + (size_t)r * ld;
        for (int j = 0; j < width; j++)
            acc[j] += row[j];
    }
}

/* The layer-norm parameter sums of one column block: acc_w[j] += xhat * dout and
 * acc_b[j] += dout over rows in order, with xhat = (x - mean) * rstd. */
CPU_SIMD_CLONES
static void layernorm_param_sums(double *acc_w, double *acc_b, const float *x, const float *dout, size_t ld,
                                 const float *mean, const float *rstd, int rows, int width)
{
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * ld;
        const float *gr = dout + (size_t)r * ld;
        float m = mean[r], s = rstd[r];
        for (int j = 0; j < width; j++) {
            float norm = (xr[j] - m) * s;
            acc_w[j] += norm * gr[j];
            acc_b[j] += gr[j];
        }
    }
}

dm_status cpu_encoder_forward(void *ctx, int b, int t, int c, dm_tensor out, dm_tensor tokens,
                              dm_tensor wte, dm_tensor wpe)
{
    cpu_ctx *cx = ctx;
    float *op = f32(out);
    const int32_t *tok = i32(tokens);
    const float *te = f32(wte);
    const float *pe = f32(wpe);
    int n = b * t;

#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (n >= ROWS_PARALLEL_MIN)
    for (int row = 0; row < n; row++) {
        const float *e = te + (size_t)tok[row] * c;
        const float *p = pe + (size_t)(row % t) * c;
        float *o = op + (size_t)row * c;
        for (int j = 0; j < c; j++)
            o[j] = e[j] + p[j];
    }
    return DM_OK;
}

dm_status cpu_encoder_backward(void *ctx, int b, int t, int c, dm_tensor dwte, dm_tensor dwpe,
                               dm_tensor dout, dm_tensor tokens)
{
    cpu_ctx *cx = ctx;
    float *dte = f32(dwte);
    float *dpe = f32(dwpe);
    const float *dop = f32(dout);
    const int32_t *tok = i32(tokens);
    int n = b * t;
    int nblocks = (c + COL_BLOCK - 1) / COL_BLOCK;

    /* dwte: scatter-add by token id. Each thread owns a column block and adds rows in order. */
#pragma omp parallel for num_threads(cx->nthreads) schedule(static)
    for (int blk = 0; blk < nblocks; blk++) {
        int lo = blk * COL_BLOCK;
        int hi = lo + COL_BLOCK < c ? lo + COL_BLOCK : c;
        for (int row = 0; row < n; row++) {
            float *d = dte + (size_t)tok[row] * c;
            const float *g = dop + (size_t)row * c;
            for (int j = lo; j < hi; j++)
                d[j] += g[j];
        }
    }

    /* dwpe[pos] += sum over the batch, b ascending. */
#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (t >= ROWS_PARALLEL_MIN)
    for (int pos = 0; pos < t; pos++) {
        float *d = dpe + (size_t)pos * c;
        for (int bb = 0; bb < b; bb++) {
            const float *g = dop + ((size_t)bb * t + pos) * c;
            for (int j = 0; j < c; j++)
                d[j] += g[j];
        }
    }
    return DM_OK;
}

dm_status cpu_layernorm_forward(void *ctx, int n, int c, dm_tensor out, dm_tensor mean,
                                dm_tensor rstd, dm_tensor inp, dm_tensor weight, dm_tensor bias)
{
    cpu_ctx *cx = ctx;
    float *op = f32(out);
    float *mp = f32(mean);
    float *rp = f32(rstd);
    const float *ip = f32(inp);
    const float *wp = f32(weight);
    const float *bp = f32(bias);

#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (n >= ROWS_PARALLEL_MIN)
    for (int row = 0; row < n; row++) {
        const float *x = ip + (size_t)row * c;
        float *o = op + (size_t)row * c;

        /* Two passes in double: the mean, then the variance around it. */
        double sum = 0.0;
        for (int j = 0; j < c; j++)
            sum += x[j];
        double mu = sum / c;
        double sq = 0.0;
        for (int j = 0; j < c; j++) {
            double d = x[j] - mu;
            sq += d * d;
        }
        float m = (float)mu;
        float s = (float)(1.0 / sqrt(sq / c + 1e-5));

        for (int j = 0; j < c; j++)
            o[j] = (x[j] - m) * s * wp[j] + bp[j];
        mp[row] = m;
        rp[row] = s;
    }
    return DM_OK;
}

dm_status cpu_layernorm_backward(void *ctx, int n, int c, dm_tensor dinp, dm_tensor dweight,
                                 dm_tensor dbias, dm_tensor dout, dm_tensor inp, dm_tensor weight,
                                 dm_tensor mean, dm_tensor rstd)
{
    cpu_ctx *cx = ctx;
    float *dip = f32(dinp);
    float *dwp = f32(dweight);
    float *dbp = f32(dbias);
    const float *dop = f32(dout);
    const float *ip = f32(inp);
    const float *wp = f32(weight);
    const float *mp = f32(mean);
    const float *rp = f32(rstd);

    /* dinp, row-parallel: (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) * rstd. */
#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (n >= ROWS_PARALLEL_MIN)
    for (int row = 0; row < n; row++) {
        const float *x = ip + (size_t)row * c;
        const float *g = dop + (size_t)row * c;
        float *dx = dip + (size_t)row * c;
        float m = mp[row], s = rp[row];

        double sum_dnorm = 0.0, sum_dnorm_norm = 0.0;
        for (int j = 0; j < c; j++) {
            float norm = (x[j] - m) * s;
            float dnorm = wp[j] * g[j];
            sum_dnorm += dnorm;
            sum_dnorm_norm += (double)dnorm * norm;
        }
        float mean_dnorm = (float)(sum_dnorm / c);
        float mean_dnorm_norm = (float)(sum_dnorm_norm / c);

        for (int j = 0; j < c; j++) {
            float norm = (x[j] - m) * s;
            float dnorm = wp[j] * g[j];
            dx[j] += (dnorm - mean_dnorm - norm * mean_dnorm_norm) * s;
        }
    }

    /* dweight and dbias, column-parallel over rows in order. */
    int nblocks = (c + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for num_threads(cx->nthreads) schedule(static)
    for (int blk = 0; blk < nblocks; blk++) {
        int lo = blk * COL_BLOCK;
        int width = c - lo < COL_BLOCK ? c - lo : COL_BLOCK;
        double acc_w[COL_BLOCK] = {0}, acc_b[COL_BLOCK] = {0};

        layernorm_param_sums(acc_w, acc_b, ip + lo, dop + lo, (size_t)c, mp, rp, n, width);
        for (int j = 0; j < width; j++) {
            dwp[lo + j] += (float)acc_w[j];
            dbp[lo + j] += (float)acc_b[j];
        }
    }
    return DM_OK;
}

/* gelu(x) = 0.5 x (1 + tanh(a)), a = sqrt(2/pi) (x + 0.044715 x^3), written as
 * x sigmoid(2a) = x / (1 + e^{-2a}): the same function without the cancellation of
 * 1 + tanh(a) at large negative x. */
static inline float gelu(float x)
{
    float a = GELU_SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
    return x / (1.0f + cpu_expf(-2.0f * a));
}

/* d gelu / dx = s + 0.5 x (1 - tanh(a)^2) a' with s = sigmoid(2a) = (1 + tanh(a)) / 2,
 * so 1 - tanh(a)^2 = 4 s (1 - s), and 1 - s = e^{-2a} s is computed without cancellation. */
static inline float gelu_grad(float x)
{
    float a = GELU_SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
    float e = cpu_expf(-2.0f * a);
    float s = 1.0f / (1.0f + e);
    float da = GELU_SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_CUBIC * x * x);
    return s + 2.0f * x * s * (e * s) * da;
}

CPU_SIMD_CLONES
static void gelu_forward_span(float *out, const float *inp, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = gelu(inp[i]);
}

CPU_SIMD_CLONES
static void gelu_backward_span(float *dinp, const float *inp, const float *dout, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dinp[i] += gelu_grad(inp[i]) * dout[i];
}

/* pre += bias and out = gelu(pre) over one row. */
CPU_SIMD_CLONES
static void bias_gelu_row(float *out, float *pre, const float *bias, int n)
{
    for (int j = 0; j < n; j++) {
        float x = pre[j] + bias[j];
        pre[j] = x;
        out[j] = gelu(x);
    }
}

dm_status cpu_gelu_forward(void *ctx, size_t n, dm_tensor out, dm_tensor inp)
{
    cpu_ctx *cx = ctx;
    float *op = f32(out);
    const float *ip = f32(inp);
    size_t nspans = cpu_nchunks(n, CPU_SPAN);

#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (nspans > 1)
    for (size_t sp = 0; sp < nspans; sp++) {
        size_t lo = sp * CPU_SPAN;
        size_t len = n - lo < CPU_SPAN ? n - lo : CPU_SPAN;
        gelu_forward_span(op + lo, ip + lo, len);
    }
    return DM_OK;
}

dm_status cpu_gelu_backward(void *ctx, size_t n, dm_tensor dinp, dm_tensor inp, dm_tensor dout)
{
    cpu_ctx *cx = ctx;
    float *dip = f32(dinp);
    const float *ip = f32(inp);
    const float *dop = f32(dout);
    size_t nspans = cpu_nchunks(n, CPU_SPAN);

#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (nspans > 1)
    for (size_t sp = 0; sp < nspans; sp++) {
        size_t lo = sp * CPU_SPAN;
        size_t len = n - lo < CPU_SPAN ? n - lo : CPU_SPAN;
        gelu_backward_span(dip + lo, ip + lo, dop + lo, len);
    }
    return DM_OK;
}

dm_status cpu_bias_forward(void *ctx, int m, int n, dm_tensor out, dm_tensor bias)
{
    cpu_ctx *cx = ctx;
    float *op = f32(out);
    const float *bp = f32(bias);

#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (m >= ROWS_PARALLEL_MIN)
    for (int row = 0; row < m; row++) {
        float *o = op + (size_t)row * n;
        for (int j = 0; j < n; j++)
            o[j] += bp[j];
    }
    return DM_OK;
}

dm_status cpu_bias_backward(void *ctx, int m, int n, dm_tensor dbias, dm_tensor dout)
{
    cpu_ctx *cx = ctx;
    float *dbp = f32(dbias);
    const float *dop = f32(dout);
    int nblocks = (n + COL_BLOCK - 1) / COL_BLOCK;

#pragma omp parallel for num_threads(cx->nthreads) schedule(static)
    for (int blk = 0; blk < nblocks; blk++) {
        int lo = blk * COL_BLOCK;
        int width = n - lo < COL_BLOCK ? n - lo : COL_BLOCK;
        double acc[COL_BLOCK] = {0};

        column_sums(acc, dop + lo, (size_t)n, m, width);
        for (int j = 0; j < width; j++)
            dbp[lo + j] += (float)acc[j];
    }
    return DM_OK;
}

dm_status cpu_bias_gelu_forward(void *ctx, int m, int n, dm_tensor out, dm_tensor pre,
                                dm_tensor bias)
{
    cpu_ctx *cx = ctx;
    float *op = f32(out);
    float *pp = f32(pre);
    const float *bp = f32(bias);

    /* One pass over the (M,N) block: pre += bias, out = gelu(pre). */
#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (m >= ROWS_PARALLEL_MIN)
    for (int row = 0; row < m; row++)
        bias_gelu_row(op + (size_t)row * n, pp + (size_t)row * n, bp, n);
    return DM_OK;
}
