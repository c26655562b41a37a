/* dirmoe eval: loss, perplexity, bits per byte and routing metrics of a checkpoint. */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cJSON.h>

#include "dirmoe/dirmoe.h"
#include "dirmoe/model.h"
#include "dirmoe/train.h"
#include "cli.h"
#include "evaluation.h"
#include "train_options.h"

#define CMD "eval"

typedef struct eval_options {
    const char *checkpoint;
    const char *data;
    const char *backend;
    int batches;            /* 0: the checkpoint's --eval-batches */
    int held_out;           /* evaluate only the held-out end of --data */
    int json;
} eval_options;

/* Reads the data paths of the run whose metrics.jsonl sits beside the checkpoint; 1 when readable. */
static int run_metrics_data(const char *checkpoint, char *data, char *val, size_t size)
{
    char metrics[1200];
    const char *slash = strrchr(checkpoint, '/');

    if (slash)
        snprintf(metrics, sizeof metrics, "%.*s/metrics.jsonl", (int)(slash - checkpoint), checkpoint);
    else
        snprintf(metrics, sizeof metrics, "metrics.jsonl");
    return dm_run_data_paths(metrics, data, val, size) && access(data, R_OK) == 0;
}

/*
 * Loads the data to evaluate on: all of --data (or its held-out end); without
 * --data the validation data of the run that wrote the checkpoint, else the
 * held-out end of the default corpus.
 */
static int load_eval_data(const eval_options *o, const dm_config *cfg, dm_data *data, const dm_dataset **ds)
{
    char path[1024] = "", val[1024];

    if (!o->data && run_metrics_data(o->checkpoint, path, val, sizeof path)) {
        if (val[0]) {
            if (dm_data_load(val, NULL, 0.0, cfg->seq_len, data) != DM_OK)
                return dm_cli_fail(CMD, "%s", dm_last_error());
            *ds = &data->train;
            return 0;
        }
    } else if (o->data && !o->held_out) {
        if (dm_data_load(o->data, NULL, 0.0, cfg->seq_len, data) != DM_OK)
            return dm_cli_fail(CMD, "%s", dm_last_error());
        *ds = &data->train;
        return 0;
    }
    if (o->data) {
        snprintf(path, sizeof path, "%s", o->data);
    } else if (path[0] == '\0' || access(path, R_OK) != 0) {
        if (dm_default_corpus_path(path, sizeof path))
            return dm_cli_fail(CMD, "no --data given and neither DIRMOE_DATA_DIR nor HOME is set: pass --data FILE");
        if (access(path, F_OK) != 0)
            return dm_cli_fail(CMD, "no --data given and the default corpus '%s' is missing: get it with "
                                    "'apt-get install bible-kjv && scripts/get_kjv.sh', or pass --data FILE",
                               path);
    }

    if (cfg->val_fraction <= 0.0)
        return dm_cli_fail(CMD, "the checkpoint was trained with --val-fraction 0, so '%s' has no held-out part: "
                                "pass --data FILE without --held-out",
                           path);
    if (dm_data_load(path, NULL, cfg->val_fraction, cfg->seq_len, data) != DM_OK)
        return dm_cli_fail(CMD, "%s", dm_last_error());
    *ds = &data->val;
    return 0;
}

