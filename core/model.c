/*
 * The model object: the named parameter table, buffer allocation,
 * initialisation on the host, accessors and the fixed-noise hook.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dm_math.h"
#include "dirmoe/philox.h"
#include "model_internal.h"

/* ---- parameter table ------------------------------------------------------ */

static dm_status add_param(dm_model *m, const char *name, int ndim, int d0, int d1, int d2,
                           int decay, dm_init_kind init, size_t *offset)
{
    if (m->n_info == m->cap_info) {
        int cap = m->cap_info ? 2 * m->cap_info : 64;
        dm_param_info *info = realloc(m->info, (size_t)cap * sizeof *info);
        if (!info)
            return dm_error(DM_ERR_NOMEM, "model: out of host memory for the parameter table");
        m->info = info;
        dm_init_kind *kinds = realloc(m->init, (size_t)cap * sizeof *kinds);
        if (!kinds)
            return dm_error(DM_ERR_NOMEM, "model: out of host memory for the parameter table");
        m->init = kinds;
        m->cap_info = cap;
    }

    dm_param_info *p = &m->info[m->n_info];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = ndim > 1 ? d1 : 0;
    p->shape[2] = ndim > 2 ? d2 : 0;
    p->numel = (size_t)d0 * (ndim > 1 ? (size_t)d1 : 1) * (ndim > 2 ? (size_t)d2 : 1);
    p->offset = m->n_params;
    p->decay = decay;
    m->init[m->n_info] = init;
    m->n_info++;
    m->n_params += p->numel;
    *offset = p->offset;
    return DM_OK;
}

#define ADD(name, nd, a, b, c, decay, init, off)                                  \
    do {                                                                         \
        dm_status st_ = add_param(m, (name), (nd), (a), (b), (c), (decay), (init), (off)); \
        if (st_)                                                                 \
            return st_;                                                          \
    } while (0)

/* Lays out all matrices first (weight decay), then all vectors, so AdamW runs as two calls. */
static dm_status build_param_table(dm_model *m)
{
    const int C = m->C, F = m->F, V = m->V, T = m->T, E = m->E;
    char name[64];

    ADD("wte", 2, V, C, 0, 1, DM_INIT_NORMAL, &m->wte);
    ADD("wpe", 2, T, C, 0, 1, DM_INIT_NORMAL, &m->wpe);
    for (int l = 0; l < m->L; l++) {
        dm_block *b = &m->blocks[l];
        snprintf(name, sizeof name, "h.%d.attn.qkv.w", l);
        ADD(name, 2, C, 3 * C, 0, 1, DM_INIT_NORMAL, &b->qkv_w);
        snprintf(name, sizeof name, "h.%d.attn.proj.w", l);
        ADD(name, 2, C, C, 0, 1, DM_INIT_NORMAL_PROJ, &b->attn_proj_w);
        if (b->moe < 0) {
            snprintf(name, sizeof name, "h.%d.ffn.fc.w", l);
            ADD(name, 2, C, F, 0, 1, DM_INIT_NORMAL, &b->fc_w);
            snprintf(name, sizeof name, "h.%d.ffn.proj.w", l);
            ADD(name, 2, F, C, 0, 1, DM_INIT_NORMAL_PROJ, &b->fc_proj_w);
        } else {
            dm_moe_layer *ml = &m->moes[b->moe];
            snprintf(name, sizeof name, "h.%d.router.w", l);
            ADD(name, 2, C, ml->width, 0, 1, DM_INIT_NORMAL, &ml->router_w);
            snprintf(name, sizeof name, "h.%d.experts.fc.w", l);
            ADD(name, 3, E, C, F, 1, DM_INIT_NORMAL, &ml->fc_w);
            snprintf(name, sizeof name, "h.%d.experts.proj.w", l);
            ADD(name, 3, E, F, C, 1, DM_INIT_NORMAL_PROJ, &ml->proj_w);
        }
    }
    m->n_decay = m->n_params;

    ADD("lnf.w", 1, C, 0, 0, 0, DM_INIT_ONE, &m->lnf_w);
    ADD("lnf.b", 1, C, 0, 0, 0, DM_INIT_ZERO, &m->lnf_b);
    for (int l = 0; l < m->L; l++) {
        dm_block *b = &m->blocks[l];
        snprintf(name, sizeof name, "h.%d.ln1.w", l);
        ADD(name, 1, C, 0, 0, 0, DM_INIT_ONE, &b->ln1_w);
        snprintf(name, sizeof name, "h.%d.ln1.b", l);
        ADD(name, 1, C, 0, 0, 0, DM_INIT_ZERO, &b->ln1_b);
        snprintf(name, sizeof name, "h.%d.attn.qkv.b", l);
        ADD(name, 1, 3 * C, 0, 0, 0, DM_INIT_ZERO, &b->qkv_b);
        snprintf(name, sizeof name, "h.%d.attn.proj.b", l);
        ADD(name, 1, C, 0, 0, 0, DM_INIT_ZERO, &b->attn_proj_b);
        snprintf(name, sizeof name, "h.%d.ln2.w", l);
        ADD(name, 1, C, 0, 0, 0, DM_INIT_ONE, &b->ln2_w);
        snprintf(name, sizeof name, "h.%d.ln2.b", l);
        ADD(name, 1, C, 0, 0, 0, DM_INIT_ZERO, &b->ln2_b);
        if (b->moe < 0) {
            snprintf(name, sizeof name, "h.%d.ffn.fc.b", l);
            ADD(name, 1, F, 0, 0, 0, DM_INIT_ZERO, &b->fc_b);
            snprintf(name, sizeof name, "h.%d.ffn.proj.b", l);
            ADD(name, 1, C, 0, 0, 0, DM_INIT_ZERO, &b->fc_proj_b);
        } else {
            dm_moe_layer *ml = &m->moes[b->moe];
            snprintf(name, sizeof name, "h.%d.router.b", l);
            ADD(name, 1, ml->width, 0, 0, 0, DM_INIT_ROUTER_BIAS, &ml->router_b);
            snprintf(name, sizeof name, "h.%d.experts.fc.b", l);
            ADD(name, 2, E, F, 0, 0, DM_INIT_ZERO, &ml->fc_b);
            snprintf(name, sizeof name, "h.%d.experts.proj.b", l);
            ADD(name, 2, E, C, 0, 0, DM_INIT_ZERO, &ml->proj_b);
        }
    }

    /* Philox counter word 0 is the flat offset, so the buffer must stay below 2^32 elements. */
    if (m->n_params >= 4294967296.0)
        return dm_error(DM_ERR_INVALID, "model: %zu parameters exceed the 2^32 limit of the "
                        "initialisation counter: reduce --d-model, --d-ff or --experts", m->n_params);
    return DM_OK;
}

