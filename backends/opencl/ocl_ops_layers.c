/*
 * OpenCL backend: transformer layer ops (embedding, layer norm, attention,
 * GELU, bias). Argument order follows the kernel signatures in kernels/layers.cl.
 */
#include "config.h"

#include "ocl.h"

dm_status ocl_encoder_forward(void *ctx, int b, int t, int c, dm_tensor out, dm_tensor tokens,
                              dm_tensor wte, dm_tensor wpe)
{
    ocl_args a = ocl_args_begin(ctx, OCL_K_encoder_fwd);

    ocl_arg_i(&a, t);
    ocl_arg_i(&a, c);
    ocl_arg_t(&a, out);
    ocl_arg_t(&a, tokens);
    ocl_arg_t(&a, wte);
    ocl_arg_t(&a, wpe);
    return ocl_run2(&a, "encoder_forward", (size_t)c, (size_t)b * t);
}

dm_status ocl_encoder_backward(void *ctx, int b, int t, int c, dm_tensor dwte, dm_tensor dwpe,
                               dm_tensor dout, dm_tensor tokens)
{
    ocl_args a = ocl_args_begin(ctx, OCL_K_encoder_bwd_wte);
    dm_status st;

    ocl_arg_i(&a, b * t);
    ocl_arg_i(&a, c);
    ocl_arg_t(&a, dwte);
    ocl_arg_t(&a, dout);
    ocl_arg_t(&a, tokens);
    if ((st = ocl_run(&a, "encoder_backward", (size_t)c, 0)) != DM_OK)
        return st;

    a = ocl_args_begin(ctx, OCL_K_encoder_bwd_wpe);
    ocl_arg_i(&a, b);
    ocl_arg_i(&a, t);
    ocl_arg_i(&a, c);
    ocl_arg_t(&a, dwpe);
    ocl_arg_t(&a, dout);
    return ocl_run2(&a, "encoder_backward", (size_t)c, (size_t)t);
}

dm_status ocl_layernorm_forward(void *ctx, int n, int c, dm_tensor out, dm_tensor mean,
                                dm_tensor rstd, dm_tensor inp, dm_tensor weight, dm_tensor bias)
{
    ocl_args a = ocl_args_begin(ctx, OCL_K_layernorm_fwd);

    ocl_arg_i(&a, n);
    ocl_arg_i(&a, c);
    ocl_arg_t(&a, out);
    ocl_arg_t(&a, mean);
    ocl_arg_t(&a, rstd);
    ocl_arg_t(&a, inp);
    ocl_arg_t(&a, weight);
    ocl_arg_t(&a, bias);
    return ocl_run(&a, "layernorm_forward", (size_t)n, 0);
}

dm_status ocl_layernorm_backward(void *ctx, int n, int c, dm_tensor dinp, dm_tensor dweight,
                                 dm_tensor dbias, dm_tensor dout, dm_tensor inp, dm_tensor weight,
                                 dm_tensor mean, dm_tensor rstd)
{
    ocl_args a = ocl_args_begin(ctx, OCL_K_layernorm_bwd_inp);
    dm_status st;

    ocl_arg_i(&a, n);
    ocl_arg_i(&a, c);
    ocl_arg_t(&a, dinp);
    ocl_arg_t(&a, dout);
    ocl_arg_t(&a, inp);
    ocl_arg_t(&a, weight);
    ocl_arg_t(&a, mean);
    ocl_arg_t(&a, rstd);
    if ((st = ocl_run(&a, "layernorm_backward", (size_t)n, 0)) != DM_OK)
        return st;

    a = ocl_args_begin(ctx, OCL_K_layernorm_bwd_params);
    ocl_arg_i(&a, n);
    ocl_arg_i(&a, c);
    ocl_arg_t(&a, dweight);
    ocl_arg_t(&a, dbias);
    ocl_arg_t(&a, dout);
    ocl_arg_t(&a, inp);
    ocl_arg_t(&a, mean);
    ocl_arg_t(&a, rstd);
    return ocl_run(&a, "layernorm_backward", (size_t)c, 0);
}

static dm_status check_heads(ocl_ctx *c, const char *op, int ch, int nh)
{
    if (nh <= 0 || ch % nh != 0)
        return ocl_fail(c, DM_ERR_INVALID, "opencl %s: d_model %d is not a multiple of %d heads", op, ch, nh);
    return DM_OK;
}

/* The (B,NH,T,T) probabilities live in scratch; the op contract lets a backend choose. */
dm_status ocl_attention_forward(void *ctx, int b, int t, int c, int nh, dm_tensor out,
                                dm_tensor lse, dm_tensor qkv)
{
    ocl_ctx *oc = ctx;
    cl_mem probs;
    dm_status st;

    if ((st = check_heads(oc, "attention_forward", c, nh)) != DM_OK)
        return st;
    if ((st = ocl_scratch(oc, "attention_forward", (size_t)b * nh * t * t * sizeof(float), &probs)) != DM_OK)
        return st;

    ocl_args a = ocl_args_begin(oc, OCL_K_attn_probs);
    ocl_arg_i(&a, b);
    ocl_arg_i(&a, t);
    ocl_arg_i(&a, c);
    ocl_arg_i(&a, nh);
    ocl_arg_t(&a, lse);
    ocl_arg_t(&a, qkv);
    ocl_arg_mem(&a, probs);
    if ((st = ocl_run(&a, "attention_forward", (size_t)b * nh * t, 0)) != DM_OK)
        return st;

    a = ocl_args_begin(oc, OCL_K_attn_out);
    ocl_arg_i(&a, t);
    ocl_arg_i(&a, c);
    ocl_arg_i(&a, nh);
    ocl_arg_t(&a, out);
    ocl_arg_t(&a, qkv);
    ocl_arg_mem(&a, probs);
    return ocl_run2(&a, "attention_forward", (size_t)c, (size_t)b * t);
}