static int run_eval(const eval_options *o)
{
    dm_config cfg;
    dm_data data;
    const dm_dataset *ds = NULL;
    dm_backend *be = NULL;
    dm_model *model = NULL;
    dm_train_state state;
    dm_eval_result res;
    int rc = 1;

    memset(&data, 0, sizeof data);
    if (dm_checkpoint_read_config(o->checkpoint, &cfg) != DM_OK)
        return dm_cli_fail(CMD, "cannot read the checkpoint: %s", dm_last_error());
    if (load_eval_data(o, &cfg, &data, &ds))
        goto done;

    if (dm_backend_open(o->backend, &be) != DM_OK) {
        dm_cli_fail(CMD, "%s", dm_last_error());
        goto done;
    }
    if (dm_model_create(be, &cfg, &model) != DM_OK) {
        dm_cli_fail(CMD, "%s", dm_last_error());
        goto done;
    }
    if (dm_checkpoint_load(o->checkpoint, model, &state) != DM_OK) {
        dm_cli_fail(CMD, "cannot load the checkpoint: %s", dm_last_error());
        goto done;
    }

    if (dm_eval_run(model, ds, o->batches ? o->batches : cfg.eval_batches, &res) != DM_OK) {
        dm_cli_fail(CMD, "evaluation failed: %s", dm_last_error());
        goto done;
    }

    if (o->json) {
        cJSON *row = dm_eval_to_json(&res, state.step);
        cJSON_AddStringToObject(row, "checkpoint", o->checkpoint);
        cJSON_AddStringToObject(row, "data", ds->path);
        rc = dm_jsonl_write(stdout, row);
        cJSON_Delete(row);
        if (rc)
            dm_cli_fail(CMD, "cannot write to standard output");
    } else {
        const char *part = ds == &data.val ? " (its held-out end)" : "";
        printf("checkpoint %s: step %lld, router %s, backend %s\ndata %s%s: %zu bytes evaluated from\n",
               o->checkpoint, (long long)state.step, dm_router_name(cfg.router), be->name, ds->path, part, ds->n);
        dm_eval_print(stdout, &res);
        rc = 0;
    }

done:
    if (model)
        dm_model_free(model);
    if (be)
        dm_backend_close(be);
    dm_data_free(&data);
    return rc;
}

int dm_cmd_eval(int argc, char **argv)
{
    eval_options o = {0};
    const dm_option opts[] = {
        {"checkpoint", DM_OPT_STRING, &o.checkpoint, "FILE", "checkpoint written by dirmoe train (required)", 0, 0,
         NULL},
        {"data", DM_OPT_STRING, &o.data, "FILE",
         "text to evaluate on, whole (default: the run's validation data, read from metrics.jsonl next to the checkpoint, else the held-out end of the default corpus)", 0, 0,
         NULL},
        {"held-out", DM_OPT_FLAG, &o.held_out, NULL,
         "evaluate only the last --val-fraction of --data, the part training held out", 0, 0, NULL},
        {"batches", DM_OPT_INT, &o.batches, "N",
         "batches of the checkpoint's --batch x --seq-len (0 = its --eval-batches)", 0, 1 << 20, NULL},
        {"backend", DM_OPT_STRING, &o.backend, "NAME", "backend plugin (default: $DIRMOE_BACKEND, else auto)", 0, 0,
         NULL},
        {"json", DM_OPT_FLAG, &o.json, NULL, "print one JSON row, as in metrics.jsonl, instead of text", 0, 0, NULL},
        {NULL, 0, NULL, NULL, NULL, 0, 0, NULL},
    };

    int rc = dm_cli_parse(CMD, opts, argc, argv, NULL, 0, NULL);
    if (rc == DM_CLI_HELP) {
        dm_options_usage(stdout, CMD, NULL,
                         "Evaluate a checkpoint with deterministic routing: loss, perplexity, bits per byte,\n"
                         "and per MoE layer the evaluation count of active experts, per-expert load share,\n"
                         "load coefficient of variation, dead experts, router entropy and I(X;E). The\n"
                         "sequences are drawn as in training's validation passes, so the held-out data of\n"
                         "training and the same --batches reproduce the \"eval\" row of metrics.jsonl at the\n"
                         "checkpoint's step.",
                         opts);
        return 0;
    }
    if (rc)
        return 1;
    if (!o.checkpoint)
        return dm_cli_fail(CMD, "missing --checkpoint FILE: give the checkpoint.safetensors of a run");
    return run_eval(&o);
}