/* ---- activation layout ---------------------------------------------------- */

/* Bump allocator over the activation buffer; offsets aligned to 64 elements (256 bytes),
 * which is at least the base-address alignment OpenCL devices require of sub-buffers. */
static size_t take(dm_model *m, size_t n)
{
    size_t off = m->acts_n;
    m->acts_n += (n + 63) & ~(size_t)63;
    return off;
}

static void layout_activations(dm_model *m)
{
    const size_t N = (size_t)m->max_tokens, C = m->C, F = m->F, V = m->V, E = m->E;
    const size_t B = (size_t)m->cfg.batch, T = m->T, NH = m->NH;

    m->acts_n = 0;
    m->tokens = take(m, N);
    m->targets = take(m, N);
    for (int l = 0; l <= m->L; l++)
        m->resid[l] = take(m, N * C);
    for (int l = 0; l < m->L; l++) {
        dm_block *b = &m->blocks[l];
        b->ln1 = take(m, N * C);
        b->ln1_mean = take(m, N);
        b->ln1_rstd = take(m, N);
        b->qkv = take(m, N * 3 * C);
        b->att = take(m, N * C);
        b->lse = take(m, B * NH * T);
        b->mid = take(m, N * C);
        b->ln2 = take(m, N * C);
        b->ln2_mean = take(m, N);
        b->ln2_rstd = take(m, N);
        if (b->moe < 0) {
            b->fc_pre = take(m, N * F);
            b->fc_act = take(m, N * F);
        } else {
            dm_moe_layer *ml = &m->moes[b->moe];
            ml->logits = take(m, N * (size_t)ml->width);
            ml->probs = take(m, N * E);
            ml->u = take(m, N * E);
            ml->log_g = take(m, N * E);
            ml->zt = take(m, N * E);
            ml->alpha = take(m, N * E);
            ml->mask = take(m, N * E);
            ml->w = take(m, N * E);
            ml->slot = take(m, N * E);
            ml->token_of_slot = take(m, N * E);
            ml->dispatch_ints = take(m, 3 * E + 1);
            ml->reg_stats = take(m, DM_REG_NSTATS);
            ml->bal_stats = take(m, DM_BAL_NSTATS);
            ml->fallbacks = take(m, 1);
            ml->y = take(m, N * C);
        }
    }
    m->lnf = take(m, N * C);
    m->lnf_mean = take(m, N);
    m->lnf_rstd = take(m, N);
    m->logits = take(m, N * V);
    m->probs = take(m, N * V);
    m->losses = take(m, N);
    m->scalar = take(m, 1);

    m->dres = take(m, N * C);
    m->dln = take(m, N * C);
    m->dqkv = take(m, N * 3 * C);
    m->datt = take(m, N * C);
    m->dfc = take(m, N * F);
    m->dfc_pre = take(m, N * F);
    m->drouter = take(m, N * 2 * E);
    m->dw = take(m, N * E);
}

