/*
 * cpu backend: causal multi-head attention in tiles, so the (T,T) score
 * matrix never exists at once. The forward pass keeps a running maximum and
 * sum per query row over the key tiles (online softmax), and writes out and
 * the log-sum-exp. The backward pass recomputes each score tile from q, k and
 * lse. Tile products are single-threaded SGEMM calls made from inside the
 * OpenMP loop, one (batch, head[, query block]) per iteration.
 *
 * Shapes: qkv (B,T,3C) with head h of q, k, v at columns h*hs, C + h*hs and
 * 2C + h*hs (hs = C/NH); out (B,T,C); lse (B,NH,T).
 */
#include "config.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "cpu_ops.h"
#include "cpu_vecmath.h"

/* Query and key tile sizes; key tiles above the diagonal are skipped entirely. */
#define ATT_BQ 64
#define ATT_BK 64

/* row[j] = e^(row[j] - shift) for j < n (vectorised), then returns the sum in index order. */
CPU_SIMD_CLONES
static float exp_shift_row(float *row, int n, float shift)
{
    for (int j = 0; j < n; j++)
        row[j] = cpu_expf(row[j] - shift);

    float sum = 0.0f;
    for (int j = 0; j < n; j++)
        sum += row[j];
    return sum;
}

/* ds[j] = p[j] (dp[j] - d) in place of dp, for j < n. */
CPU_SIMD_CLONES
static void softmax_grad_row(float *dp, const float *p, int n, float d)
{
    for (int j = 0; j < n; j++)
        dp[j] = p[j] * (dp[j] - d);
}

static dm_status check_attention(cpu_ctx *cx, int b, int t, int c, int nh)
{
    if (b < 0 || t < 0 || c <= 0 || nh <= 0 || c % nh != 0)
        return cpu_fail(cx, DM_ERR_INVALID, "attention: d_model %d is not a multiple of %d heads (B=%d T=%d)",
                        c, nh, b, t);
    return DM_OK;
}

dm_status cpu_attention_forward(void *ctx, int b, int t, int c, int nh, dm_tensor out,
                                dm_tensor lse, dm_tensor qkv)
{
    cpu_ctx *cx = ctx;
    dm_status st = check_attention(cx, b, t, c, nh);
    if (st)
        return st;

    int hs = c / nh;
    int c3 = 3 * c;
    float scale = 1.0f / sqrtf((float)hs);
    int nqblocks = (t + ATT_BQ - 1) / ATT_BQ;
    long items = (long)b * nh * nqblocks;

    /* Per thread: S tile (BQ,BK), O accumulator (BQ,hs), running max and sum (BQ each). */
    size_t per_thread = (size_t)ATT_BQ * ATT_BK + (size_t)ATT_BQ * hs + 2 * ATT_BQ;
    if ((st = cpu_thread_scratch_reserve(cx, per_thread)))
        return st;

    const float *qkvp = f32(qkv);
    float *outp = f32(out);
    float *lsep = f32(lse);

#pragma omp parallel for num_threads(cx->nthreads) schedule(dynamic, 1)
    for (long item = 0; item < items; item++) {
        float *mem = cx->thread[omp_get_thread_num()].mem;
        float *s = mem;
        float *o = s + ATT_BQ * ATT_BK;
        float *rmax = o + (size_t)ATT_BQ * hs;
        float *rsum = rmax + ATT_BQ;

        int qb = (int)(item % nqblocks);
        int h = (int)(item / nqblocks % nh);
        int bb = (int)(item / nqblocks / nh);
        int i0 = qb * ATT_BQ;
        int nq = t - i0 < ATT_BQ ? t - i0 : ATT_BQ;
        const float *base = qkvp + (size_t)bb * t * c3;
        const float *q = base + (size_t)i0 * c3 + h * hs;

        for (int r = 0; r < nq; r++) {
            rmax[r] = -INFINITY;
            rsum[r] = 0.0f;
        }
        memset(o, 0, (size_t)nq * hs * sizeof *o);

        for (int j0 = 0; j0 < i0 + nq; j0 += ATT_BK) {
            int nk = i0 + nq - j0 < ATT_BK ? i0 + nq - j0 : ATT_BK;
            const float *k = base + (size_t)j0 * c3 + c + h * hs;
            const float *v = base + (size_t)j0 * c3 + 2 * c + h * hs;

            /* S = scale * Q K^T for this tile. */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, hs, scale, q, c3, k, c3,
                        0.0f, s, ATT_BK);

            /* Online softmax: rescale the running sum and O rows to the new maximum. */
            for (int r = 0; r < nq; r++) {
                float *sr = s + (size_t)r * ATT_BK;
                int valid = i0 + r - j0 + 1; /* keys j0 .. i0+r are visible */
                if (valid > nk)
                    valid = nk;
                if (valid <= 0) {
                    /* The whole tile lies after this query (possible when ATT_BQ > ATT_BK). */
                    memset(sr, 0, (size_t)nk * sizeof *sr);
                    continue;
                }

                float mx = rmax[r];
                for (int j = 0; j < valid; j++)
                    mx = sr[j] > mx ? sr[j] : mx;
                float corr = rmax[r] == -INFINITY ? 0.0f : cpu_expf(rmax[r] - mx);

                float sum = exp_shift_row(sr, valid, mx);
                for (int j = valid; j < nk; j++)
                    sr[j] = 0.0f;

                rmax[r] = mx;
                rsum[r] = rsum[r] * corr + sum;
                if (corr != 1.0f) {
                    float *orow = o + (size_t)r * hs;
                    for (int d = 0; d < hs; d++)
                        orow[d] *= corr;
                }
            }

            /* O += P V. */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, hs, nk, 1.0f, s, ATT_BK, v, c3,
                        1.0f, o, hs);
        }

        for (int r = 0; r < nq; r++) {
            float inv = 1.0f / rsum[r];
            float *dst = outp + ((size_t)bb * t + i0 + r) * c + h * hs;
            const float *orow = o + (size_t)r * hs;
            for (int d = 0; d < hs; d++)
                dst[d] = orow[d] * inv;
            lsep[((size_t)bb * nh + h) * t + i0 + r] = rmax[r] + logf(rsum[r]);
        }
    }
    return DM_OK;
}

