/*
 * The MoE layer and its backward: router linear map, routing, dispatch to
 * per-expert groups, the expert FFNs as one GEMM pair per expert on its
 * grouped tokens, and the weighted combine.
 *
 * Shapes: N tokens, C = d_model, F = d_ff, E experts, R router outputs per
 * token (2E for dirmoe: [s | c]; E for topk and switch), S = assignments kept
 * after dispatch (sum of counts). Expert e's rows of the grouped buffers are
 * offsets[e] .. offsets[e] + counts[e] - 1.
 */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dm_math.h"
#include "model_internal.h"

/* Grouped buffer views of a layer with capacity `cap` slots. */
static size_t grp_xg(const dm_model *m, size_t cap) { (void)m; (void)cap; return 0; }
static size_t grp_hpre(const dm_model *m, size_t cap) { return cap * (size_t)m->C; }
static size_t grp_h(const dm_model *m, size_t cap) { return cap * ((size_t)m->C + m->F); }
static size_t grp_yg(const dm_model *m, size_t cap) { return cap * ((size_t)m->C + 2 * (size_t)m->F); }

/* Grows a grouped buffer to at least `slots` rows (contents are not kept). */
static dm_status grow(dm_model *m, dm_buffer **buf, size_t *cap, size_t slots, const char *purpose)
{
    if (*cap >= slots && *buf)
        return DM_OK;

    size_t want = slots + slots / 4 + 64; /* headroom: the count moves from step to step */
    if (want > (size_t)m->max_tokens * m->E)
        want = (size_t)m->max_tokens * m->E;
    if (want < slots)
        want = slots;
    if (*buf)
        m->be->ops->free(m->be->ctx, *buf);
    *buf = NULL;
    *cap = 0;

    size_t n = want * (2 * (size_t)m->C + 2 * (size_t)m->F);
    dm_status st = m->be->ops->alloc(m->be->ctx, n, buf);
    if (st) {
        *buf = NULL;
        return dm_error(st, "model: cannot allocate %s for %zu expert slots (%zu MiB) on backend %s: %s; "
                        "reduce --batch or --k-max",
                        purpose, want, (n * 4) >> 20, m->be->name, m->be->desc->last_error(m->be->ctx));
    }
    *cap = want;
    return DM_OK;
}

dm_status dm_moe_alloc_group(dm_model *m, dm_moe_layer *ml, size_t slots)
{
    return grow(m, &ml->group, &ml->group_slots, slots, "grouped expert activations");
}

/* Computes pi = sigmoid(s) (dirmoe) on the host from the downloaded logits. */
static void host_pi(const float *logits, int n, int e, float *out)
{
    for (int t = 0; t < n; t++)
        for (int j = 0; j < e; j++)
            out[(size_t)t * e + j] = dm_sigmoidf(logits[(size_t)t * 2 * e + j]);
}

/* Routing step: fills mask and w (and the router's saved tensors). */
static dm_status route(dm_model *m, dm_moe_layer *ml, int n, int mode, int64_t step, double mu)
{
    dm_backend *be = m->be;
    const dm_config *cfg = &m->cfg;
    const size_t nE = (size_t)n * m->E;

    if (cfg->router == DM_ROUTER_DIRMOE) {
        dm_router_fill_dirmoe(cfg, ml->block, n, step, &ml->dp);
        dm_router_fill_reg(cfg, n, step, mu, &ml->rp);

        if (mode == DM_PASS_TRAIN) {
            if (ml->fixed_u) {
                if (ml->n_fixed != n)
                    return dm_error(DM_ERR_INVALID, "model: fixed noise of block %d was set for %d tokens "
                                    "but the batch has %d", ml->block, ml->n_fixed, n);
                DM_TRY_OP(be, upload, ACT(m, ml->u), ml->fixed_u, nE);
                DM_TRY_OP(be, upload, ACT(m, ml->log_g), ml->fixed_log_g, nE);
                ml->dp.fixed_noise = 1;
            }
            DM_TRY_OP(be, fill, ACT(m, ml->fallbacks), 0u, 1);
            DM_TRY_OP(be, dirmoe_route_forward, &ml->dp, ACT(m, ml->logits), ACT(m, ml->u),
                      ACT(m, ml->log_g), ACT(m, ml->zt), ACT(m, ml->alpha), ACT(m, ml->mask),
                      ACT(m, ml->w), ACT(m, ml->fallbacks));
        } else {
            DM_TRY_OP(be, dirmoe_route_eval, &ml->dp, ACT(m, ml->logits), ACT(m, ml->mask), ACT(m, ml->w));
        }
        /* The regulariser statistics (Kbar, KL) are reported at evaluation too. */
        DM_TRY_OP(be, dirmoe_reg_forward, &ml->rp, ACT(m, ml->logits), ACT(m, ml->reg_stats));
        return DM_OK;
    }

    ml->tp.n_tokens = n;
    ml->tp.n_expert = m->E;
    ml->tp.k = (int)dm_config_target_k(cfg);
    ml->tp.renormalize = cfg->router == DM_ROUTER_TOPK;
    DM_TRY_OP(be, topk_route_forward, &ml->tp, ACT(m, ml->logits), ACT(m, ml->probs), ACT(m, ml->mask),
              ACT(m, ml->w));
    return DM_OK;
}

