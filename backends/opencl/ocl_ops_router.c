/*
 * OpenCL backend: router ops (Philox words, Gamma sampling and gradient,
 * DirMoE routing and regularisers, top-k routing). Argument order follows
 * kernels/router.cl and kernels/reg.cl.
 */
#include "config.h"

#include "dirmoe/philox.h"
#include "ocl.h"

static void arg_key(ocl_args *a, uint64_t seed)
{
    ocl_arg_u(a, (uint32_t)seed);
    ocl_arg_u(a, (uint32_t)(seed >> 32));
}

dm_status ocl_philox(void *ctx, size_t n, uint64_t seed, uint32_t index_base, uint32_t attempt,
                     uint32_t layer, uint32_t purpose, uint32_t step, dm_tensor out)
{
    ocl_args a = ocl_args_begin(ctx, OCL_K_philox_words);

    ocl_arg_n(&a, n);
    arg_key(&a, seed);
    ocl_arg_u(&a, index_base);
    ocl_arg_u(&a, attempt);
    ocl_arg_u(&a, layer);
    ocl_arg_u(&a, purpose);
    ocl_arg_u(&a, step);
    ocl_arg_t(&a, out);
    return ocl_run(&a, "philox", n, 0);
}

dm_status ocl_gamma_sample(void *ctx, size_t n, const dm_rng_site *rng, dm_tensor log_g,
                           dm_tensor alpha, dm_tensor fallbacks)
{
    ocl_args a = ocl_args_begin(ctx, OCL_K_gamma_sample);

    ocl_arg_n(&a, n);
    arg_key(&a, rng->seed);
    ocl_arg_u(&a, rng->token_base);
    ocl_arg_u(&a, rng->layer);
    ocl_arg_u(&a, rng->step);
    ocl_arg_t(&a, log_g);
    ocl_arg_t(&a, alpha);
    ocl_arg_t(&a, fallbacks);
    return ocl_run(&a, "gamma_sample", n, 0);
}

dm_status ocl_gamma_grad(void *ctx, size_t n, dm_tensor out, dm_tensor alpha, dm_tensor log_g)
{
    ocl_args a = ocl_args_begin(ctx, OCL_K_gamma_grad);

    ocl_arg_n(&a, n);
    ocl_arg_t(&a, out);
    ocl_arg_t(&a, alpha);
    ocl_arg_t(&a, log_g);
    return ocl_run(&a, "gamma_grad", n, 0);
}

static dm_status check_dirmoe(ocl_ctx *c, const char *op, const dm_dirmoe_params *p)
{
    if (p->n_tokens < 0 || p->n_expert < 1 || p->k_max < 1 || p->k_max > p->n_expert)
        return ocl_fail(c, DM_ERR_INVALID, "opencl %s: invalid sizes N=%d E=%d k_max=%d", op,
                        p->n_tokens, p->n_expert, p->k_max);
    if (!(p->tau > 0.0f) || !(p->alpha_min > 0.0f) || !(p->alpha_max > p->alpha_min))
        return ocl_fail(c, DM_ERR_INVALID, "opencl %s: invalid tau=%g alpha_min=%g alpha_max=%g", op,
                        p->tau, p->alpha_min, p->alpha_max);
    return DM_OK;
}

dm_status ocl_dirmoe_route_forward(void *ctx, const dm_dirmoe_params *p, dm_tensor logits,
                                   dm_tensor u, dm_tensor log_g, dm_tensor zt, dm_tensor alpha,
                                   dm_tensor mask, dm_tensor w, dm_tensor fallbacks)
{
    ocl_ctx *c = ctx;
    size_t acc = c->has_fp64 ? sizeof(cl_double) : sizeof(cl_float);
    cl_mem score;
    dm_status st;

    if ((st = check_dirmoe(c, "dirmoe_route_forward", p)) != DM_OK)
        return st;
    if ((st = ocl_scratch(c, "dirmoe_route_forward", (size_t)p->n_tokens * p->n_expert * acc, &score)) != DM_OK)
        return st;

    ocl_args a = ocl_args_begin(c, OCL_K_dirmoe_fwd);
    ocl_arg_i(&a, p->n_tokens);
    ocl_arg_i(&a, p->n_expert);
    ocl_arg_i(&a, p->k_max);
    ocl_arg_i(&a, p->selection == DM_SELECTION_SOFT);
    ocl_arg_i(&a, p->fixed_noise != 0);
    ocl_arg_f(&a, p->tau);
    ocl_arg_f(&a, p->alpha_min);
    ocl_arg_f(&a, p->alpha_max);
    arg_key(&a, p->rng.seed);
    ocl_arg_u(&a, p->rng.layer);
    ocl_arg_u(&a, p->rng.step);
    ocl_arg_u(&a, p->rng.token_base);
    ocl_arg_t(&a, logits);
    ocl_arg_t(&a, u);
    ocl_arg_t(&a, log_g);
    ocl_arg_t(&a, zt);
    ocl_arg_t(&a, alpha);
    ocl_arg_t(&a, mask);
    ocl_arg_t(&a, w);
    ocl_arg_t(&a, fallbacks);
    ocl_arg_mem(&a, score);
    return ocl_run(&a, "dirmoe_route_forward", (size_t)p->n_tokens, 0);
}

