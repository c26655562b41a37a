/*
 * Backward pass of the model, the mirror of model_forward.c. m->dres carries
 * dL/d(residual stream) from the top down; every parameter gradient is
 * accumulated into the gradient buffer, which the caller zeroes first.
 *
 * Linear layer y (N,out) = x (N,in) W (in,out) + b has
 *   dx = dy W^T    gemm(0, 1, N, in, out, dy, W)
 *   dW += x^T dy   gemm(1, 0, in, out, N, x, dy), beta = 1
 *   db += column sums of dy.
 */
#include "config.h"

#include "model_internal.h"

/* Backward of a linear layer: accumulates dW and db and writes (beta 0) or adds (beta 1) dx. */
static dm_status linear_backward(dm_model *m, int n, int in, int out, size_t x, size_t dy, size_t w,
                                 size_t bias, size_t dx, float dx_beta)
{
    dm_backend *be = m->be;
    DM_TRY_OP(be, gemm, 1, 0, in, out, n, 1.0f, ACT(m, x), in, ACT(m, dy), out, 1.0f, GRAD(m, w), out);
    DM_TRY_OP(be, bias_backward, n, out, GRAD(m, bias), ACT(m, dy));
    DM_TRY_OP(be, gemm, 0, 1, n, in, out, 1.0f, ACT(m, dy), out, PARAM(m, w), out, dx_beta, ACT(m, dx), in);
    return DM_OK;
}

/* Dense FFN backward: dres = dL/d out; writes dL/d ln2 into m->dln. */
static dm_status dense_ffn_backward(dm_model *m, dm_block *blk, int n)
{
    dm_backend *be = m->be;
    const int C = m->C, F = m->F;
    dm_status st;

    if ((st = linear_backward(m, n, F, C, blk->fc_act, m->dres, blk->fc_proj_w, blk->fc_proj_b, m->dfc, 0.0f)))
        return st;
    DM_TRY_OP(be, fill, ACT(m, m->dfc_pre), 0u, (size_t)n * F);
    DM_TRY_OP(be, gelu_backward, (size_t)n * F, ACT(m, m->dfc_pre), ACT(m, blk->fc_pre), ACT(m, m->dfc));
    return linear_backward(m, n, C, F, blk->ln2, m->dfc_pre, blk->fc_w, blk->fc_b, m->dln, 0.0f);
}

dm_status dm_model_backward_pass(dm_model *m)
{
    dm_backend *be = m->be;
    const int C = m->C, V = m->V;
    const int b = m->last_b, t = m->last_t, n = b * t;
    dm_status st;

    if (m->last_mode != DM_PASS_TRAIN)
        return dm_error(DM_ERR_INVALID, "model: backward needs a completed training forward first");

    /* 1. Cross-entropy: dlogits = (probs - onehot) / N, written over probs. */
    DM_TRY_OP(be, xent_backward, n, V, 1.0f / (float)n, ACT(m, m->probs), ACT(m, m->probs),
              ACT(m, m->targets));

    /* 2. Tied LM head: dlnf = dlogits wte, dwte += dlogits^T lnf. */
    DM_TRY_OP(be, gemm, 0, 0, n, C, V, 1.0f, ACT(m, m->probs), V, PARAM(m, m->wte), C, 0.0f,
              ACT(m, m->dln), C);
    DM_TRY_OP(be, gemm, 1, 0, V, C, n, 1.0f, ACT(m, m->probs), V, ACT(m, m->lnf), C, 1.0f,
              GRAD(m, m->wte), C);

    /* 3. Final layer norm into a zeroed residual gradient. */
    DM_TRY_OP(be, fill, ACT(m, m->dres), 0u, (size_t)n * C);
    DM_TRY_OP(be, layernorm_backward, n, C, ACT(m, m->dres), GRAD(m, m->lnf_w), GRAD(m, m->lnf_b),
              ACT(m, m->dln), ACT(m, m->resid[m->L]), PARAM(m, m->lnf_w), ACT(m, m->lnf_mean),
              ACT(m, m->lnf_rstd));

    /* 4. Blocks, last to first. On entry dres = dL/d resid[l+1]; on exit dL/d resid[l]. */
    for (int l = m->L - 1; l >= 0; l--) {
        dm_block *blk = &m->blocks[l];

        /* FFN half: dL/d ln2 into dln, then through ln2 into dres (+=: the residual path). */
        if (blk->moe < 0)
            st = dense_ffn_backward(m, blk, n);
        else
            st = dm_moe_backward(m, &m->moes[blk->moe], n);
        if (st)
            return st;
        DM_TRY_OP(be, layernorm_backward, n, C, ACT(m, m->dres), GRAD(m, blk->ln2_w), GRAD(m, blk->ln2_b),
                  ACT(m, m->dln), ACT(m, blk->mid), PARAM(m, blk->ln2_w), ACT(m, blk->ln2_mean),
                  ACT(m, blk->ln2_rstd));

        /* Attention half: projection, attention, qkv projection, ln1. */
        if ((st = linear_backward(m, n, C, C, blk->att, m->dres, blk->attn_proj_w, blk->attn_proj_b,
                                  m->datt, 0.0f)))
            return st;
        DM_TRY_OP(be, fill, ACT(m, m->dqkv), 0u, (size_t)n * 3 * C);
        DM_TRY_OP(be, attention_backward, b, t, C, m->NH, ACT(m, m->dqkv), ACT(m, m->datt), ACT(m, blk->qkv),
                  ACT(m, blk->att), ACT(m, blk->lse));
        if ((st = linear_backward(m, n, C, 3 * C, blk->ln1, m->dqkv, blk->qkv_w, blk->qkv_b, m->dln, 0.0f)))
            return st;
        DM_TRY_OP(be, layernorm_backward, n, C, ACT(m, m->dres), GRAD(m, blk->ln1_w), GRAD(m, blk->ln1_b),
                  ACT(m, m->dln), ACT(m, m->resid[l]), PARAM(m, blk->ln1_w), ACT(m, blk->ln1_mean),
                  ACT(m, blk->ln1_rstd));
    }

    /* 5. Embeddings. */
    DM_TRY_OP(be, encoder_backward, b, t, C, GRAD(m, m->wte), GRAD(m, m->wpe), ACT(m, m->dres),
              ACT(m, m->tokens));
    return DM_OK;
}
