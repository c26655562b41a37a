/* Dispatch and combine: grouping (token, expert) assignments into expert-major slots. */

/* One work-item per expert e: demand (selected) and counts (kept under capacity). */
kernel void dm_dispatch_count(int n, int e_len, int capacity, global const int *mask, uint mo,
                              global int *counts, uint co, global int *demand, uint dmo)
{
    int e = get_global_id(0);
    if (e >= e_len)
        return;
    int selected = 0;
    for (int t = 0; t < n; t++)
        selected += mask[mo + (size_t)t * e_len + e] != 0;
    demand[dmo + e] = selected;
    counts[co + e] = (capacity > 0 && selected > capacity) ? capacity : selected;
}

/* One work-item per expert e: its offset is the sum of the counts before it; then the
 * expert's kept tokens take consecutive slots in token order and the rest get -1. */
kernel void dm_dispatch_fill(int n, int e_len, int capacity, global const int *mask, uint mo,
                             global int *slot, uint so, global const int *counts, uint co,
                             global int *offsets, uint oo, global int *token_of_slot, uint tso)
{
    int e = get_global_id(0);
    if (e >= e_len)
        return;
    int base = 0;
    for (int j = 0; j < e; j++)
        base += counts[co + j];
    offsets[oo + e] = base;
    if (e == e_len - 1)
        offsets[oo + e_len] = base + counts[co + e];

    int kept = 0;
    for (int t = 0; t < n; t++) {
        size_t at = (size_t)t * e_len + e;
        if (mask[mo + at] != 0 && (capacity <= 0 || kept < capacity)) {
            slot[so + at] = base + kept;
            token_of_slot[tso + base + kept] = t;
            kept++;
        } else {
            slot[so + at] = -1;
        }
    }
}

/* token_of_slot[s] = -1 for the unused slots s >= offsets[E] of the N*E entries. */
kernel void dm_dispatch_tail(ulong total, int e_len, global const int *offsets, uint oo,
                             global int *token_of_slot, uint tso)
{
    size_t s = get_global_id(0);
    if (s >= total || s < (size_t)offsets[oo + e_len])
        return;
    token_of_slot[tso + s] = -1;
}

/* xg[s] = x[token_of_slot[s]]; 2-D grid (C, S). */
kernel void dm_gather_fwd(int c, global float *xg, uint xgo, global const float *x, uint xo,
                          global const int *token_of_slot, uint tso)
{
    int j = get_global_id(0);
    int s = get_global_id(1);
    if (j >= c)
        return;
    int t = token_of_slot[tso + s];
    xg[xgo + (size_t)s * c + j] = x[xo + (size_t)t * c + j];
}

/* dx[token_of_slot[s]] += dxg[s]: one work-item per channel walks the slots in order,
 * so a token routed to several experts accumulates in a fixed order. */
kernel void dm_gather_bwd(int s_len, int c, global float *dx, uint dxo, global const float *dxg,
                          uint dgo, global const int *token_of_slot, uint tso)
{
    int j = get_global_id(0);
    if (j >= c)
        return;
    for (int s = 0; s < s_len; s++) {
        int t = token_of_slot[tso + s];
        dx[dxo + (size_t)t * c + j] += dxg[dgo + (size_t)s * c + j];
    }
}

/* y[t] = sum over e ascending of w[t,e] yg[slot[t,e]]; 2-D grid (C, N). */
kernel void dm_combine_fwd(int e_len, int c, global float *y, uint yo, global const float *yg,
                           uint ygo, global const int *slot, uint so, global const float *w, uint wo)
{
    int j = get_global_id(0);
    int t = get_global_id(1);
    if (j >= c)
        return;
    acc_t acc = 0.0;
    for (int e = 0; e < e_len; e++) {
        int s = slot[so + (size_t)t * e_len + e];
        if (s >= 0)
            acc += w[wo + (size_t)t * e_len + e] * yg[ygo + (size_t)s * c + j];
    }
    y[yo + (size_t)t * c + j] = acc;
}

/* dyg[slot[t,e]] = w[t,e] dy[t] for kept slots; 2-D grid (C, N). */
kernel void dm_combine_bwd_dyg(int e_len, int c, global float *dyg, uint dgo, global const float *dy,
                               uint dyo, global const int *slot, uint so, global const float *w, uint wo)
{
    int j = get_global_id(0);
    int t = get_global_id(1);
    if (j >= c)
        return;
    float g = dy[dyo + (size_t)t * c + j];
    for (int e = 0; e < e_len; e++) {
        int s = slot[so + (size_t)t * e_len + e];
        if (s >= 0)
            dyg[dgo + (size_t)s * c + j] = w[wo + (size_t)t * e_len + e] * g;
    }
}

/* dw[t,e] = <dy[t], yg[slot[t,e]]> for kept assignments, 0 elsewhere; 2-D grid (E, N). */
kernel void dm_combine_bwd_dw(int e_len, int c, global float *dw, uint dwo, global const float *dy,
                              uint dyo, global const float *yg, uint ygo, global const int *slot, uint so)
{
    int e = get_global_id(0);
    int t = get_global_id(1);
    if (e >= e_len)
        return;
    size_t at = (size_t)t * e_len + e;
    int s = slot[so + at];
    acc_t dot = 0.0;
    if (s >= 0) {
        for (int j = 0; j < c; j++)
            dot += dy[dyo + (size_t)t * c + j] * yg[ygo + (size_t)s * c + j];
    }
    dw[dwo + at] = dot;
}