dm_status ocl_dirmoe_route_backward(void *ctx, const dm_dirmoe_params *p, dm_tensor dlogits,
                                    dm_tensor dw, dm_tensor logits, dm_tensor zt, dm_tensor alpha,
                                    dm_tensor log_g, dm_tensor mask, dm_tensor w)
{
    ocl_ctx *c = ctx;
    dm_status st;

    if ((st = check_dirmoe(c, "dirmoe_route_backward", p)) != DM_OK)
        return st;

    ocl_args a = ocl_args_begin(c, OCL_K_dirmoe_bwd);
    ocl_arg_i(&a, p->n_tokens);
    ocl_arg_i(&a, p->n_expert);
    ocl_arg_i(&a, p->selection == DM_SELECTION_SOFT);
    ocl_arg_f(&a, p->tau);
    ocl_arg_f(&a, p->alpha_min);
    ocl_arg_f(&a, p->alpha_max);
    ocl_arg_t(&a, dlogits);
    ocl_arg_t(&a, dw);
    ocl_arg_t(&a, logits);
    ocl_arg_t(&a, zt);
    ocl_arg_t(&a, alpha);
    ocl_arg_t(&a, log_g);
    ocl_arg_t(&a, mask);
    ocl_arg_t(&a, w);
    return ocl_run(&a, "dirmoe_route_backward", (size_t)p->n_tokens, 0);
}

dm_status ocl_dirmoe_route_eval(void *ctx, const dm_dirmoe_params *p, dm_tensor logits,
                                dm_tensor mask, dm_tensor w)
{
    ocl_ctx *c = ctx;
    dm_status st;

    if ((st = check_dirmoe(c, "dirmoe_route_eval", p)) != DM_OK)
        return st;

    ocl_args a = ocl_args_begin(c, OCL_K_dirmoe_eval);
    ocl_arg_i(&a, p->n_tokens);
    ocl_arg_i(&a, p->n_expert);
    ocl_arg_i(&a, p->k_max);
    ocl_arg_f(&a, p->alpha_min);
    ocl_arg_f(&a, p->alpha_max);
    ocl_arg_t(&a, logits);
    ocl_arg_t(&a, mask);
    ocl_arg_t(&a, w);
    return ocl_run(&a, "dirmoe_route_eval", (size_t)p->n_tokens, 0);
}

/* Steps 1 and 2 of the regularisers (see kernels/reg.cl); leaves the partial sums and the
 * means in *part and writes stats when stats.buf is set. */
static dm_status reg_reduce(ocl_ctx *c, const char *op, const dm_dirmoe_reg_params *p, dm_tensor logits,
                            dm_tensor stats, cl_mem *part)
{
    size_t acc = c->has_fp64 ? sizeof(cl_double) : sizeof(cl_float);
    size_t n = (size_t)p->n_tokens, e = (size_t)p->n_expert;
    dm_status st;

    if ((st = ocl_scratch(c, op, (3 * n + 2 * e + 4) * acc, part)) != DM_OK)
        return st;

    ocl_args a = ocl_args_begin(c, OCL_K_reg_tokens);
    ocl_arg_i(&a, p->n_tokens);
    ocl_arg_i(&a, p->n_expert);
    ocl_arg_f(&a, p->alpha_min);
    ocl_arg_f(&a, p->alpha_max);
    ocl_arg_d(&a, p->log_p0);
    ocl_arg_d(&a, p->log_1mp0);
    ocl_arg_d(&a, p->alpha0);
    ocl_arg_t(&a, logits);
    ocl_arg_mem(&a, *part);
    if ((st = ocl_run(&a, op, n, 0)) != DM_OK)
        return st;

    if (p->kl_b_mode != DM_KL_B_TOKEN) {
        a = ocl_args_begin(c, OCL_K_reg_experts);
        ocl_arg_i(&a, p->n_tokens);
        ocl_arg_i(&a, p->n_expert);
        ocl_arg_t(&a, logits);
        ocl_arg_mem(&a, *part);
        if ((st = ocl_run(&a, op, e, 0)) != DM_OK)
            return st;
    }

    a = ocl_args_begin(c, OCL_K_reg_final);
    ocl_arg_i(&a, p->n_tokens);
    ocl_arg_i(&a, p->n_expert);
    ocl_arg_i(&a, p->kl_b_mode == DM_KL_B_TOKEN);
    ocl_arg_d(&a, p->log_p0);
    ocl_arg_d(&a, p->log_1mp0);
    ocl_arg_d(&a, p->k_target);
    ocl_arg_d(&a, p->coef_kl_b);
    ocl_arg_d(&a, p->coef_kl_d);
    ocl_arg_d(&a, p->coef_sq);
    ocl_arg_d(&a, p->coef_lin);
    ocl_arg_mem(&a, *part);
    ocl_arg_i(&a, stats.buf != NULL);
    ocl_arg_t(&a, stats);
    return ocl_run(&a, op, 1, 0);
}