dm_status cpu_attention_backward(void *ctx, int b, int t, int c, int nh, dm_tensor dqkv,
                                 dm_tensor dout, dm_tensor qkv, dm_tensor out, dm_tensor lse)
{
    cpu_ctx *cx = ctx;
    dm_status st = check_attention(cx, b, t, c, nh);
    if (st)
        return st;

    int hs = c / nh;
    int c3 = 3 * c;
    float scale = 1.0f / sqrtf((float)hs);
    long items = (long)b * nh;

    /* Per thread: P tile and dP tile (BQ,BK), and D = rowsum(dO * O) for the T rows of a head. */
    size_t per_thread = 2 * (size_t)ATT_BQ * ATT_BK + (size_t)t;
    if ((st = cpu_thread_scratch_reserve(cx, per_thread)))
        return st;

    const float *qkvp = f32(qkv);
    const float *outp = f32(out);
    const float *doutp = f32(dout);
    const float *lsep = f32(lse);
    float *dqkvp = f32(dqkv);

    /* One (batch, head) per iteration: dq, dk and dv of a head are then owned by one thread,
     * and each accumulates its tiles in a fixed order. */
#pragma omp parallel for num_threads(cx->nthreads) schedule(dynamic, 1)
    for (long item = 0; item < items; item++) {
        float *mem = cx->thread[omp_get_thread_num()].mem;
        float *p = mem;
        float *dp = p + ATT_BQ * ATT_BK;
        float *dsum = dp + ATT_BQ * ATT_BK;

        int h = (int)(item % nh);
        int bb = (int)(item / nh);
        const float *base = qkvp + (size_t)bb * t * c3;
        float *dbase = dqkvp + (size_t)bb * t * c3;
        const float *obase = outp + (size_t)bb * t * c + h * hs;
        const float *dobase = doutp + (size_t)bb * t * c + h * hs;
        const float *lrow = lsep + ((size_t)bb * nh + h) * t;

        for (int i = 0; i < t; i++) {
            const float *orow = obase + (size_t)i * c;
            const float *dorow = dobase + (size_t)i * c;
            float acc = 0.0f;
            for (int d = 0; d < hs; d++)
                acc += dorow[d] * orow[d];
            dsum[i] = acc;
        }

        for (int j0 = 0; j0 < t; j0 += ATT_BK) {
            int nk = t - j0 < ATT_BK ? t - j0 : ATT_BK;
            const float *k = base + (size_t)j0 * c3 + c + h * hs;
            const float *v = base + (size_t)j0 * c3 + 2 * c + h * hs;
            float *dk = dbase + (size_t)j0 * c3 + c + h * hs;
            float *dv = dbase + (size_t)j0 * c3 + 2 * c + h * hs;

            /* Query tiles that can see at least one key of this tile. */
            for (int i0 = j0 / ATT_BQ * ATT_BQ; i0 < t; i0 += ATT_BQ) {
                int nq = t - i0 < ATT_BQ ? t - i0 : ATT_BQ;
                const float *q = base + (size_t)i0 * c3 + h * hs;
                float *dq = dbase + (size_t)i0 * c3 + h * hs;
                const float *dout_tile = dobase + (size_t)i0 * c;

                /* P = exp(scale * Q K^T - lse), zero above the diagonal. */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, hs, scale, q, c3, k, c3,
                            0.0f, p, ATT_BK);
                for (int r = 0; r < nq; r++) {
                    float *pr = p + (size_t)r * ATT_BK;
                    int valid = i0 + r - j0 + 1;
                    if (valid > nk)
                        valid = nk;
                    if (valid < 0)
                        valid = 0;
                    exp_shift_row(pr, valid, lrow[i0 + r]);
                    for (int j = valid; j < nk; j++)
                        pr[j] = 0.0f;
                }

                /* dV += P^T dO. */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, hs, nq, 1.0f, p, ATT_BK,
                            dout_tile, c, 1.0f, dv, c3);

                /* dP = dO V^T, then dS = P (dP - D) in place. */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, hs, 1.0f, dout_tile, c,
                            v, c3, 0.0f, dp, ATT_BK);
                for (int r = 0; r < nq; r++)
                    softmax_grad_row(dp + (size_t)r * ATT_BK, p + (size_t)r * ATT_BK, nk, dsum[i0 + r]);

                /* dQ += scale dS K and dK += scale dS^T Q. */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, hs, nk, scale, dp, ATT_BK,
                            k, c3, 1.0f, dq, c3);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, hs, nq, scale, dp, ATT_BK,
                            q, c3, 1.0f, dk, c3);
            }
        }
    }
    return DM_OK;
}
