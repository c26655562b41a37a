/*
 * Forward pass of the model: embeddings, n_layer pre-LN blocks
 * (x += attn(ln1(x)); x += ffn_or_moe(ln2(x))), final layer norm, tied LM
 * head and the fused softmax cross-entropy. Also the logits forward for
 * sampling and the search for the router behind a non-finite loss.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

/* Attention half of block l: mid = x + proj(attn(ln1(x) W_qkv + b_qkv)). */
static dm_status attention_forward(dm_model *m, int l, int b, int t)
{
    dm_backend *be = m->be;
    dm_block *blk = &m->blocks[l];
    const int C = m->C, n = b * t;

    DM_TRY_OP(be, layernorm_forward, n, C, ACT(m, blk->ln1), ACT(m, blk->ln1_mean), ACT(m, blk->ln1_rstd),
              ACT(m, m->resid[l]), PARAM(m, blk->ln1_w), PARAM(m, blk->ln1_b));
    DM_TRY_OP(be, gemm, 0, 0, n, 3 * C, C, 1.0f, ACT(m, blk->ln1), C, PARAM(m, blk->qkv_w), 3 * C, 0.0f,
              ACT(m, blk->qkv), 3 * C);
    DM_TRY_OP(be, bias_forward, n, 3 * C, ACT(m, blk->qkv), PARAM(m, blk->qkv_b));
    DM_TRY_OP(be, attention_forward, b, t, C, m->NH, ACT(m, blk->att), ACT(m, blk->lse), ACT(m, blk->qkv));

    /* Residual: mid = x, then mid += att W_proj + b_proj (GEMM with beta = 1). */
    DM_TRY_OP(be, copy, ACT(m, blk->mid), ACT(m, m->resid[l]), (size_t)n * C);
    DM_TRY_OP(be, gemm, 0, 0, n, C, C, 1.0f, ACT(m, blk->att), C, PARAM(m, blk->attn_proj_w), C, 1.0f,
              ACT(m, blk->mid), C);
    DM_TRY_OP(be, bias_forward, n, C, ACT(m, blk->mid), PARAM(m, blk->attn_proj_b));
    return DM_OK;
}

/* FFN half of block l: out = mid + ffn(ln2(mid)), dense or MoE. */
static dm_status ffn_forward(dm_model *m, int l, int n, int mode, int64_t step, const double *mu,
                             const dm_run_opts *opts)
{
    dm_backend *be = m->be;
    dm_block *blk = &m->blocks[l];
    const int C = m->C, F = m->F;
    const size_t out = m->resid[l + 1];

    DM_TRY_OP(be, layernorm_forward, n, C, ACT(m, blk->ln2), ACT(m, blk->ln2_mean), ACT(m, blk->ln2_rstd),
              ACT(m, blk->mid), PARAM(m, blk->ln2_w), PARAM(m, blk->ln2_b));
    DM_TRY_OP(be, copy, ACT(m, out), ACT(m, blk->mid), (size_t)n * C);

    if (blk->moe < 0) {
        DM_TRY_OP(be, gemm, 0, 0, n, F, C, 1.0f, ACT(m, blk->ln2), C, PARAM(m, blk->fc_w), F, 0.0f,
                  ACT(m, blk->fc_pre), F);
        DM_TRY_OP(be, bias_forward, n, F, ACT(m, blk->fc_pre), PARAM(m, blk->fc_b));
        DM_TRY_OP(be, gelu_forward, (size_t)n * F, ACT(m, blk->fc_act), ACT(m, blk->fc_pre));
        DM_TRY_OP(be, gemm, 0, 0, n, C, F, 1.0f, ACT(m, blk->fc_act), F, PARAM(m, blk->fc_proj_w), C, 1.0f,
                  ACT(m, out), C);
        DM_TRY_OP(be, bias_forward, n, C, ACT(m, out), PARAM(m, blk->fc_proj_b));
        return DM_OK;
    }

    dm_moe_layer *ml = &m->moes[blk->moe];
    dm_status st = dm_moe_forward(m, ml, n, mode, step, mu ? mu[l] : 0.0, opts, &m->stats[blk->moe]);
    if (st)
        return st;
    DM_TRY_OP(be, axpy, (size_t)n * C, 1.0f, ACT(m, ml->y), ACT(m, out));
    return DM_OK;
}

static int all_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return 0;
    return 1;
}

/*
 * Finds the first MoE layer whose router output or regulariser statistics are
 * non-finite and returns DM_ERR_NUMERIC naming it. It runs only after a
 * non-finite loss, so the extra downloads cost nothing in normal runs.
 */