/* Runs the expert FFNs on the grouped tokens: yg = gelu(xg W1_e + b1_e) W2_e + b2_e. */
static dm_status experts_forward(dm_model *m, dm_moe_layer *ml)
{
    dm_backend *be = m->be;
    const int C = m->C, F = m->F, E = m->E;
    const size_t cap = ml->group_slots;
    const int32_t *counts = ml->host_ints;
    const int32_t *offsets = ml->host_ints + 2 * E;

    for (int e = 0; e < E; e++) {
        int ne = counts[e];
        if (ne == 0)
            continue;
        size_t o = (size_t)offsets[e];
        dm_tensor xg = dm_t(ml->group, grp_xg(m, cap) + o * C);
        dm_tensor hpre = dm_t(ml->group, grp_hpre(m, cap) + o * F);
        dm_tensor h = dm_t(ml->group, grp_h(m, cap) + o * F);
        dm_tensor yg = dm_t(ml->group, grp_yg(m, cap) + o * C);

        DM_TRY_OP(be, gemm, 0, 0, ne, F, C, 1.0f, xg, C, PARAM(m, ml->fc_w + (size_t)e * C * F), F,
                  0.0f, hpre, F);
        DM_TRY_OP(be, bias_forward, ne, F, hpre, PARAM(m, ml->fc_b + (size_t)e * F));
        DM_TRY_OP(be, gelu_forward, (size_t)ne * F, h, hpre);
        DM_TRY_OP(be, gemm, 0, 0, ne, C, F, 1.0f, h, F, PARAM(m, ml->proj_w + (size_t)e * F * C), C,
                  0.0f, yg, C);
        DM_TRY_OP(be, bias_forward, ne, C, yg, PARAM(m, ml->proj_b + (size_t)e * C));
    }
    return DM_OK;
}