dm_status ocl_attention_backward(void *ctx, int b, int t, int c, int nh, dm_tensor dqkv,
                                 dm_tensor dout, dm_tensor qkv, dm_tensor out, dm_tensor lse)
{
    ocl_ctx *oc = ctx;
    size_t bytes = (size_t)b * nh * t * t * sizeof(float);
    cl_mem probs, dscores;
    dm_status st;

    if ((st = check_heads(oc, "attention_backward", c, nh)) != DM_OK)
        return st;
    if ((st = ocl_scratch(oc, "attention_backward", bytes, &probs)) != DM_OK ||
        (st = ocl_scratch2(oc, "attention_backward", bytes, &dscores)) != DM_OK)
        return st;

    ocl_args a = ocl_args_begin(oc, OCL_K_attn_bwd_scores);
    ocl_arg_i(&a, b);
    ocl_arg_i(&a, t);
    ocl_arg_i(&a, c);
    ocl_arg_i(&a, nh);
    ocl_arg_t(&a, dout);
    ocl_arg_t(&a, qkv);
    ocl_arg_t(&a, out);
    ocl_arg_t(&a, lse);
    ocl_arg_mem(&a, probs);
    ocl_arg_mem(&a, dscores);
    if ((st = ocl_run(&a, "attention_backward", (size_t)b * nh * t, 0)) != DM_OK)
        return st;

    a = ocl_args_begin(oc, OCL_K_attn_bwd_dq);
    ocl_arg_i(&a, t);
    ocl_arg_i(&a, c);
    ocl_arg_i(&a, nh);
    ocl_arg_t(&a, dqkv);
    ocl_arg_t(&a, qkv);
    ocl_arg_mem(&a, dscores);
    if ((st = ocl_run2(&a, "attention_backward", (size_t)c, (size_t)b * t)) != DM_OK)
        return st;

    a = ocl_args_begin(oc, OCL_K_attn_bwd_dkv);
    ocl_arg_i(&a, t);
    ocl_arg_i(&a, c);
    ocl_arg_i(&a, nh);
    ocl_arg_t(&a, dqkv);
    ocl_arg_t(&a, dout);
    ocl_arg_t(&a, qkv);
    ocl_arg_mem(&a, probs);
    ocl_arg_mem(&a, dscores);
    return ocl_run2(&a, "attention_backward", (size_t)c, (size_t)b * t);
}

dm_status ocl_gelu_forward(void *ctx, size_t n, dm_tensor out, dm_tensor inp)
{
    ocl_args a = ocl_args_begin(ctx, OCL_K_gelu_fwd);

    ocl_arg_n(&a, n);
    ocl_arg_t(&a, out);
    ocl_arg_t(&a, inp);
    return ocl_run(&a, "gelu_forward", n, 0);
}

dm_status ocl_gelu_backward(void *ctx, size_t n, dm_tensor dinp, dm_tensor inp, dm_tensor dout)
{
    ocl_args a = ocl_args_begin(ctx, OCL_K_gelu_bwd);

    ocl_arg_n(&a, n);
    ocl_arg_t(&a, dinp);
    ocl_arg_t(&a, inp);
    ocl_arg_t(&a, dout);
    return ocl_run(&a, "gelu_backward", n, 0);
}

dm_status ocl_bias_forward(void *ctx, int m, int n, dm_tensor out, dm_tensor bias)
{
    ocl_args a = ocl_args_begin(ctx, OCL_K_bias_fwd);

    ocl_arg_i(&a, m);
    ocl_arg_i(&a, n);
    ocl_arg_t(&a, out);
    ocl_arg_t(&a, bias);
    return ocl_run2(&a, "bias_forward", (size_t)n, (size_t)m);
}

dm_status ocl_bias_backward(void *ctx, int m, int n, dm_tensor dbias, dm_tensor dout)
{
    ocl_args a = ocl_args_begin(ctx, OCL_K_bias_bwd);

    ocl_arg_i(&a, m);
    ocl_arg_i(&a, n);
    ocl_arg_t(&a, dbias);
    ocl_arg_t(&a, dout);
    return ocl_run(&a, "bias_backward", (size_t)n, 0);
}

dm_status ocl_bias_gelu_forward(void *ctx, int m, int n, dm_tensor out, dm_tensor pre, dm_tensor bias)
{
    ocl_args a = ocl_args_begin(ctx, OCL_K_bias_gelu_fwd);

    ocl_arg_i(&a, m);
    ocl_arg_i(&a, n);
    ocl_arg_t(&a, out);
    ocl_arg_t(&a, pre);
    ocl_arg_t(&a, bias);
    return ocl_run2(&a, "bias_gelu_forward", (size_t)n, (size_t)m);
}