/* ---- creation ------------------------------------------------------------- */

static dm_status alloc_buffer(dm_model *m, size_t n, dm_buffer **out, const char *purpose)
{
    dm_status st = m->be->ops->alloc(m->be->ctx, n ? n : 1, out);
    if (st) {
        *out = NULL;
        return dm_error(st, "model: cannot allocate the %s (%zu MiB) on backend %s: %s; reduce "
                        "--batch, --seq-len or the model size",
                        purpose, (n * 4) >> 20, m->be->name, m->be->desc->last_error(m->be->ctx));
    }
    return DM_OK;
}

dm_status dm_model_create(dm_backend *be, const dm_config *cfg, dm_model **out)
{
    *out = NULL;
    dm_status st = dm_config_validate(cfg);
    if (st)
        return st;

    dm_model *m = calloc(1, sizeof *m);
    if (!m)
        return dm_error(DM_ERR_NOMEM, "model: out of host memory");
    m->be = be;
    m->cfg = *cfg;
    m->C = cfg->d_model;
    m->F = cfg->d_ff;
    m->V = cfg->vocab;
    m->T = cfg->seq_len;
    m->NH = cfg->n_head;
    m->L = cfg->n_layer;
    m->E = cfg->n_expert;
    m->max_tokens = cfg->batch * cfg->seq_len;
    m->last_mode = -1;

    m->n_moe = dm_config_n_moe_layers(cfg);
    m->blocks = calloc((size_t)m->L, sizeof *m->blocks);
    m->resid = calloc((size_t)m->L + 1, sizeof *m->resid);
    m->moes = calloc((size_t)(m->n_moe ? m->n_moe : 1), sizeof *m->moes);
    m->stats = calloc((size_t)(m->n_moe ? m->n_moe : 1), sizeof *m->stats);
    m->host_losses = malloc((size_t)m->max_tokens * sizeof *m->host_losses);
    if (!m->blocks || !m->resid || !m->moes || !m->stats || !m->host_losses) {
        dm_model_free(m);
        return dm_error(DM_ERR_NOMEM, "model: out of host memory");
    }

    int mi = 0;
    for (int l = 0; l < m->L; l++) {
        m->blocks[l].moe = -1;
        if (!dm_config_is_moe_layer(cfg, l))
            continue;
        dm_moe_layer *ml = &m->moes[mi];
        ml->block = l;
        ml->n_expert = m->E;
        ml->width = cfg->router == DM_ROUTER_DIRMOE ? 2 * m->E : m->E;
        size_t nE = (size_t)m->max_tokens * m->E;
        ml->host_ints = calloc((size_t)3 * m->E + 1, sizeof *ml->host_ints);
        ml->host_mask = malloc(nE * sizeof *ml->host_mask);
        ml->host_w = malloc(nE * sizeof *ml->host_w);
        ml->host_probs = malloc(nE * sizeof *ml->host_probs);
        ml->host_logits = malloc(nE * 2 * sizeof *ml->host_logits);
        if (!ml->host_ints || !ml->host_mask || !ml->host_w || !ml->host_probs || !ml->host_logits) {
            dm_model_free(m);
            return dm_error(DM_ERR_NOMEM, "model: out of host memory for routing statistics");
        }
        m->blocks[l].moe = mi++;
    }

    if ((st = build_param_table(m)) != DM_OK) {
        dm_model_free(m);
        return st;
    }
    layout_activations(m);

    if ((st = alloc_buffer(m, m->n_params, &m->params, "parameters")) ||
        (st = alloc_buffer(m, m->n_params, &m->grads, "gradients")) ||
        (st = alloc_buffer(m, m->n_params, &m->adam_m, "AdamW first moments")) ||
        (st = alloc_buffer(m, m->n_params, &m->adam_v, "AdamW second moments")) ||
        (st = alloc_buffer(m, m->acts_n, &m->acts, "activations")) ||
        (st = dm_model_init_params(m))) {
        dm_model_free(m);
        return st;
    }

    dm_log(DM_LOG_INFO, "model", "%zu parameters (%zu in matrices), %d MoE layers, %zu MiB of activations",
           m->n_params, m->n_decay, m->n_moe, (m->acts_n * 4) >> 20);
    *out = m;
    return DM_OK;
}

