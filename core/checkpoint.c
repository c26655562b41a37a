/*
 * Checkpoints as safetensors files: every parameter by name, the AdamW
 * moments as adam_m.NAME and adam_v.NAME, and the training state and
 * configuration as JSON strings in __metadata__. The writer saves to a
 * temporary file and renames it, so a crash never leaves a half-written
 * checkpoint under the final name.
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "dirmoe/safetensors.h"
#include "model_internal.h"

#define CHECKPOINT_FORMAT "dirmoe-checkpoint-1"

/* Writes values as a JSON array with 17 significant digits, so doubles round-trip exactly. */
static char *json_double_array(const double *v, int n)
{
    size_t cap = 32 + (size_t)n * 28;
    char *s = malloc(cap);
    if (!s)
        return NULL;
    size_t len = 0;
    s[len++] = '[';
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(s + len, cap - len, "%s%.17g", i ? "," : "", v[i]);
    snprintf(s + len, cap - len, "]");
    return s;
}

static char *json_u64_array(const uint64_t *v, int n)
{
    size_t cap = 32 + (size_t)n * 24;
    char *s = malloc(cap);
    if (!s)
        return NULL;
    size_t len = 0;
    s[len++] = '[';
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(s + len, cap - len, "%s%" PRIu64, i ? "," : "", v[i]);
    snprintf(s + len, cap - len, "]");
    return s;
}

static dm_status add_tensors(dm_st_writer *w, const dm_model *m, const char *prefix, const float *host)
{
    char name[96];
    for (int i = 0; i < m->n_info; i++) {
        const dm_param_info *p = &m->info[i];
        int64_t shape[3] = {p->shape[0], p->shape[1], p->shape[2]};
        snprintf(name, sizeof name, "%s%s", prefix, p->name);
        dm_status st = dm_st_writer_add(w, name, DM_ST_F32, p->ndim, shape, host + p->offset);
        if (st)
            return st;
    }
    return DM_OK;
}

dm_status dm_checkpoint_save(const char *path, dm_model *m, const dm_train_state *state)
{
    dm_status st = DM_OK;
    dm_st_writer *w = NULL;
    char *cfg_json = NULL, *mu_json = NULL, *fb_json = NULL;
    float *host = malloc(3 * m->n_params * sizeof *host);
    if (!host)
        return dm_error(DM_ERR_NOMEM, "checkpoint %s: out of host memory for %zu parameters", path,
                        m->n_params);
    float *host_m = host + m->n_params, *host_v = host + 2 * m->n_params;

    dm_backend *be = m->be;
    if ((st = be->ops->download(be->ctx, host, PARAM(m, 0), m->n_params)) ||
        (st = be->ops->download(be->ctx, host_m, dm_t(m->adam_m, 0), m->n_params)) ||
        (st = be->ops->download(be->ctx, host_v, dm_t(m->adam_v, 0), m->n_params))) {
        free(host);
        return dm_backend_fail(be, "download", st);
    }

    char num[32];
    cfg_json = dm_config_to_json_string(&m->cfg);
    mu_json = json_double_array(state->mu, m->L);
    fb_json = json_u64_array(state->gamma_fallbacks, m->L);
    if (!cfg_json || !mu_json || !fb_json) {
        st = dm_error(DM_ERR_NOMEM, "checkpoint %s: out of host memory", path);
        goto done;
    }

    if ((st = dm_st_writer_new(&w)) ||
        (st = add_tensors(w, m, "", host)) ||
        (st = add_tensors(w, m, "adam_m.", host_m)) ||
        (st = add_tensors(w, m, "adam_v.", host_v)) ||
        (st = dm_st_writer_set_metadata(w, "format", CHECKPOINT_FORMAT)) ||
        (st = dm_st_writer_set_metadata(w, "config", cfg_json)) ||
        (st = dm_st_writer_set_metadata(w, "mu", mu_json)) ||
        (st = dm_st_writer_set_metadata(w, "gamma_fallbacks", fb_json)))
        goto done;
    snprintf(num, sizeof num, "%" PRId64, state->step);
    if ((st = dm_st_writer_set_metadata(w, "step", num)))
        goto done;
    snprintf(num, sizeof num, "%" PRIu64, state->seed);
    if ((st = dm_st_writer_set_metadata(w, "seed", num)))
        goto done;
    st = dm_st_writer_save(w, path);

done:
    dm_st_writer_free(w);
    free(cfg_json);
    free(mu_json);
    free(fb_json);
    free(host);
    return st;
}

