/*
 * cpu backend: grouping (token, expert) assignments by expert, gathering the
 * expert inputs and combining the weighted expert outputs.
 */
#include "config.h"

#include <string.h>

#include "cpu_ops.h"

/* Columns per block of the scatter-add in gather_backward. */
#define COL_BLOCK 64

dm_status cpu_dispatch_build(void *ctx, int n, int e, int capacity, dm_tensor mask,
                             dm_tensor slot, dm_tensor counts, dm_tensor demand,
                             dm_tensor offsets, dm_tensor token_of_slot)
{
    cpu_ctx *cx = ctx;
    const int32_t *mp = i32(mask);
    int32_t *sp = i32(slot);
    int32_t *cp = i32(counts);
    int32_t *dp = i32(demand);
    int32_t *op = i32(offsets);
    int32_t *tp = i32(token_of_slot);

    if (n < 0 || e < 1)
        return cpu_fail(cx, DM_ERR_INVALID, "dispatch_build: invalid sizes N=%d E=%d", n, e);

    /* Demand and kept count of each expert, one expert per iteration. */
#pragma omp parallel for num_threads(cx->nthreads) schedule(static)
    for (int ex = 0; ex < e; ex++) {
        int32_t d = 0;
        for (int t = 0; t < n; t++)
            d += mp[(size_t)t * e + ex] != 0;
        dp[ex] = d;
        cp[ex] = capacity > 0 && d > capacity ? capacity : d;
    }

    op[0] = 0;
    for (int ex = 0; ex < e; ex++)
        op[ex + 1] = op[ex] + cp[ex];

    /* Slots of expert ex are offsets[ex] .. offsets[ex+1]-1, tokens ascending. */
#pragma omp parallel for num_threads(cx->nthreads) schedule(static)
    for (int ex = 0; ex < e; ex++) {
        int32_t pos = 0;
        for (int t = 0; t < n; t++) {
            size_t idx = (size_t)t * e + ex;
            if (mp[idx] != 0 && pos < cp[ex]) {
                int32_t s = op[ex] + pos++;
                sp[idx] = s;
                tp[s] = t;
            } else {
                sp[idx] = -1;
            }
        }
    }
    return DM_OK;
}

dm_status cpu_gather_forward(void *ctx, int s, int c, dm_tensor xg, dm_tensor x,
                             dm_tensor token_of_slot)
{
    cpu_ctx *cx = ctx;
    float *xgp = f32(xg);
    const float *xp = f32(x);
    const int32_t *tp = i32(token_of_slot);

#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (s >= 64)
    for (int i = 0; i < s; i++)
        memcpy(xgp + (size_t)i * c, xp + (size_t)tp[i] * c, (size_t)c * sizeof(float));
    return DM_OK;
}

dm_status cpu_gather_backward(void *ctx, int s, int c, dm_tensor dx, dm_tensor dxg,
                              dm_tensor token_of_slot)
{
    cpu_ctx *cx = ctx;
    float *dxp = f32(dx);
    const float *dxgp = f32(dxg);
    const int32_t *tp = i32(token_of_slot);
    int nblocks = (c + COL_BLOCK - 1) / COL_BLOCK;

    /* A token appears in several slots, so threads split columns, and add slots in order. */
#pragma omp parallel for num_threads(cx->nthreads) schedule(static)
    for (int blk = 0; blk < nblocks; blk++) {
        int lo = blk * COL_BLOCK;
        int hi = lo + COL_BLOCK < c ? lo + COL_BLOCK : c;
        for (int i = 0; i < s; i++) {
            float *d = dxp + (size_t)tp[i] * c;
            const float *g = dxgp + (size_t)i * c;
            for (int j = lo; j < hi; j++)
                d[j] += g[j];
        }
    }
    return DM_OK;
}

dm_status cpu_combine_forward(void *ctx, int n, int e, int c, dm_tensor y, dm_tensor yg,
                              dm_tensor slot, dm_tensor w)
{
    cpu_ctx *cx = ctx;
    float *yp = f32(y);
    const float *ygp = f32(yg);
    const int32_t *sp = i32(slot);
    const float *wp = f32(w);

#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (n >= 64)
    for (int t = 0; t < n; t++) {
        float *yr = yp + (size_t)t * c;
        memset(yr, 0, (size_t)c * sizeof *yr);
        for (int ex = 0; ex < e; ex++) {
            int32_t s = sp[(size_t)t * e + ex];
            if (s < 0)
                continue;
            float wt = wp[(size_t)t * e + ex];
            const float *src = ygp + (size_t)s * c;
            for (int j = 0; j < c; j++)
                yr[j] += wt * src[j];
        }
    }
    return DM_OK;
}

dm_status cpu_combine_backward(void *ctx, int n, int e, int c, dm_tensor dyg, dm_tensor dw,
                               dm_tensor dy, dm_tensor yg, dm_tensor slot, dm_tensor w)
{
    cpu_ctx *cx = ctx;
    float *dygp = f32(dyg);
    float *dwp = f32(dw);
    const float *dyp = f32(dy);
    const float *ygp = f32(yg);
    const int32_t *sp = i32(slot);
    const float *wp = f32(w);

#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (n >= 64)
    for (int t = 0; t < n; t++) {
        const float *g = dyp + (size_t)t * c;
        for (int ex = 0; ex < e; ex++) {
            size_t idx = (size_t)t * e + ex;
            int32_t s = sp[idx];
            if (s < 0) {
                dwp[idx] = 0.0f;
                continue;
            }

            float wt = wp[idx];
            const float *src = ygp + (size_t)s * c;
            float *dst = dygp + (size_t)s * c;
            double dot = 0.0;
            for (int j = 0; j < c; j++) {
                dst[j] = wt * g[j];
                dot += (double)g[j] * src[j];
            }
            dwp[idx] = (float)dot;
        }
    }
    return DM_OK;
}