static dm_status check_reg(ocl_ctx *c, const char *op, const dm_dirmoe_reg_params *p)
{
    if (p->n_tokens < 0 || p->n_expert < 1)
        return ocl_fail(c, DM_ERR_INVALID, "opencl %s: invalid sizes N=%d E=%d", op, p->n_tokens,
                        p->n_expert);
    return DM_OK;
}

dm_status ocl_dirmoe_reg_forward(void *ctx, const dm_dirmoe_reg_params *p, dm_tensor logits,
                                 dm_tensor stats)
{
    ocl_ctx *c = ctx;
    cl_mem part;
    dm_status st;

    if ((st = check_reg(c, "dirmoe_reg_forward", p)) != DM_OK)
        return st;
    if (p->n_tokens == 0)
        return ocl_fill(c, stats, 0u, DM_REG_NSTATS);
    if (!stats.buf)
        return ocl_fail(c, DM_ERR_INVALID, "opencl dirmoe_reg_forward: stats tensor has no buffer");
    return reg_reduce(c, "dirmoe_reg_forward", p, logits, stats, &part);
}

dm_status ocl_dirmoe_reg_backward(void *ctx, const dm_dirmoe_reg_params *p, dm_tensor logits,
                                  dm_tensor dlogits)
{
    ocl_ctx *c = ctx;
    dm_tensor no_stats = {NULL, 0};
    cl_mem part;
    dm_status st;

    if ((st = check_reg(c, "dirmoe_reg_backward", p)) != DM_OK)
        return st;
    if (p->n_tokens == 0)
        return DM_OK;
    if ((st = reg_reduce(c, "dirmoe_reg_backward", p, logits, no_stats, &part)) != DM_OK)
        return st;

    ocl_args a = ocl_args_begin(c, OCL_K_reg_bwd);
    ocl_arg_i(&a, p->n_tokens);
    ocl_arg_i(&a, p->n_expert);
    ocl_arg_i(&a, p->kl_b_mode == DM_KL_B_TOKEN);
    ocl_arg_f(&a, p->alpha_min);
    ocl_arg_f(&a, p->alpha_max);
    ocl_arg_d(&a, p->log_p0);
    ocl_arg_d(&a, p->log_1mp0);
    ocl_arg_d(&a, p->alpha0);
    ocl_arg_d(&a, p->k_target);
    ocl_arg_d(&a, p->coef_kl_b);
    ocl_arg_d(&a, p->coef_kl_d);
    ocl_arg_d(&a, p->coef_sq);
    ocl_arg_d(&a, p->coef_lin);
    ocl_arg_t(&a, logits);
    ocl_arg_mem(&a, part);
    ocl_arg_t(&a, dlogits);
    return ocl_run(&a, "dirmoe_reg_backward", (size_t)p->n_tokens, 0);
}

dm_status ocl_topk_route_forward(void *ctx, const dm_topk_params *p, dm_tensor logits,
                                 dm_tensor probs, dm_tensor mask, dm_tensor w)
{
    ocl_ctx *c = ctx;

    if (p->k < 1 || p->k > p->n_expert)
        return ocl_fail(c, DM_ERR_INVALID, "opencl topk_route_forward: k=%d outside [1, %d]", p->k,
                        p->n_expert);

    ocl_args a = ocl_args_begin(c, OCL_K_topk_fwd);
    ocl_arg_i(&a, p->n_tokens);
    ocl_arg_i(&a, p->n_expert);
    ocl_arg_i(&a, p->k);
    ocl_arg_i(&a, p->renormalize);
    ocl_arg_t(&a, logits);
    ocl_arg_t(&a, probs);
    ocl_arg_t(&a, mask);
    ocl_arg_t(&a, w);
    return ocl_run(&a, "topk_route_forward", (size_t)(p->n_tokens > 0 ? p->n_tokens : 0), 0);
}

dm_status ocl_topk_route_backward(void *ctx, const dm_topk_params *p, dm_tensor dlogits,
                                  dm_tensor dw, dm_tensor probs, dm_tensor mask, dm_tensor w)
{
    ocl_args a = ocl_args_begin(ctx, OCL_K_topk_bwd);

    ocl_arg_i(&a, p->n_tokens);
    ocl_arg_i(&a, p->n_expert);
    ocl_arg_i(&a, p->renormalize);
    ocl_arg_t(&a, dlogits);
    ocl_arg_t(&a, dw);
    ocl_arg_t(&a, probs);
    ocl_arg_t(&a, mask);
    ocl_arg_t(&a, w);
    return ocl_run(&a, "topk_route_backward", (size_t)(p->n_tokens > 0 ? p->n_tokens : 0), 0);
}