void dm_model_free(dm_model *m)
{
    if (!m)
        return;
    const dm_backend_ops *ops = m->be->ops;
    void *ctx = m->be->ctx;
    dm_buffer *bufs[] = {m->params, m->grads, m->adam_m, m->adam_v, m->acts, m->gscratch};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i])
            ops->free(ctx, bufs[i]);
    for (int i = 0; i < m->n_moe; i++) {
        dm_moe_layer *ml = &m->moes[i];
        if (ml->group)
            ops->free(ctx, ml->group);
        free(ml->host_ints);
        free(ml->host_mask);
        free(ml->host_w);
        free(ml->host_probs);
        free(ml->host_logits);
        free(ml->fixed_u);
        free(ml->fixed_log_g);
    }
    free(m->moes);
    free(m->stats);
    free(m->blocks);
    free(m->resid);
    free(m->info);
    free(m->init);
    free(m->host_losses);
    free(m);
}

/* ---- initialisation ------------------------------------------------------- */

dm_status dm_model_init_params(dm_model *m)
{
    float *host = malloc(m->n_params * sizeof *host);
    if (!host)
        return dm_error(DM_ERR_NOMEM, "model: out of host memory for initialisation");

    const float std = 0.02f;
    const float proj_scale = (float)(1.0 / sqrt(2.0 * m->L));
    const float select_bias = (float)log(m->cfg.select_init / (1.0 - m->cfg.select_init));

    for (int i = 0; i < m->n_info; i++) {
        const dm_param_info *p = &m->info[i];
        float *dst = host + p->offset;
        switch (m->init[i]) {
        case DM_INIT_NORMAL:
        case DM_INIT_NORMAL_PROJ: {
            float scale = m->init[i] == DM_INIT_NORMAL_PROJ ? std * proj_scale : std;
            for (size_t j = 0; j < p->numel; j++) {
                /* Counter word 0 is the element's flat offset, so values do not depend on
                 * the order of the table or on the backend. */
                dm_philox_block blk = dm_philox_at(m->cfg.seed, (uint32_t)(p->offset + j), 0, 0,
                                                   DM_RNG_INIT, 0);
                dst[j] = scale * dm_normal_from_words(blk.w[0], blk.w[1]);
            }
            break;
        }
        case DM_INIT_ZERO:
            memset(dst, 0, p->numel * sizeof *dst);
            break;
        case DM_INIT_ONE:
            for (size_t j = 0; j < p->numel; j++)
                dst[j] = 1.0f;
            break;
        case DM_INIT_ROUTER_BIAS:
            memset(dst, 0, p->numel * sizeof *dst);
            if (m->cfg.router == DM_ROUTER_DIRMOE)
                for (int e = 0; e < m->E; e++)
                    dst[e] = select_bias;
            break;
        }
    }

    dm_backend *be = m->be;
    dm_status st = be->ops->upload(be->ctx, PARAM(m, 0), host, m->n_params);
    free(host);
    if (st)
        return dm_backend_fail(be, "upload", st);
    DM_TRY_OP(be, fill, GRAD(m, 0), 0u, m->n_params);
    DM_TRY_OP(be, fill, dm_t(m->adam_m, 0), 0u, m->n_params);
    DM_TRY_OP(be, fill, dm_t(m->adam_v, 0), 0u, m->n_params);
    return DM_OK;
}

/* ---- accessors ------------------------------------------------------------ */

const dm_config *dm_model_config(const dm_model *m) { return &m->cfg; }
dm_backend *dm_model_backend(const dm_model *m) { return m->be; }
size_t dm_model_n_params(const dm_model *m) { return m->n_params; }
int dm_model_param_count(const dm_model *m) { return m->n_info; }

const dm_param_info *dm_model_param_at(const dm_model *m, int i)
{
    return i >= 0 && i < m->n_info ? &m->info[i] : NULL;
}

const dm_param_info *dm_model_param_find(const dm_model *m, const char *name)
{
    for (int i = 0; i < m->n_info; i++)
        if (strcmp(m->info[i].name, name) == 0)
            return &m->info[i];
    return NULL;
}

dm_tensor dm_model_params_tensor(const dm_model *m) { return dm_t(m->params, 0); }
dm_tensor dm_model_grads_tensor(const dm_model *m) { return dm_t(m->grads, 0); }
dm_tensor dm_model_adam_m_tensor(const dm_model *m) { return dm_t(m->adam_m, 0); }
dm_tensor dm_model_adam_v_tensor(const dm_model *m) { return dm_t(m->adam_v, 0); }

