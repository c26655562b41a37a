/*
 * OpenCL backend: dispatch (grouping assignments by expert), gather and combine.
 */
#include "config.h"

#include "ocl.h"

dm_status ocl_dispatch_build(void *ctx, int n, int e, int capacity, dm_tensor mask,
                             dm_tensor slot, dm_tensor counts, dm_tensor demand,
                             dm_tensor offsets, dm_tensor token_of_slot)
{
    ocl_args a = ocl_args_begin(ctx, OCL_K_dispatch_count);
    dm_status st;

    ocl_arg_i(&a, n);
    ocl_arg_i(&a, e);
    ocl_arg_i(&a, capacity);
    ocl_arg_t(&a, mask);
    ocl_arg_t(&a, counts);
    ocl_arg_t(&a, demand);
    if ((st = ocl_run(&a, "dispatch_build", (size_t)e, 0)) != DM_OK)
        return st;

    a = ocl_args_begin(ctx, OCL_K_dispatch_fill);
    ocl_arg_i(&a, n);
    ocl_arg_i(&a, e);
    ocl_arg_i(&a, capacity);
    ocl_arg_t(&a, mask);
    ocl_arg_t(&a, slot);
    ocl_arg_t(&a, counts);
    ocl_arg_t(&a, offsets);
    ocl_arg_t(&a, token_of_slot);
    if ((st = ocl_run(&a, "dispatch_build", (size_t)e, 0)) != DM_OK)
        return st;

    a = ocl_args_begin(ctx, OCL_K_dispatch_tail);
    ocl_arg_n(&a, (size_t)n * e);
    ocl_arg_i(&a, e);
    ocl_arg_t(&a, offsets);
    ocl_arg_t(&a, token_of_slot);
    return ocl_run(&a, "dispatch_build", (size_t)n * e, 0);
}

dm_status ocl_gather_forward(void *ctx, int s, int c, dm_tensor xg, dm_tensor x, dm_tensor token_of_slot)
{
    ocl_args a = ocl_args_begin(ctx, OCL_K_gather_fwd);

    ocl_arg_i(&a, c);
    ocl_arg_t(&a, xg);
    ocl_arg_t(&a, x);
    ocl_arg_t(&a, token_of_slot);
    return ocl_run2(&a, "gather_forward", (size_t)c, (size_t)s);
}

dm_status ocl_gather_backward(void *ctx, int s, int c, dm_tensor dx, dm_tensor dxg,
                              dm_tensor token_of_slot)
{
    ocl_args a = ocl_args_begin(ctx, OCL_K_gather_bwd);

    ocl_arg_i(&a, s);
    ocl_arg_i(&a, c);
    ocl_arg_t(&a, dx);
    ocl_arg_t(&a, dxg);
    ocl_arg_t(&a, token_of_slot);
    return ocl_run(&a, "gather_backward", s > 0 ? (size_t)c : 0, 0);
}

dm_status ocl_combine_forward(void *ctx, int n, int e, int c, dm_tensor y, dm_tensor yg,
                              dm_tensor slot, dm_tensor w)
{
    ocl_args a = ocl_args_begin(ctx, OCL_K_combine_fwd);

    ocl_arg_i(&a, e);
    ocl_arg_i(&a, c);
    ocl_arg_t(&a, y);
    ocl_arg_t(&a, yg);
    ocl_arg_t(&a, slot);
    ocl_arg_t(&a, w);
    return ocl_run2(&a, "combine_forward", (size_t)c, (size_t)n);
}

dm_status ocl_combine_backward(void *ctx, int n, int e, int c, dm_tensor dyg, dm_tensor dw,
                               dm_tensor dy, dm_tensor yg, dm_tensor slot, dm_tensor w)
{
    ocl_args a = ocl_args_begin(ctx, OCL_K_combine_bwd_dyg);
    dm_status st;

    ocl_arg_i(&a, e);
    ocl_arg_i(&a, c);
    ocl_arg_t(&a, dyg);
    ocl_arg_t(&a, dy);
    ocl_arg_t(&a, slot);
    ocl_arg_t(&a, w);
    if ((st = ocl_run2(&a, "combine_backward", (size_t)c, (size_t)n)) != DM_OK)
        return st;

    a = ocl_args_begin(ctx, OCL_K_combine_bwd_dw);
    ocl_arg_i(&a, e);
    ocl_arg_i(&a, c);
    ocl_arg_t(&a, dw);
    ocl_arg_t(&a, dy);
    ocl_arg_t(&a, yg);
    ocl_arg_t(&a, slot);
    return ocl_run2(&a, "combine_backward", (size_t)e, (size_t)n);
}
