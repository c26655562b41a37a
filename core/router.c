/*
 * Host side of the routers: the DirMoE schedules (temperature, prior
 * concentration, exploration ramp), the Bernoulli prior p0, the learning-rate
 * schedule and the parameter blocks the routing ops take. Every scalar here
 * is computed in double and handed to the ops, so all backends see the same
 * values.
 */
#include "config.h"

#include <math.h>

#include "dm_math.h"
#include "model_internal.h"

static const double pi_d = 3.14159265358979323846;

/* Interpolates from a to b at progress p in [0, 1] with the configured shape. */
static double schedule_value(dm_schedule_shape shape, double a, double b, double p)
{
    switch (shape) {
    case DM_SCHEDULE_LINEAR:
        return a + (b - a) * p;
    case DM_SCHEDULE_COSINE:
        return b + (a - b) * 0.5 * (1.0 + cos(pi_d * p));
    case DM_SCHEDULE_EXP:
        /* Geometric interpolation; validation keeps both ends positive. */
        return a * pow(b / a, p);
    }
    return a;
}

void dm_router_coefs_at(const dm_config *cfg, int64_t step, dm_router_coefs *out)
{
    double p = cfg->steps > 0 ? (double)step / cfg->steps : 1.0;
    if (p < 0.0)
        p = 0.0;
    if (p > 1.0)
        p = 1.0;

    out->progress = p;
    out->tau = schedule_value(cfg->schedule, cfg->tau_start, cfg->tau_end, p);
    out->alpha0 = schedule_value(cfg->schedule, cfg->alpha0_start, cfg->alpha0_end, p);

    if (cfg->explore <= 0.0) {
        out->ramp = 1.0;
    } else {
        double r = (p - cfg->explore) / cfg->explore;
        out->ramp = r < 0.0 ? 0.0 : (r > 1.0 ? 1.0 : r);
    }

    /* dm_solve_p0 clamps p0 to [1e-6, 1 - 1e-6], so both logs are finite. */
    out->p0 = dm_solve_p0(cfg->n_expert, dm_config_target_k(cfg));
    out->log_p0 = log(out->p0);
    out->log_1mp0 = log1p(-out->p0);
}

double dm_lr_at(const dm_config *cfg, int64_t step)
{
    double peak = cfg->lr;
    double floor_lr = cfg->lr * cfg->lr_min_frac;

    if (step < cfg->warmup)
        return peak * (double)(step + 1) / (double)cfg->warmup;
    if (step >= cfg->steps)
        return floor_lr;

    double span = (double)(cfg->steps - cfg->warmup);
    double p = span > 0.0 ? (double)(step - cfg->warmup) / span : 1.0;
    return floor_lr + (peak - floor_lr) * 0.5 * (1.0 + cos(pi_d * p));
}

void dm_router_fill_dirmoe(const dm_config *cfg, int block, int n, int64_t step,
                           dm_dirmoe_params *dp)
{
    dm_router_coefs rc;
    dm_router_coefs_at(cfg, step, &rc);

    dp->n_tokens = n;
    dp->n_expert = cfg->n_expert;
    dp->k_max = dm_config_k_max(cfg);
    dp->selection = cfg->selection;
    dp->fixed_noise = 0;
    dp->tau = (float)rc.tau;
    dp->alpha_min = (float)cfg->alpha_min;
    dp->alpha_max = (float)cfg->alpha_max;
    dp->rng.seed = cfg->seed;
    dp->rng.layer = (uint32_t)block;
    dp->rng.step = (uint32_t)step;
    dp->rng.token_base = 0; /* one process: the local batch is the global batch */
}

void dm_router_fill_reg(const dm_config *cfg, int n, int64_t step, double mu,
                        dm_dirmoe_reg_params *rp)
{
    dm_router_coefs rc;
    dm_router_coefs_at(cfg, step, &rc);

    rp->n_tokens = n;
    rp->n_expert = cfg->n_expert;
    rp->kl_b_mode = cfg->kl_b;
    rp->alpha_min = (float)cfg->alpha_min;
    rp->alpha_max = (float)cfg->alpha_max;
    rp->log_p0 = rc.log_p0;
    rp->log_1mp0 = rc.log_1mp0;
    rp->alpha0 = rc.alpha0;
    rp->k_target = dm_config_target_k(cfg);
    /* The exploration ramp multiplies KL_B and both parts of the sparsity term, not KL_D. */
    rp->coef_kl_b = cfg->beta_b * rc.ramp;
    rp->coef_kl_d = cfg->beta_d;
    rp->coef_sq = cfg->lambda_s * rc.ramp;
    rp->coef_lin = (cfg->sparsity == DM_SPARSITY_ADAPTIVE ? mu : 0.0) * rc.ramp;
}

int dm_router_capacity(const dm_config *cfg, int n)
{
    if (cfg->capacity_factor <= 0.0)
        return 0;
    double c = ceil(cfg->capacity_factor * n * dm_config_target_k(cfg) / cfg->n_expert);
    if (c < 1.0)
        c = 1.0;
    if (c > n)
        c = n;
    return (int)c;
}