/* Opens a checkpoint and parses its configuration. */
static dm_status open_checkpoint(const char *path, dm_st_file **file, dm_config *cfg)
{
    dm_status st = dm_st_open(path, file);
    if (st)
        return st;

    const char *format = dm_st_metadata(*file, "format");
    const char *cfg_json = dm_st_metadata(*file, "config");
    if (!format || strcmp(format, CHECKPOINT_FORMAT) != 0 || !cfg_json) {
        dm_st_close(*file);
        *file = NULL;
        return dm_error(DM_ERR_FORMAT, "%s is a safetensors file but not a dirmoe checkpoint (format %s, "
                        "expected %s)", path, format ? format : "missing", CHECKPOINT_FORMAT);
    }
    st = dm_config_from_json_string(cfg_json, cfg);
    if (st) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", dm_last_error());
        dm_st_close(*file);
        *file = NULL;
        return dm_error(st, "checkpoint %s: %s", path, msg);
    }
    return DM_OK;
}

dm_status dm_checkpoint_read_config(const char *path, dm_config *out)
{
    dm_st_file *file = NULL;
    dm_status st = open_checkpoint(path, &file, out);
    dm_st_close(file);
    return st;
}

/* Reads every named tensor with prefix into host (flat layout), checking dtype and shape. */
static dm_status read_tensors(const char *path, const dm_st_file *file, const dm_model *m,
                              const char *prefix, float *host)
{
    char name[96];
    for (int i = 0; i < m->n_info; i++) {
        const dm_param_info *p = &m->info[i];
        snprintf(name, sizeof name, "%s%s", prefix, p->name);
        const dm_st_tensor *t = dm_st_find(file, name);
        if (!t)
            return dm_error(DM_ERR_FORMAT, "checkpoint %s has no tensor %s: the file is incomplete or was "
                            "written by another model", path, name);
        int same = t->dtype == DM_ST_F32 && t->ndim == p->ndim;
        for (int d = 0; same && d < p->ndim; d++)
            same = t->shape[d] == p->shape[d];
        if (!same)
            return dm_error(DM_ERR_FORMAT, "checkpoint %s: tensor %s is %s with %d dimensions, expected F32 "
                            "of shape (%d, %d, %d) up to %d dimensions", path, name,
                            dm_st_dtype_name(t->dtype), t->ndim, p->shape[0], p->shape[1], p->shape[2],
                            p->ndim);
        dm_status st = dm_st_read(file, t, DM_ST_F32, host + p->offset);
        if (st)
            return st;
    }
    return DM_OK;
}

/* Parses a JSON array of n numbers into doubles (exact for %.17g text). */
static int parse_double_array(const char *text, double *out, int n)
{
    cJSON *a = text ? cJSON_Parse(text) : NULL;
    int ok = cJSON_IsArray(a) && cJSON_GetArraySize(a) == n;
    for (int i = 0; ok && i < n; i++) {
        cJSON *item = cJSON_GetArrayItem(a, i);
        ok = cJSON_IsNumber(item);
        if (ok)
            out[i] = item->valuedouble;
    }
    cJSON_Delete(a);
    return ok;
}