/* Downloads the per-layer statistics of the last forward into `s`. */
static dm_status collect_stats(dm_model *m, dm_moe_layer *ml, int n, int mode, int64_t step,
                               double mu, const dm_run_opts *opts, dm_layer_stats *s)
{
    dm_backend *be = m->be;
    const dm_config *cfg = &m->cfg;
    const int E = m->E;
    const size_t nE = (size_t)n * E;

    memset(s, 0, sizeof *s);
    s->layer = ml->block;
    s->n_expert = E;
    s->n_tokens = n;

    int64_t selected = 0, kept = 0;
    for (int e = 0; e < E; e++) {
        s->counts[e] = ml->host_ints[e];
        s->demand[e] = ml->host_ints[E + e];
        kept += s->counts[e];
        selected += s->demand[e];
    }
    s->active_mean = (double)selected / n;
    s->dropped = selected - kept;
    s->kbar = dm_config_target_k(cfg);

    if (cfg->router == DM_ROUTER_DIRMOE) {
        float rs[DM_REG_NSTATS];
        DM_TRY_OP(be, download, rs, ACT(m, ml->reg_stats), DM_REG_NSTATS);
        s->kl_b = rs[DM_REG_KL_B];
        s->kl_d = rs[DM_REG_KL_D];
        s->kbar = rs[DM_REG_KBAR];
        s->reg_loss = mode == DM_PASS_TRAIN ? rs[DM_REG_LOSS] : 0.0;
        s->aux_loss = s->reg_loss;
        dm_router_coefs rc;
        dm_router_coefs_at(cfg, step, &rc);
        s->tau = rc.tau;
        s->alpha0 = rc.alpha0;
        s->ramp = rc.ramp;
        s->mu = cfg->sparsity == DM_SPARSITY_ADAPTIVE ? mu : 0.0;
        if (mode == DM_PASS_TRAIN) {
            uint32_t fb = 0;
            DM_TRY_OP(be, download, &fb, ACT(m, ml->fallbacks), 1);
            s->gamma_fallbacks = fb;
        }
    } else if (ml->did_balance) {
        float bs[DM_BAL_NSTATS];
        DM_TRY_OP(be, download, bs, ACT(m, ml->bal_stats), DM_BAL_NSTATS);
        s->balance = bs[DM_BAL_LOSS];
        s->zloss = bs[DM_BAL_ZLOSS];
        if (mode == DM_PASS_TRAIN)
            s->aux_loss = cfg->aux_loss * s->balance + cfg->z_loss * s->zloss;
    }

    if (opts && opts->want_routing) {
        DM_TRY_OP(be, download, ml->host_mask, ACT(m, ml->mask), nE);
        DM_TRY_OP(be, download, ml->host_w, ACT(m, ml->w), nE);
        if (cfg->router == DM_ROUTER_DIRMOE) {
            DM_TRY_OP(be, download, ml->host_logits, ACT(m, ml->logits), 2 * nE);
            host_pi(ml->host_logits, n, E, ml->host_probs);
        } else {
            DM_TRY_OP(be, download, ml->host_probs, ACT(m, ml->probs), nE);
        }
        s->mask = ml->host_mask;
        s->weights = ml->host_w;
        s->probs = ml->host_probs;
    }
    return DM_OK;
}

dm_status dm_moe_forward(dm_model *m, dm_moe_layer *ml, int n, int mode, int64_t step, double mu,
                         const dm_run_opts *opts, dm_layer_stats *stats)
{
    dm_backend *be = m->be;
    const dm_config *cfg = &m->cfg;
    const dm_block *b = &m->blocks[ml->block];
    const int C = m->C, E = m->E, R = ml->width;
    dm_status st;

    ml->n_tokens = n;
    ml->did_balance = 0;

    /* 1. Router linear map: logits (N,R) = ln2 (N,C) W_r (C,R) + b_r. */
    DM_TRY_OP(be, gemm, 0, 0, n, R, C, 1.0f, ACT(m, b->ln2), C, PARAM(m, ml->router_w), R, 0.0f,
              ACT(m, ml->logits), R);
    DM_TRY_OP(be, bias_forward, n, R, ACT(m, ml->logits), PARAM(m, ml->router_b));

    /* 2. Routing: mask and weights. */
    if ((st = route(m, ml, n, mode, step, mu)) != DM_OK)
        return st;

    /* 3. Dispatch: group the assignments by expert; the host needs the counts to size the GEMMs. */
    int capacity = dm_router_capacity(cfg, n);
    size_t ints = ml->dispatch_ints;
    DM_TRY_OP(be, dispatch_build, n, E, capacity, ACT(m, ml->mask), ACT(m, ml->slot), ACT(m, ints),
              ACT(m, ints + E), ACT(m, ints + 2 * E), ACT(m, ml->token_of_slot));
    DM_TRY_OP(be, download, ml->host_ints, ACT(m, ints), 3 * (size_t)E + 1);
    ml->n_slots = ml->host_ints[3 * E];
    if (ml->n_slots < 0 || ml->n_slots > n * E)
        return dm_error(DM_ERR_BACKEND, "model: dispatch of block %d returned %d slots for %d tokens "
                        "and %d experts", ml->block, ml->n_slots, n, E);

    /* 4. Load-balancing and z-loss statistics of topk and switch (they need the demand). */
    if (cfg->router != DM_ROUTER_DIRMOE && (cfg->aux_loss > 0.0 || cfg->z_loss > 0.0)) {
        ml->bp.n_tokens = n;
        ml->bp.n_expert = E;
        ml->bp.k = ml->tp.k;
        ml->bp.logits_stride = R;
        ml->bp.coef_balance = cfg->aux_loss;
        ml->bp.coef_z = cfg->z_loss;
        DM_TRY_OP(be, balance_forward, &ml->bp, ACT(m, ml->logits), ACT(m, ml->probs),
                  ACT(m, ints + E), ACT(m, ml->bal_stats));
        ml->did_balance = 1;
    }

    /* 5. Experts on the grouped tokens, then the weighted combine into y (N,C). */
    if ((st = dm_moe_alloc_group(m, ml, (size_t)ml->n_slots)) != DM_OK)
        return st;
    if (ml->n_slots > 0) {
        DM_TRY_OP(be, gather_forward, ml->n_slots, C, dm_t(ml->group, grp_xg(m, ml->group_slots)),
                  ACT(m, b->ln2), ACT(m, ml->token_of_slot));
        if ((st = experts_forward(m, ml)) != DM_OK)
            return st;
    }
    DM_TRY_OP(be, combine_forward, n, E, C, ACT(m, ml->y), dm_t(ml->group, grp_yg(m, ml->group_slots)),
              ACT(m, ml->slot), ACT(m, ml->w));

    return collect_stats(m, ml, n, mode, step, mu, opts, stats);
}