dm_status dm_model_download_params(dm_model *m, float *host)
{
    DM_TRY_OP(m->be, download, host, PARAM(m, 0), m->n_params);
    return DM_OK;
}

dm_status dm_model_upload_params(dm_model *m, const float *host)
{
    DM_TRY_OP(m->be, upload, PARAM(m, 0), host, m->n_params);
    return DM_OK;
}

dm_status dm_model_download_grads(dm_model *m, float *host)
{
    DM_TRY_OP(m->be, download, host, GRAD(m, 0), m->n_params);
    return DM_OK;
}

/* ---- fixed noise ---------------------------------------------------------- */

static dm_moe_layer *find_moe(dm_model *m, int layer)
{
    if (layer < 0 || layer >= m->L || m->blocks[layer].moe < 0)
        return NULL;
    return &m->moes[m->blocks[layer].moe];
}

dm_status dm_model_set_fixed_noise(dm_model *m, int layer, const float *u, const float *log_g,
                                   int n_tokens)
{
    dm_moe_layer *ml = find_moe(m, layer);
    if (!ml || m->cfg.router != DM_ROUTER_DIRMOE)
        return dm_error(DM_ERR_INVALID, "model: block %d has no dirmoe router, so it draws no noise", layer);

    free(ml->fixed_u);
    free(ml->fixed_log_g);
    ml->fixed_u = ml->fixed_log_g = NULL;
    ml->n_fixed = 0;
    if (!u)
        return DM_OK;

    if (!log_g || n_tokens < 1 || n_tokens > m->max_tokens)
        return dm_error(DM_ERR_INVALID, "model: fixed noise needs u and log_g for 1 to %d tokens, got %d",
                        m->max_tokens, n_tokens);
    size_t n = (size_t)n_tokens * m->E;
    ml->fixed_u = malloc(n * sizeof(float));
    ml->fixed_log_g = malloc(n * sizeof(float));
    if (!ml->fixed_u || !ml->fixed_log_g) {
        free(ml->fixed_u);
        free(ml->fixed_log_g);
        ml->fixed_u = ml->fixed_log_g = NULL;
        return dm_error(DM_ERR_NOMEM, "model: out of host memory for fixed noise");
    }
    memcpy(ml->fixed_u, u, n * sizeof(float));
    memcpy(ml->fixed_log_g, log_g, n * sizeof(float));
    ml->n_fixed = n_tokens;
    return DM_OK;
}

dm_status dm_model_get_noise(dm_model *m, int layer, float *u, float *log_g, int n_tokens)
{
    dm_moe_layer *ml = find_moe(m, layer);
    if (!ml || m->cfg.router != DM_ROUTER_DIRMOE)
        return dm_error(DM_ERR_INVALID, "model: block %d has no dirmoe router, so it draws no noise", layer);
    if (m->last_mode != DM_PASS_TRAIN || n_tokens != ml->n_tokens)
        return dm_error(DM_ERR_INVALID, "model: no training forward of %d tokens to take noise from",
                        n_tokens);
    size_t n = (size_t)n_tokens * m->E;
    DM_TRY_OP(m->be, download, u, ACT(m, ml->u), n);
    DM_TRY_OP(m->be, download, log_g, ACT(m, ml->log_g), n);
    return DM_OK;
}

/* ---- FLOPs ---------------------------------------------------------------- */

double dm_flops_per_token(const dm_config *cfg, const double *active)
{
    const double C = cfg->d_model, F = cfg->d_ff, V = cfg->vocab, T = cfg->seq_len, E = cfg->n_expert;
    double params = V * C; /* tied LM head; the embedding lookups themselves are free */
    int mi = 0;

    for (int l = 0; l < cfg->n_layer; l++) {
        params += C * 3 * C + C * C; /* attention projections; biases and norms ignored */
        if (dm_config_is_moe_layer(cfg, l)) {
            double k = active ? active[mi] : dm_config_target_k(cfg);
            double width = cfg->router == DM_ROUTER_DIRMOE ? 2 * E : E;
            if (cfg->router == DM_ROUTER_DIRMOE && cfg->selection == DM_SELECTION_SOFT)
                k = E;
            params += C * width + k * 2 * C * F;
            mi++;
        } else {
            params += 2 * C * F;
        }
    }
    return 6.0 * params + 6.0 * cfg->n_layer * 2.0 * C * T;
}