static dm_status report_non_finite(dm_model *m, int n, int64_t step, double ce, double aux)
{
    const int E = m->E;
    for (int i = 0; i < m->n_moe; i++) {
        dm_moe_layer *ml = &m->moes[i];
        const dm_layer_stats *s = &m->stats[i];
        const char *bad_output = NULL;
        size_t nr = (size_t)n * ml->width;
        float *buf = malloc(nr * sizeof *buf);
        if (!buf)
            return dm_error(DM_ERR_NOMEM, "model: out of host memory while checking the routers");

        if (m->be->ops->download(m->be->ctx, buf, ACT(m, ml->logits), nr) == DM_OK && !all_finite(buf, nr))
            bad_output = "router logits";
        else if (m->be->ops->download(m->be->ctx, buf, ACT(m, ml->w), (size_t)n * E) == DM_OK &&
                 !all_finite(buf, (size_t)n * E))
            bad_output = "routing weights";
        else if (!isfinite(s->kl_b) || !isfinite(s->kl_d) || !isfinite(s->kbar) || !isfinite(s->aux_loss))
            bad_output = "regulariser or auxiliary loss";
        free(buf);

        if (bad_output)
            return dm_error(DM_ERR_NUMERIC,
                            "step %lld: the loss is not finite (cross-entropy %g, router terms %g): the "
                            "router of MoE block %d produced non-finite %s; lower --lr, keep --clip on, "
                            "or resume from an earlier checkpoint",
                            (long long)step, ce, aux, ml->block, bad_output);
    }
    return dm_error(DM_ERR_NUMERIC,
                    "step %lld: the loss is not finite (cross-entropy %g, router terms %g) and every "
                    "router output is finite, so the attention or FFN activations overflowed; lower "
                    "--lr, keep --clip on, or resume from an earlier checkpoint",
                    (long long)step, ce, aux);
}

dm_status dm_model_forward_pass(dm_model *m, const int32_t *inputs, const int32_t *targets, int b,
                                int t, int mode, int64_t step, const double *mu,
                                const dm_run_opts *opts, dm_step_stats *stats)
{
    dm_backend *be = m->be;
    const int C = m->C, V = m->V;
    const int n = b * t;
    dm_status st;

    if (b < 1 || t < 1 || t > m->T || n > m->max_tokens)
        return dm_error(DM_ERR_INVALID, "model: a batch of %d x %d tokens does not fit the model built for "
                        "--batch %d x --seq-len %d", b, t, m->cfg.batch, m->T);
    for (int i = 0; i < n; i++)
        if (inputs[i] < 0 || inputs[i] >= V || (targets && (targets[i] < 0 || targets[i] >= V)))
            return dm_error(DM_ERR_INVALID, "model: token %d at position %d is outside the vocabulary of %d",
                            inputs[i] < 0 || inputs[i] >= V ? inputs[i] : targets[i], i, V);

    m->last_b = b;
    m->last_t = t;
    m->last_mode = -1; /* set again when the pass completes */
    m->last_step = step;

    /* 1. Embeddings: resid[0] (B,T,C) = wte[tokens] + wpe[position]. */
    DM_TRY_OP(be, upload, ACT(m, m->tokens), inputs, (size_t)n);
    if (targets)
        DM_TRY_OP(be, upload, ACT(m, m->targets), targets, (size_t)n);
    DM_TRY_OP(be, encoder_forward, b, t, C, ACT(m, m->resid[0]), ACT(m, m->tokens), PARAM(m, m->wte),
              PARAM(m, m->wpe));

    /* 2. Blocks. */
    for (int l = 0; l < m->L; l++) {
        if ((st = attention_forward(m, l, b, t)) != DM_OK)
            return st;
        if ((st = ffn_forward(m, l, n, mode, step, mu, opts)) != DM_OK)
            return st;
    }

    /* 3. Final layer norm and the tied LM head: logits (N,V) = lnf (N,C) wte^T. */
    DM_TRY_OP(be, layernorm_forward, n, C, ACT(m, m->lnf), ACT(m, m->lnf_mean), ACT(m, m->lnf_rstd),
              ACT(m, m->resid[m->L]), PARAM(m, m->lnf_w), PARAM(m, m->lnf_b));
    DM_TRY_OP(be, gemm, 0, 1, n, V, C, 1.0f, ACT(m, m->lnf), C, PARAM(m, m->wte), C, 0.0f,
              ACT(m, m->logits), V);

    /* 4. Loss: mean cross-entropy, summed on the host in double. */
    double ce = 0.0, aux = 0.0;
    if (targets) {
        DM_TRY_OP(be, xent_forward, n, V, ACT(m, m->losses), ACT(m, m->probs), ACT(m, m->logits),
                  ACT(m, m->targets));
        DM_TRY_OP(be, download, m->host_losses, ACT(m, m->losses), (size_t)n);
        for (int i = 0; i < n; i++)
            ce += m->host_losses[i];
        ce /= n;
    }
    for (int i = 0; i < m->n_moe; i++)
        aux += m->stats[i].aux_loss;

    if (stats) {
        memset(stats, 0, sizeof *stats);
        stats->step = step;
        stats->ce = ce;
        stats->aux = aux;
        stats->loss = ce + aux;
        stats->n_moe = m->n_moe;
        stats->layers = m->stats;
    }

    if (targets && !isfinite(ce + aux))
        return report_non_finite(m, n, step, ce, aux);

    m->last_mode = mode;
    return DM_OK;
}

dm_status dm_model_logits(dm_model *m, const int32_t *tokens, int t, float *out)
{
    if (t < 1 || t > m->T)
        return dm_error(DM_ERR_INVALID, "model: %d context tokens do not fit --seq-len %d: keep at most "
                        "the last %d", t, m->T, m->T);
    dm_status st = dm_model_forward_pass(m, tokens, NULL, 1, t, DM_PASS_LOGITS, 0, NULL, NULL, NULL);
    if (st)
        return st;
    DM_TRY_OP(m->be, download, out, ACT(m, m->logits), (size_t)t * m->V);
    return DM_OK;
}