/* ---- backward ------------------------------------------------------------- */

/* Backward of the expert FFNs. gscratch contains dyg | dh | dhpre | dxg, each with `gcap` rows. */
static dm_status experts_backward(dm_model *m, dm_moe_layer *ml)
{
    dm_backend *be = m->be;
    const int C = m->C, F = m->F, E = m->E;
    const size_t cap = ml->group_slots, gcap = m->gscratch_slots;
    const int32_t *counts = ml->host_ints;
    const int32_t *offsets = ml->host_ints + 2 * E;
    const size_t S = (size_t)ml->n_slots;

    const size_t dyg = 0, dh = gcap * C, dhpre = gcap * (C + F), dxg = gcap * (C + 2 * (size_t)F);

    /* dh = dyg W2_e^T, dW2_e += h^T dyg, db2_e += column sums of dyg. */
    for (int e = 0; e < E; e++) {
        int ne = counts[e];
        if (ne == 0)
            continue;
        size_t o = (size_t)offsets[e];
        dm_tensor dyg_e = dm_t(m->gscratch, dyg + o * C);
        DM_TRY_OP(be, gemm, 0, 1, ne, F, C, 1.0f, dyg_e, C, PARAM(m, ml->proj_w + (size_t)e * F * C), C,
                  0.0f, dm_t(m->gscratch, dh + o * F), F);
        DM_TRY_OP(be, gemm, 1, 0, F, C, ne, 1.0f, dm_t(ml->group, grp_h(m, cap) + o * F), F, dyg_e, C,
                  1.0f, GRAD(m, ml->proj_w + (size_t)e * F * C), C);
        DM_TRY_OP(be, bias_backward, ne, C, GRAD(m, ml->proj_b + (size_t)e * C), dyg_e);
    }

    /* dhpre = gelu'(hpre) dh over all slots at once (the op accumulates, so zero first). */
    DM_TRY_OP(be, fill, dm_t(m->gscratch, dhpre), 0u, S * F);
    DM_TRY_OP(be, gelu_backward, S * F, dm_t(m->gscratch, dhpre), dm_t(ml->group, grp_hpre(m, cap)),
              dm_t(m->gscratch, dh));

    /* dW1_e += xg^T dhpre, db1_e += column sums, dxg = dhpre W1_e^T. */
    for (int e = 0; e < E; e++) {
        int ne = counts[e];
        if (ne == 0)
            continue;
        size_t o = (size_t)offsets[e];
        dm_tensor dhpre_e = dm_t(m->gscratch, dhpre + o * F);
        DM_TRY_OP(be, gemm, 1, 0, C, F, ne, 1.0f, dm_t(ml->group, grp_xg(m, cap) + o * C), C, dhpre_e, F,
                  1.0f, GRAD(m, ml->fc_w + (size_t)e * C * F), F);
        DM_TRY_OP(be, bias_backward, ne, F, GRAD(m, ml->fc_b + (size_t)e * F), dhpre_e);
        DM_TRY_OP(be, gemm, 0, 1, ne, C, F, 1.0f, dhpre_e, F, PARAM(m, ml->fc_w + (size_t)e * C * F), F,
                  0.0f, dm_t(m->gscratch, dxg + o * C), C);
    }
    return DM_OK;
}

