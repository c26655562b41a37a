/*
 * Training step and evaluation: forward and backward, global gradient-norm
 * clipping, AdamW over the two parameter regions (matrices with weight decay,
 * then vectors without), and the dual ascent on the adaptive sparsity
 * multiplier mu.
 */
#include "config.h"

#include <math.h>
#include <string.h>

#include "model_internal.h"

void dm_train_state_init(const dm_model *model, dm_train_state *state)
{
    memset(state, 0, sizeof *state);
    state->seed = model->cfg.seed;
}

dm_status dm_model_forward_backward(dm_model *m, const dm_train_state *state, const dm_batch *batch,
                                    const dm_run_opts *opts, dm_step_stats *stats)
{
    dm_step_stats local;
    dm_step_stats *s = stats ? stats : &local;
    dm_status st;

    if (state->seed != m->cfg.seed)
        return dm_error(DM_ERR_INVALID, "train: the state's seed %llu differs from the model's --seed %llu",
                        (unsigned long long)state->seed, (unsigned long long)m->cfg.seed);
    if (state->step < 0 || state->step > 0xffffffffLL)
        return dm_error(DM_ERR_INVALID, "train: step %lld is outside the 32-bit counter range",
                        (long long)state->step);

    DM_TRY_OP(m->be, fill, GRAD(m, 0), 0u, m->n_params);
    st = dm_model_forward_pass(m, batch->inputs, batch->targets, batch->b, batch->t, DM_PASS_TRAIN,
                               state->step, state->mu, opts, s);
    if (st)
        return st;
    return dm_model_backward_pass(m);
}

/* Global gradient norm from one sum-of-squares over the flat gradient buffer. */
static dm_status grad_norm(dm_model *m, double *norm)
{
    float sumsq = 0.0f;
    DM_TRY_OP(m->be, sum_squares, m->n_params, GRAD(m, 0), ACT(m, m->scalar));
    DM_TRY_OP(m->be, download, &sumsq, ACT(m, m->scalar), 1);
    *norm = sqrt((double)sumsq);
    return DM_OK;
}

static dm_status adamw_region(dm_model *m, size_t off, size_t n, const dm_adamw_params *p)
{
    if (n == 0)
        return DM_OK;
    DM_TRY_OP(m->be, adamw, n, p, PARAM(m, off), GRAD(m, off), dm_t(m->adam_m, off), dm_t(m->adam_v, off));
    return DM_OK;
}

dm_status dm_train_step(dm_model *m, dm_train_state *state, const dm_batch *batch,
                        const dm_run_opts *opts, dm_step_stats *stats)
{
    const dm_config *cfg = &m->cfg;
    dm_step_stats local;
    dm_step_stats *s = stats ? stats : &local;
    dm_status st;

    /* 1. Gradients. A non-finite loss returns here, before any parameter changes. */
    if ((st = dm_model_forward_backward(m, state, batch, opts, s)) != DM_OK)
        return st;

    /* 2. Global gradient-norm clipping. */
    double norm;
    if ((st = grad_norm(m, &norm)) != DM_OK)
        return st;
    if (!isfinite(norm))
        return dm_error(DM_ERR_NUMERIC, "step %lld: the gradient norm is not finite although the loss "
                        "(%g) is; lower --lr or resume from an earlier checkpoint",
                        (long long)state->step, s->loss);
    s->grad_norm = norm;
    if (cfg->clip > 0.0 && norm > cfg->clip)
        DM_TRY_OP(m->be, scale, m->n_params, (float)(cfg->clip / norm), GRAD(m, 0));

    /* 3. AdamW: matrices decay, vectors (biases, layer norms) do not. */
    double lr = dm_lr_at(cfg, state->step);
    s->lr = lr;
    dm_adamw_params ap = {
        .lr = (float)lr,
        .beta1 = (float)cfg->beta1,
        .beta2 = (float)cfg->beta2,
        .eps = (float)cfg->adam_eps,
        .weight_decay = (float)cfg->weight_decay,
        .t = (int32_t)(state->step + 1),
    };
    if ((st = adamw_region(m, 0, m->n_decay, &ap)) != DM_OK)
        return st;
    ap.weight_decay = 0.0f;
    if ((st = adamw_region(m, m->n_decay, m->n_params - m->n_decay, &ap)) != DM_OK)
        return st;

    /* 4. Dual ascent on mu after the exploration phase (signed: mu can fall as well as rise). */
    if (cfg->router == DM_ROUTER_DIRMOE && cfg->sparsity == DM_SPARSITY_ADAPTIVE) {
        dm_router_coefs rc;
        dm_router_coefs_at(cfg, state->step, &rc);
        if (rc.progress >= cfg->explore) {
            double k = dm_config_target_k(cfg);
            for (int i = 0; i < m->n_moe; i++)
                state->mu[m->moes[i].block] += cfg->dual_step * (m->stats[i].kbar - k);
        }
    }
    for (int i = 0; i < m->n_moe; i++)
        state->gamma_fallbacks[m->moes[i].block] += m->stats[i].gamma_fallbacks;

    state->step++;
    return DM_OK;
}

dm_status dm_model_evaluate(dm_model *m, const dm_batch *batch, const dm_run_opts *opts,
                            dm_step_stats *stats)
{
    dm_step_stats local;
    dm_step_stats *s = stats ? stats : &local;
    return dm_model_forward_pass(m, batch->inputs, batch->targets, batch->b, batch->t, DM_PASS_EVAL,
                                 m->last_step, NULL, opts, s);
}
