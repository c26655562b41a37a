/*
 * OpenCL backend: loss ops (load balancing, z-loss, softmax cross-entropy)
 * and AdamW. Argument order follows kernels/loss.cl.
 */
#include "config.h"

#include <math.h>

#include "ocl.h"

dm_status ocl_balance_forward(void *ctx, const dm_balance_params *p, dm_tensor logits,
                              dm_tensor probs, dm_tensor demand, dm_tensor stats)
{
    ocl_ctx *c = ctx;
    size_t acc = c->has_fp64 ? sizeof(cl_double) : sizeof(cl_float);
    cl_mem part;
    dm_status st;

    if (p->n_tokens < 0 || p->n_expert < 1 || p->k < 1)
        return ocl_fail(c, DM_ERR_INVALID, "opencl balance_forward: invalid sizes N=%d E=%d k=%d",
                        p->n_tokens, p->n_expert, p->k);
    if ((st = ocl_scratch(c, "balance_forward", ((size_t)p->n_expert + p->n_tokens) * acc, &part)) != DM_OK)
        return st;

    ocl_args a = ocl_args_begin(c, OCL_K_balance_parts);
    ocl_arg_i(&a, p->n_tokens);
    ocl_arg_i(&a, p->n_expert);
    ocl_arg_i(&a, p->logits_stride);
    ocl_arg_t(&a, logits);
    ocl_arg_t(&a, probs);
    ocl_arg_mem(&a, part);
    if ((st = ocl_run(&a, "balance_forward", (size_t)p->n_expert + p->n_tokens, 0)) != DM_OK)
        return st;

    a = ocl_args_begin(c, OCL_K_balance_final);
    ocl_arg_i(&a, p->n_tokens);
    ocl_arg_i(&a, p->n_expert);
    ocl_arg_i(&a, p->k);
    ocl_arg_mem(&a, part);
    ocl_arg_t(&a, demand);
    ocl_arg_t(&a, stats);
    return ocl_run(&a, "balance_forward", 1, 0);
}

dm_status ocl_balance_backward(void *ctx, const dm_balance_params *p, dm_tensor logits,
                               dm_tensor probs, dm_tensor demand, dm_tensor dlogits)
{
    ocl_args a = ocl_args_begin(ctx, OCL_K_balance_bwd);

    ocl_arg_i(&a, p->n_tokens);
    ocl_arg_i(&a, p->n_expert);
    ocl_arg_i(&a, p->k);
    ocl_arg_i(&a, p->logits_stride);
    ocl_arg_d(&a, p->coef_balance);
    ocl_arg_d(&a, p->coef_z);
    ocl_arg_t(&a, logits);
    ocl_arg_t(&a, probs);
    ocl_arg_t(&a, demand);
    ocl_arg_t(&a, dlogits);
    return ocl_run(&a, "balance_backward", (size_t)(p->n_tokens > 0 ? p->n_tokens : 0), 0);
}

dm_status ocl_xent_forward(void *ctx, int n, int v, dm_tensor losses, dm_tensor probs,
                           dm_tensor logits, dm_tensor targets)
{
    ocl_args a = ocl_args_begin(ctx, OCL_K_xent_fwd);

    /* Targets lie in [0, V): the op contract makes that the caller's guarantee. */
    ocl_arg_i(&a, n);
    ocl_arg_i(&a, v);
    ocl_arg_t(&a, losses);
    ocl_arg_t(&a, probs);
    ocl_arg_t(&a, logits);
    ocl_arg_t(&a, targets);
    return ocl_run(&a, "xent_forward", (size_t)n, 0);
}

dm_status ocl_xent_backward(void *ctx, int n, int v, float scale, dm_tensor dlogits,
                            dm_tensor probs, dm_tensor targets)
{
    ocl_args a = ocl_args_begin(ctx, OCL_K_xent_bwd);

    ocl_arg_i(&a, v);
    ocl_arg_f(&a, scale);
    ocl_arg_t(&a, dlogits);
    ocl_arg_t(&a, probs);
    ocl_arg_t(&a, targets);
    return ocl_run2(&a, "xent_backward", (size_t)v, (size_t)n);
}

dm_status ocl_adamw(void *ctx, size_t n, const dm_adamw_params *p, dm_tensor params,
                    dm_tensor grads, dm_tensor m, dm_tensor v)
{
    ocl_ctx *c = ctx;

    if (p->t < 1)
        return ocl_fail(c, DM_ERR_INVALID, "opencl adamw: step t=%d must be at least 1", p->t);

    ocl_args a = ocl_args_begin(c, OCL_K_adamw);
    ocl_arg_n(&a, n);
    ocl_arg_f(&a, p->lr);
    ocl_arg_f(&a, p->beta1);
    ocl_arg_f(&a, p->beta2);
    ocl_arg_f(&a, p->eps);
    ocl_arg_f(&a, p->weight_decay);
    /* Bias corrections in double on the host, as the reference computes them. */
    ocl_arg_d(&a, 1.0 - pow((double)p->beta1, p->t));
    ocl_arg_d(&a, 1.0 - pow((double)p->beta2, p->t));
    ocl_arg_t(&a, params);
    ocl_arg_t(&a, grads);
    ocl_arg_t(&a, m);
    ocl_arg_t(&a, v);
    return ocl_run(&a, "adamw", n, 0);
}
