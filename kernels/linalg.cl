/* Vector kernels: axpy, scale and the deterministic sum of squares. */

kernel void dm_axpy(ulong n, float a, global const float *x, uint xo, global float *y, uint yo)
{
    size_t i = get_global_id(0);
    if (i >= n)
        return;
    y[yo + i] += a * x[xo + i];
}

kernel void dm_scale(ulong n, float a, global float *x, uint xo)
{
    size_t i = get_global_id(0);
    if (i >= n)
        return;
    x[xo + i] *= a;
}

/* Pass 1 of sum_squares: a fixed grid of work-groups, each work-item summing a fixed
 * strided subset, then a tree within the group. The grid never depends on timing, so
 * the result is the same on every run. partial (num_groups) in acc_t. */
kernel void dm_sumsq_partial(ulong n, global const float *x, uint xo, global acc_t *partial,
                             local acc_t *tmp)
{
    size_t lid = get_local_id(0);
    size_t lsize = get_local_size(0);
    size_t stride = get_global_size(0);
    acc_t sum = 0;

    for (size_t i = get_global_id(0); i < n; i += stride) {
        acc_t v = (acc_t)x[xo + i];
        sum += v * v;
    }
    tmp[lid] = sum;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (size_t width = lsize / 2; width > 0; width /= 2) {
        if (lid < width)
            tmp[lid] += tmp[lid + width];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0)
        partial[get_group_id(0)] = tmp[0];
}

/* Pass 2: one work-item adds the partials in group order. */
kernel void dm_sumsq_final(int groups, global const acc_t *partial, global float *out, uint oo)
{
    if (get_global_id(0) != 0)
        return;
    acc_t sum = 0;
    for (int g = 0; g < groups; g++)
        sum += partial[g];
    out[oo] = (float)sum;
}
