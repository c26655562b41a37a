/*
 * Whole-model conformance: a small DirMoE model trained for a few steps on
 * the reference and on the backend under test from the same parameters and
 * batches. The reference draws the router noise of each step, and the
 * backend under test receives it in fixed-noise mode, so both see identical
 * inputs and only arithmetic differs.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dirmoe/conformance.h"
#include "dirmoe/config.h"
#include "dirmoe/model.h"
#include "dirmoe/train.h"

/* Relative loss difference allowed at any step, and NMSE of the final parameters.
 * Estimates: AdamW divides by sqrt(v), so rounding differences of 1e-7 in the
 * gradients grow over the steps; measured differences between the reference and
 * the cpu backend were far below these bounds. */
#define LOSS_REL_BOUND 1e-4
#define PARAM_NMSE_BOUND 1e-6

static dm_status small_config(dm_config *cfg)
{
    static const char *const settings[][2] = {
        {"layers", "2"}, {"d_model", "32"}, {"heads", "2"}, {"d_ff", "64"}, {"seq_len", "16"},
        {"batch", "2"}, {"experts", "4"}, {"k", "2"}, {"router", "dirmoe"}, {"steps", "20"},
        {"warmup", "2"}, {"explore", "0.1"},
    };
    dm_status st;

    dm_config_defaults(cfg);
    for (size_t i = 0; i < sizeof settings / sizeof settings[0]; i++)
        if ((st = dm_config_set(cfg, settings[i][0], settings[i][1])) != DM_OK)
            return st;
    return dm_config_validate(cfg);
}

static double params_nmse(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)a[i] * a[i];
    }
    return den > 0 ? num / den : num;
}

/* Copies the reference's noise of every MoE block into the test model. */
static dm_status share_noise(dm_model *ref, dm_model *test, const dm_config *cfg, float *u, float *log_g)
{
    int n = cfg->batch * cfg->seq_len;
    for (int layer = 0; layer < cfg->n_layer; layer++) {
        if (!dm_config_is_moe_layer(cfg, layer))
            continue;
        dm_status st = dm_model_get_noise(ref, layer, u, log_g, n);
        if (st == DM_OK)
            st = dm_model_set_fixed_noise(test, layer, u, log_g, n);
        if (st)
            return st;
    }
    return DM_OK;
}

dm_status dm_conformance_model(dm_backend *reference, dm_backend *test, int steps, dm_conf_row *row)
{
    dm_config cfg;
    dm_model *ref_model = NULL, *test_model = NULL;
    dm_train_state ref_state, test_state;
    dm_batch batch = {0};
    float *ref_params = NULL, *test_params = NULL, *u = NULL, *log_g = NULL;
    dm_status st;

    memset(row, 0, sizeof *row);
    snprintf(row->op, sizeof row->op, "model");
    snprintf(row->case_name, sizeof row->case_name, "dirmoe 2x32 E=4 k=2, %d AdamW steps", steps);
    row->bound = PARAM_NMSE_BOUND;
    if ((st = small_config(&cfg)) != DM_OK)
        return st;
    if ((st = dm_model_create(reference, &cfg, &ref_model)) != DM_OK)
        return st;
    if ((st = dm_model_create(test, &cfg, &test_model)) != DM_OK) {
        row->result = DM_CONF_FAIL;
        snprintf(row->note, sizeof row->note, "model creation failed: %.280s", dm_last_error());
        st = DM_OK;
        goto done;
    }

    size_t n = dm_model_n_params(ref_model);
    size_t n_noise = (size_t)cfg.batch * cfg.seq_len * cfg.n_expert;
    ref_params = malloc(n * sizeof *ref_params);
    test_params = malloc(n * sizeof *test_params);
    u = malloc(n_noise * sizeof *u);
    log_g = malloc(n_noise * sizeof *log_g);
    if (!ref_params || !test_params || !u || !log_g || dm_batch_alloc(&batch, cfg.batch, cfg.seq_len) != DM_OK) {
        st = dm_error(DM_ERR_NOMEM, "conformance: out of memory for the model check");
        goto done;
    }

    /* Both start from the reference's parameters, so initialisation is not what is compared. */
    if ((st = dm_model_download_params(ref_model, ref_params)) != DM_OK ||
        (st = dm_model_upload_params(test_model, ref_params)) != DM_OK)
        goto done;
    dm_train_state_init(ref_model, &ref_state);
    dm_train_state_init(test_model, &test_state);

    double worst_loss = 0;
    for (int step = 0; step < steps; step++) {
        dm_step_stats ref_stats, test_stats;

        /* Batches from a fixed generator: tokens are bytes, targets the next token. */
        for (int i = 0; i < cfg.batch * cfg.seq_len; i++) {
            uint32_t h = (uint32_t)(i * 2654435761u + (uint32_t)step * 40503u);
            batch.inputs[i] = (int32_t)((h >> 13) % (uint32_t)cfg.vocab);
            batch.targets[i] = (int32_t)(((h * 7u) >> 11) % (uint32_t)cfg.vocab);
        }
        if ((st = dm_train_step(ref_model, &ref_state, &batch, NULL, &ref_stats)) != DM_OK)
            goto done;
        if ((st = share_noise(ref_model, test_model, &cfg, u, log_g)) != DM_OK)
            goto done;
        if ((st = dm_train_step(test_model, &test_state, &batch, NULL, &test_stats)) != DM_OK) {
            row->result = DM_CONF_FAIL;
            snprintf(row->note, sizeof row->note, "step %d failed: %.280s", step, dm_last_error());
            st = DM_OK;
            goto done;
        }
        double rel = fabs(ref_stats.loss - test_stats.loss) / fmax(fabs(ref_stats.loss), 1e-30);
        worst_loss = fmax(worst_loss, rel);
        if (!(rel <= LOSS_REL_BOUND)) {
            row->result = DM_CONF_FAIL;
            snprintf(row->note, sizeof row->note, "step %d: loss %.9g, reference %.9g (relative difference %.3g > %g)",
                     step, test_stats.loss, ref_stats.loss, rel, LOSS_REL_BOUND);
            goto done;
        }
    }

    if ((st = dm_model_download_params(ref_model, ref_params)) != DM_OK ||
        (st = dm_model_download_params(test_model, test_params)) != DM_OK)
        goto done;
    row->nmse = params_nmse(ref_params, test_params, n);
    if (!(row->nmse <= PARAM_NMSE_BOUND)) {
        row->result = DM_CONF_FAIL;
        snprintf(row->note, sizeof row->note, "final parameters: NMSE %.3g > %g", row->nmse, PARAM_NMSE_BOUND);
    } else {
        snprintf(row->note, sizeof row->note, "worst relative loss difference %.3g (bound %g)", worst_loss,
                 LOSS_REL_BOUND);
    }

done:
    free(ref_params);
    free(test_params);
    free(u);
    free(log_g);
    dm_batch_free(&batch);
    dm_model_free(test_model);
    dm_model_free(ref_model);
    return st;
}
