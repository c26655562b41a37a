/*
 * Reference dispatch and combine: group (token, expert) assignments by
 * expert into slots, gather token rows into those slots, and combine the
 * experts' slot outputs back into token rows with the routing weights.
 * The loop variable x runs over experts, because the op signature names the
 * expert count e.
 */
#include "config.h"

#include "ref_ops.h"

/* Groups the assignments of mask (N,E) int32 (nonzero = selected) into
 * expert-major slots, tokens ascending inside an expert. With capacity > 0 an
 * expert keeps its first `capacity` tokens and drops the later ones (slot -1).
 * Writes slot (N,E), counts (E), demand (E), offsets (E+1) and token_of_slot
 * (N*E), whose entries from offsets[E] on are set to -1. */
void REF(dispatch_build)(int n, int e, int capacity, const int32_t *mask, int32_t *slot,
                         int32_t *counts, int32_t *demand, int32_t *offsets,
                         int32_t *token_of_slot)
{
    /* Demand before dropping, and the kept count under the capacity. */
    for (int x = 0; x < e; x++) {
        int32_t selected = 0;
        for (int t = 0; t < n; t++)
            selected += mask[(size_t)t * e + x] != 0;
        demand[x] = selected;
        counts[x] = (capacity > 0 && selected > capacity) ? capacity : selected;
    }

    offsets[0] = 0;
    for (int x = 0; x < e; x++)
        offsets[x + 1] = offsets[x] + counts[x];

    /* Fill each expert's slots in token order. Tokens past the capacity are dropped. */
    for (int x = 0; x < e; x++) {
        int32_t used = 0;
        for (int t = 0; t < n; t++) {
            size_t i = (size_t)t * e + x;
            if (!mask[i] || used >= counts[x]) {
                slot[i] = -1;
                continue;
            }
            slot[i] = offsets[x] + used;
            token_of_slot[offsets[x] + used] = t;
            used++;
        }
    }

    for (size_t s = (size_t)offsets[e]; s < (size_t)n * e; s++)
        token_of_slot[s] = -1;
}

/* Writes xg (S,C): xg[s] = x[token_of_slot[s]]. */
void REF(gather_forward)(int s, int c, ref_real *xg, const ref_real *x,
                         const int32_t *token_of_slot)
{
    for (int i = 0; i < s; i++) {
        const ref_real *src = x + (size_t)token_of_slot[i] * c;
        ref_real *dst = xg + (size_t)i * c;
        for (int j = 0; j < c; j++)
            dst[j] = src[j];
    }
}

/* dx[token_of_slot[s]] += dxg[s]: the transpose of the gather. */
void REF(gather_backward)(int s, int c, ref_real *dx, const ref_real *dxg,
                          const int32_t *token_of_slot)
{
    for (int i = 0; i < s; i++) {
        ref_real *dst = dx + (size_t)token_of_slot[i] * c;
        const ref_real *src = dxg + (size_t)i * c;
        for (int j = 0; j < c; j++)
            dst[j] += src[j];
    }
}

/* Writes y (N,C) = sum over experts x ascending with slot[t,x] >= 0 of w[t,x] * yg[slot[t,x]],
 * accumulated in double. */
void REF(combine_forward)(int n, int e, int c, ref_real *y, const ref_real *yg,
                          const int32_t *slot, const ref_real *w)
{
    for (int t = 0; t < n; t++) {
        for (int j = 0; j < c; j++) {
            double acc = 0.0;
            for (int x = 0; x < e; x++) {
                int32_t sl = slot[(size_t)t * e + x];
                if (sl >= 0)
                    acc += (double)w[(size_t)t * e + x] * (double)yg[(size_t)sl * c + j];
            }
            y[(size_t)t * c + j] = (ref_real)acc;
        }
    }
}

/* Writes dyg[slot[t,x]] = w[t,x] * dy[t] for kept assignments, and
 * dw[t,x] = <dy[t], yg[slot[t,x]]> for kept assignments, 0 elsewhere. */
void REF(combine_backward)(int n, int e, int c, ref_real *dyg, ref_real *dw, const ref_real *dy,
                           const ref_real *yg, const int32_t *slot, const ref_real *w)
{
    for (int t = 0; t < n; t++) {
        const ref_real *dyt = dy + (size_t)t * c;
        for (int x = 0; x < e; x++) {
            size_t i = (size_t)t * e + x;
            int32_t sl = slot[i];
            if (sl < 0) {
                dw[i] = 0;
                continue;
            }

            const ref_real *ys = yg + (size_t)sl * c;
            ref_real *dys = dyg + (size_t)sl * c;
            double dot = 0.0;
            for (int j = 0; j < c; j++) {
                dys[j] = w[i] * dyt[j];
                dot += (double)dyt[j] * (double)ys[j];
            }
            dw[i] = (ref_real)dot;
        }
    }
}