/*
 * Backward of the MoE layer. Reads dL/dy from m->dres (y is added to the
 * residual stream) and writes dL/d ln2 into m->dln; accumulates every
 * parameter gradient of the layer.
 */
dm_status dm_moe_backward(dm_model *m, dm_moe_layer *ml, int n)
{
    dm_backend *be = m->be;
    const dm_config *cfg = &m->cfg;
    const dm_block *b = &m->blocks[ml->block];
    const int C = m->C, E = m->E, R = ml->width;
    const size_t S = (size_t)ml->n_slots;
    dm_status st;

    if ((st = grow(m, &m->gscratch, &m->gscratch_slots, S, "expert gradient scratch")) != DM_OK)
        return st;
    const size_t gcap = m->gscratch_slots;
    const size_t dxg = gcap * (C + 2 * (size_t)m->F);

    /* 1. Combine backward: dyg (S,C) and dw (N,E) = <dy, yg>. */
    DM_TRY_OP(be, combine_backward, n, E, C, dm_t(m->gscratch, 0), ACT(m, m->dw), ACT(m, m->dres),
              dm_t(ml->group, grp_yg(m, ml->group_slots)), ACT(m, ml->slot), ACT(m, ml->w));

    /* 2. Experts, then scatter the grouped input gradient back to the tokens. */
    DM_TRY_OP(be, fill, ACT(m, m->dln), 0u, (size_t)n * C);
    if (S > 0) {
        if ((st = experts_backward(m, ml)) != DM_OK)
            return st;
        DM_TRY_OP(be, gather_backward, (int)S, C, ACT(m, m->dln), dm_t(m->gscratch, dxg),
                  ACT(m, ml->token_of_slot));
    }

    /* 3. Routing backward into dlogits (N,R), plus the router losses. */
    DM_TRY_OP(be, fill, ACT(m, m->drouter), 0u, (size_t)n * R);
    if (cfg->router == DM_ROUTER_DIRMOE) {
        DM_TRY_OP(be, dirmoe_route_backward, &ml->dp, ACT(m, m->drouter), ACT(m, m->dw), ACT(m, ml->logits),
                  ACT(m, ml->zt), ACT(m, ml->alpha), ACT(m, ml->log_g), ACT(m, ml->mask), ACT(m, ml->w));
        DM_TRY_OP(be, dirmoe_reg_backward, &ml->rp, ACT(m, ml->logits), ACT(m, m->drouter));
    } else {
        DM_TRY_OP(be, topk_route_backward, &ml->tp, ACT(m, m->drouter), ACT(m, m->dw), ACT(m, ml->probs),
                  ACT(m, ml->mask), ACT(m, ml->w));
        if (ml->did_balance)
            DM_TRY_OP(be, balance_backward, &ml->bp, ACT(m, ml->logits), ACT(m, ml->probs),
                      ACT(m, ml->dispatch_ints + E), ACT(m, m->drouter));
    }

    /* 4. Router linear map: dW_r += ln2^T dlogits, db_r += sums, dln += dlogits W_r^T. */
    DM_TRY_OP(be, gemm, 1, 0, C, R, n, 1.0f, ACT(m, b->ln2), C, ACT(m, m->drouter), R, 1.0f,
              GRAD(m, ml->router_w), R);
    DM_TRY_OP(be, bias_backward, n, R, GRAD(m, ml->router_b), ACT(m, m->drouter));
    DM_TRY_OP(be, gemm, 0, 1, n, C, R, 1.0f, ACT(m, m->drouter), R, PARAM(m, ml->router_w), R, 1.0f,
              ACT(m, m->dln), C);
    return DM_OK;
}