static int parse_u64_array(const char *text, uint64_t *out, int n)
{
    cJSON *a = text ? cJSON_Parse(text) : NULL;
    int ok = cJSON_IsArray(a) && cJSON_GetArraySize(a) == n;
    for (int i = 0; ok && i < n; i++) {
        cJSON *item = cJSON_GetArrayItem(a, i);
        ok = cJSON_IsNumber(item) && item->valuedouble >= 0;
        if (ok)
            out[i] = (uint64_t)item->valuedouble;
    }
    cJSON_Delete(a);
    return ok;
}

static dm_status read_state(const char *path, const dm_st_file *file, const dm_model *m,
                            dm_train_state *state)
{
    const char *step = dm_st_metadata(file, "step");
    const char *seed = dm_st_metadata(file, "seed");
    char *end;

    memset(state, 0, sizeof *state);
    if (step) {
        state->step = strtoll(step, &end, 10);
        if (*end != '\0' || end == step)
            step = NULL;
    }
    if (!step || state->step < 0)
        return dm_error(DM_ERR_FORMAT, "checkpoint %s: metadata \"step\" is missing or not an integer", path);
    if (seed) {
        state->seed = strtoull(seed, &end, 10);
        if (*end != '\0' || end == seed)
            seed = NULL;
    }
    if (!seed)
        return dm_error(DM_ERR_FORMAT, "checkpoint %s: metadata \"seed\" is missing or not an integer", path);
    if (!parse_double_array(dm_st_metadata(file, "mu"), state->mu, m->L))
        return dm_error(DM_ERR_FORMAT, "checkpoint %s: metadata \"mu\" is not an array of %d numbers", path,
                        m->L);
    if (!parse_u64_array(dm_st_metadata(file, "gamma_fallbacks"), state->gamma_fallbacks, m->L))
        return dm_error(DM_ERR_FORMAT, "checkpoint %s: metadata \"gamma_fallbacks\" is not an array of %d "
                        "counts", path, m->L);
    if (state->seed != m->cfg.seed)
        return dm_error(DM_ERR_FORMAT, "checkpoint %s: metadata seed %s differs from its configuration's "
                        "seed", path, seed);
    return DM_OK;
}

dm_status dm_checkpoint_load(const char *path, dm_model *m, dm_train_state *state)
{
    dm_st_file *file = NULL;
    dm_config saved;
    dm_status st = open_checkpoint(path, &file, &saved);
    if (st)
        return st;

    char name[96], va[96], vb[96];
    if (dm_config_diff(&saved, &m->cfg, 0, name, va, vb, sizeof name)) {
        dm_st_close(file);
        return dm_error(DM_ERR_INVALID, "checkpoint %s was written with --%s %s but this run has --%s %s: "
                        "use the checkpoint's value or start a new run", path, name, va, name, vb);
    }

    dm_train_state loaded;
    float *host = malloc((state ? 3 : 1) * m->n_params * sizeof *host);
    if (!host) {
        dm_st_close(file);
        return dm_error(DM_ERR_NOMEM, "checkpoint %s: out of host memory for %zu parameters", path,
                        m->n_params);
    }
    if ((st = read_tensors(path, file, m, "", host)) != DM_OK ||
        (state && (st = read_tensors(path, file, m, "adam_m.", host + m->n_params)) != DM_OK) ||
        (state && (st = read_tensors(path, file, m, "adam_v.", host + 2 * m->n_params)) != DM_OK) ||
        (state && (st = read_state(path, file, m, &loaded)) != DM_OK)) {
        free(host);
        dm_st_close(file);
        return st;
    }
    dm_st_close(file);

    dm_backend *be = m->be;
    if ((st = be->ops->upload(be->ctx, PARAM(m, 0), host, m->n_params)) ||
        (state && (st = be->ops->upload(be->ctx, dm_t(m->adam_m, 0), host + m->n_params, m->n_params))) ||
        (state && (st = be->ops->upload(be->ctx, dm_t(m->adam_v, 0), host + 2 * m->n_params, m->n_params)))) {
        free(host);
        return dm_backend_fail(be, "upload", st);
    }
    free(host);
    if (state)
        *state = loaded;
    return DM_OK;
}
