/* The option table of `dirmoe train` and its checks. */
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "dirmoe/model.h"
#include "train_options.h"

#define INT_LIMIT 2147483647.0

static const char *progress_names[] = {"auto", "always", "never"};

void dm_train_cli_init(dm_train_cli *cli)
{
    memset(cli, 0, sizeof *cli);
    dm_config_defaults(&cli->cfg);
    cli->out = "dirmoe-run";
    cli->progress_mode = "auto";
    dm_train_cli_sync(cli);

    dm_config *c = &cli->cfg;
    int n = 0;
#define OPT(name, type, target, metavar, help, lo, hi, choices) \
    cli->opts[n++] = (dm_option){name, type, target, metavar, help, lo, hi, choices}

    /* data and output */
    OPT("data", DM_OPT_STRING, &cli->data, "FILE",
        "training text, read as bytes (default: $DIRMOE_DATA_DIR/kjv.txt, else ~/.local/share/dirmoe/kjv.txt)",
        0, 0, NULL);
    OPT("val", DM_OPT_STRING, &cli->val, "FILE",
        "validation text (default: the last --val-fraction of --data)", 0, 0, NULL);
    OPT("val-fraction", DM_OPT_DOUBLE, &c->val_fraction, "X",
        "share of --data held out at its end for validation when --val is absent", 0, 0.5, NULL);
    OPT("out", DM_OPT_STRING, &cli->out, "DIR",
        "output directory: metrics.jsonl and checkpoint.safetensors", 0, 0, NULL);
    OPT("backend", DM_OPT_STRING, &cli->backend, "NAME",
        "backend plugin: reference, cpu, opencl, ... (default: $DIRMOE_BACKEND, else auto)", 0, 0, NULL);
    OPT("resume", DM_OPT_FLAG, &cli->resume, NULL,
        "continue the run in --out from its checkpoint; options not given are taken from it", 0, 0, NULL);
    OPT("stop-after", DM_OPT_INT, &cli->stop_after, "N",
        "save a checkpoint and stop after step N, as an interrupt would (0 = off)", 0, INT_LIMIT, NULL);
    OPT("progress", DM_OPT_CHOICE, &cli->progress_mode, "WHEN",
        "live progress line: auto (on a terminal), always, never", 0, 0, "auto|always|never");

    /* model */
    OPT("layers", DM_OPT_INT, &c->n_layer, "N", "transformer blocks", 1, DM_MAX_LAYERS, NULL);
    OPT("d-model", DM_OPT_INT, &c->d_model, "N", "width of the residual stream, in channels", 1, 65536, NULL);
    OPT("heads", DM_OPT_INT, &c->n_head, "N", "attention heads; must divide --d-model", 1, 65536, NULL);
    OPT("d-ff", DM_OPT_INT, &c->d_ff, "N", "hidden width of each expert FFN and of dense FFNs", 1, 1 << 20, NULL);
    OPT("seq-len", DM_OPT_INT, &c->seq_len, "N", "tokens (bytes) per training sequence", 2, 1 << 20, NULL);

    /* mixture of experts */
    OPT("router", DM_OPT_CHOICE, &cli->router, "KIND",
        "router: dirmoe, topk, switch (top-1) or dense (no MoE)", 0, 0, "dirmoe|topk|switch|dense");
    OPT("experts", DM_OPT_INT, &c->n_expert, "N", "experts per MoE layer", 1, DM_MAX_EXPERTS, NULL);
    OPT("k", DM_OPT_DOUBLE, &c->k, "K",
        "target active experts per token; fractional for dirmoe, an integer for topk, ignored by switch",
        1, DM_MAX_EXPERTS, NULL);
    OPT("k-max", DM_OPT_INT, &c->k_max, "N", "dirmoe: at most N experts per token (0 = --experts)", 0,
        DM_MAX_EXPERTS, NULL);
    OPT("moe-every", DM_OPT_INT, &c->moe_every, "N",
        "every N-th block has an MoE FFN (blocks N-1, 2N-1, ...), the others a dense FFN", 1, DM_MAX_LAYERS, NULL);
    OPT("aux-loss", DM_OPT_DOUBLE, &c->aux_loss, "X",
        "coefficient of the Switch load-balancing loss (topk, switch)", 0, 100, NULL);
    OPT("z-loss", DM_OPT_DOUBLE, &c->z_loss, "X", "coefficient of the router z-loss", 0, 100, NULL);
    OPT("capacity-factor", DM_OPT_DOUBLE, &c->capacity_factor, "X",
        "expert capacity ceil(X N k / E) slots for N tokens; later assignments are dropped (0 = dropless)",
        0, 1000, NULL);

    /* DirMoE */
    OPT("beta-b", DM_OPT_DOUBLE, &c->beta_b, "X", "dirmoe: weight of the Bernoulli KL to the prior p0", 0, 1e6, NULL);
    OPT("beta-d", DM_OPT_DOUBLE, &c->beta_d, "X", "dirmoe: weight of the Dirichlet KL to Dirichlet(alpha0)", 0,
        1e6, NULL);
    OPT("lambda-s", DM_OPT_DOUBLE, &c->lambda_s, "X", "dirmoe: weight of the sparsity term (Kbar - k)^2", 0, 1e6,
        NULL);
    OPT("sparsity", DM_OPT_CHOICE, &cli->sparsity, "MODE",
        "dirmoe: fixed (quadratic term only) or adaptive (plus a dual variable mu updated every step)", 0, 0,
        "fixed|adaptive");
    OPT("dual-step", DM_OPT_DOUBLE, &c->dual_step, "X", "dirmoe: step eta of mu += eta (Kbar - k)", 0, 100, NULL);
    OPT("tau", DM_OPT_RANGE, cli->tau, "START:END",
        "dirmoe: Gumbel-Sigmoid temperature over training, or one value for both", 1e-3, 100, NULL);
    OPT("alpha0", DM_OPT_RANGE, cli->alpha0, "START:END",
        "dirmoe: concentration of the Dirichlet prior over training, or one value for both", 1e-3, 1e4, NULL);
    OPT("schedule", DM_OPT_CHOICE, &cli->schedule, "SHAPE",
        "dirmoe: shape of the tau and alpha0 schedules: linear, cosine or exp (geometric)", 0, 0,
        "linear|cosine|exp");
    OPT("explore", DM_OPT_DOUBLE, &c->explore, "FRACTION",
        "dirmoe: fraction of training without the sparsity term and KL_B; they ramp in over the next FRACTION",
        0, 0.5, NULL);
    OPT("kl-b", DM_OPT_CHOICE, &cli->kl_b, "FORM",
        "dirmoe: Bernoulli KL on the batch-mean pi (batch) or per token (token)", 0, 0, "batch|token");
    OPT("selection", DM_OPT_CHOICE, &cli->selection, "MODE",
        "dirmoe: hard (Bernoulli mask, straight-through) or soft (relaxed gate, all experts computed)", 0, 0,
        "hard|soft");
    OPT("alpha-min", DM_OPT_DOUBLE, &c->alpha_min, "X",
        "dirmoe: lower bound added to softplus for the concentrations alpha", 1e-3, 10, NULL);
    OPT("alpha-max", DM_OPT_DOUBLE, &c->alpha_max, "X", "dirmoe: upper clamp of the concentrations alpha", 1, 1e4,
        NULL);
    OPT("select-init", DM_OPT_DOUBLE, &c->select_init, "P",
        "dirmoe: initial selection probability pi of every expert (0.5 explores; the prior rate p0, "
        "0.2354 for --k 2 of 8 experts, starts at the target count)",
        1e-6, 1 - 1e-6, NULL);

    /* training */
    OPT("batch", DM_OPT_INT, &c->batch, "N", "sequences per step", 1, 1 << 20, NULL);
    OPT("steps", DM_OPT_INT, &c->steps, "N",
        "optimiser steps of the whole run; the learning-rate and router schedules span them", 1, INT_LIMIT, NULL);
    OPT("lr", DM_OPT_DOUBLE, &c->lr, "X", "peak learning rate", 1e-12, 10, NULL);
    OPT("lr-min-frac", DM_OPT_DOUBLE, &c->lr_min_frac, "X", "the cosine decay ends at X times --lr", 0, 1, NULL);
    OPT("warmup", DM_OPT_INT, &c->warmup, "N", "linear learning-rate warm-up, in steps (may exceed --steps)", 0, INT_LIMIT, NULL);
    OPT("weight-decay", DM_OPT_DOUBLE, &c->weight_decay, "X",
        "AdamW decoupled weight decay on matrices (none on biases and layer norms)", 0, 10, NULL);
    OPT("beta1", DM_OPT_DOUBLE, &c->beta1, "X", "AdamW first-moment decay", 0, 0.999999, NULL);
    OPT("beta2", DM_OPT_DOUBLE, &c->beta2, "X", "AdamW second-moment decay", 0, 0.999999, NULL);
    OPT("adam-eps", DM_OPT_DOUBLE, &c->adam_eps, "X", "AdamW epsilon", 1e-30, 1, NULL);
    OPT("clip", DM_OPT_DOUBLE, &c->clip, "X", "clip the global gradient norm to X (0 = off)", 0, 1e6, NULL);
    OPT("seed", DM_OPT_LONG, &cli->seed, "N",
        "run seed: the Philox key for initialisation, data order and router noise", 0, 9.2e18, NULL);

    /* evaluation and output */
    OPT("eval-every", DM_OPT_INT, &c->eval_every, "N", "steps between validation passes (0 = only at the end)", 0,
        INT_LIMIT, NULL);
    OPT("eval-batches", DM_OPT_INT, &c->eval_batches, "N", "batches per validation pass", 1, 1 << 20, NULL);
    OPT("log-every", DM_OPT_INT, &c->log_every, "N", "steps between metrics rows and log lines", 1, INT_LIMIT, NULL);
    OPT("save-every", DM_OPT_INT, &c->save_every, "N", "steps between checkpoints (0 = only at the end)", 0,
        INT_LIMIT, NULL);

#undef OPT
    cli->opts[n] = (dm_option){NULL, 0, NULL, NULL, NULL, 0, 0, NULL};
}

/* Copies the config's value of `name` as text into buf (one of cli->text). */
static const char *config_text(const dm_config *cfg, const char *name, char *buf, size_t len)
{
    if (dm_config_get(cfg, name, buf, len) != DM_OK)
        buf[0] = '\0';
    return buf;
}

void dm_train_cli_sync(dm_train_cli *cli)
{
    const dm_config *c = &cli->cfg;

    cli->router = config_text(c, "router", cli->text[0], sizeof cli->text[0]);
    cli->sparsity = config_text(c, "sparsity", cli->text[1], sizeof cli->text[1]);
    cli->schedule = config_text(c, "schedule", cli->text[2], sizeof cli->text[2]);
    cli->kl_b = config_text(c, "kl-b", cli->text[3], sizeof cli->text[3]);
    cli->selection = config_text(c, "selection", cli->text[4], sizeof cli->text[4]);
    cli->tau[0] = c->tau_start;
    cli->tau[1] = c->tau_end;
    cli->alpha0[0] = c->alpha0_start;
    cli->alpha0[1] = c->alpha0_end;
    cli->seed = (long long)c->seed;
}

/* Copies the parsed-as-text values into cfg through the library's own parser. */
static int apply_text_values(dm_train_cli *cli)
{
    const char *names[] = {"router", "sparsity", "schedule", "kl-b", "selection"};
    const char *values[] = {cli->router, cli->sparsity, cli->schedule, cli->kl_b, cli->selection};

    for (int i = 0; i < 5; i++)
        if (dm_config_set(&cli->cfg, names[i], values[i]) != DM_OK)
            return dm_cli_fail("train", "%s", dm_last_error());

    cli->cfg.tau_start = cli->tau[0];
    cli->cfg.tau_end = cli->tau[1];
    cli->cfg.alpha0_start = cli->alpha0[0];
    cli->cfg.alpha0_end = cli->alpha0[1];
    cli->cfg.seed = (uint64_t)cli->seed;

    for (int i = 0; i < 3; i++)
        if (strcmp(cli->progress_mode, progress_names[i]) == 0)
            cli->progress = i;
    return 0;
}

int dm_train_cli_check(const dm_train_cli *cli)
{
    const dm_config *c = &cli->cfg;
    const int moe = c->router != DM_ROUTER_DENSE;
    /* switch always keeps one expert and dense none, so --k matters to dirmoe and topk only */
    const int uses_k = c->router == DM_ROUTER_DIRMOE || c->router == DM_ROUTER_TOPK;

    if (c->d_model % c->n_head != 0)
        return dm_cli_fail("train", "invalid value %d for --heads: it must divide --d-model %d", c->n_head,
                           c->d_model);
    if (uses_k && c->k > c->n_expert)
        return dm_cli_fail("train", "invalid value %g for --k: it exceeds --experts %d; lower --k or add experts",
                           c->k, c->n_expert);
    if (c->router == DM_ROUTER_TOPK && c->k != floor(c->k))
        return dm_cli_fail("train", "invalid value %g for --k: topk keeps a whole number of experts; use an integer",
                           c->k);
    if (moe && c->k_max > c->n_expert)
        return dm_cli_fail("train", "invalid value %d for --k-max: it exceeds --experts %d", c->k_max, c->n_expert);
    if (moe && c->router == DM_ROUTER_DIRMOE && c->k_max != 0 && c->k > c->k_max)
        return dm_cli_fail("train", "invalid value %g for --k: it exceeds --k-max %d", c->k, c->k_max);
    if (c->alpha_min >= c->alpha_max)
        return dm_cli_fail("train", "invalid value %g for --alpha-min: it must be below --alpha-max %g", c->alpha_min,
                           c->alpha_max);
    if (c->moe_every > c->n_layer && moe)
        return dm_cli_fail("train", "invalid value %d for --moe-every: with --layers %d no block would be an MoE "
                                    "layer; use --router dense for a dense model",
                           c->moe_every, c->n_layer);
    if (cli->stop_after > c->steps)
        return dm_cli_fail("train", "invalid value %d for --stop-after: it exceeds --steps %d", cli->stop_after,
                           c->steps);

    /* The library's own check catches whatever the table cannot express. */
    if (dm_config_validate(c) != DM_OK)
        return dm_cli_fail("train", "%s", dm_last_error());
    return 0;
}

int dm_train_cli_parse(dm_train_cli *cli, int argc, char **argv)
{
    int rc = dm_cli_parse("train", cli->opts, argc, argv, NULL, 0, NULL);

    if (rc == DM_CLI_HELP) {
        dm_options_usage(stdout, "train", NULL,
                         "Train a byte-level Mixture-of-Experts language model. Writes OUT/metrics.jsonl\n"
                         "(first row: the configuration; then one row per --log-every steps and one per\n"
                         "validation pass) and OUT/checkpoint.safetensors (every --save-every steps, at the\n"
                         "end, and on SIGINT or SIGTERM). Without --data it reads the King James Bible from\n"
                         "$DIRMOE_DATA_DIR/kjv.txt (default ~/.local/share/dirmoe/kjv.txt); get it with\n"
                         "'apt-get install bible-kjv' and scripts/get_kjv.sh.",
                         cli->opts);
        return DM_CLI_HELP;
    }
    if (rc != DM_CLI_OK)
        return DM_CLI_ERROR;
    if (apply_text_values(cli) || dm_train_cli_check(cli))
        return DM_CLI_ERROR;
    return DM_CLI_OK;
}

/* Formats an option's current value, which is its default before parsing. */
static void format_value(const dm_option *o, char *buf, size_t len)
{
    switch (o->type) {
    case DM_OPT_INT:
        snprintf(buf, len, "%d", *(const int *)o->target);
        break;
    case DM_OPT_LONG:
        snprintf(buf, len, "%lld", *(const long long *)o->target);
        break;
    case DM_OPT_DOUBLE:
        snprintf(buf, len, "%g", *(const double *)o->target);
        break;
    case DM_OPT_RANGE:
        snprintf(buf, len, "%g:%g", ((const double *)o->target)[0], ((const double *)o->target)[1]);
        break;
    case DM_OPT_STRING:
    case DM_OPT_CHOICE: {
        const char *s = *(const char *const *)o->target;
        snprintf(buf, len, "%s", s ? s : "");
        break;
    }
    case DM_OPT_FLAG:
        snprintf(buf, len, "%s", *(const int *)o->target ? "on" : "off");
        break;
    }
}

void dm_options_usage(FILE *out, const char *cmd, const char *args, const char *summary, const dm_option *opts)
{
    fprintf(out, "usage: dirmoe %s [options]%s%s\n\n%s\n\noptions (default in brackets):\n", cmd, args ? " " : "",
            args ? args : "", summary);
    for (const dm_option *o = opts; o->name; o++) {
        char left[64], value[64];
        snprintf(left, sizeof left, "--%s%s%s", o->name, o->metavar ? " " : "", o->metavar ? o->metavar : "");
        format_value(o, value, sizeof value);
        fprintf(out, "  %-24s %s", left, o->help);
        if (value[0] && o->type != DM_OPT_FLAG)
            fprintf(out, " [%s]", value);
        fputc('\n', out);
    }
    fprintf(out, "  %-24s %s\n", "--config FILE", "read options from FILE ('name = value' lines); the command line wins");
    fprintf(out, "  %-24s %s\n", "--help", "show this help");
}

int dm_default_corpus_path(char *buf, size_t len)
{
    const char *dir = getenv("DIRMOE_DATA_DIR");
    const char *home = getenv("HOME");

    if (dir && *dir)
        snprintf(buf, len, "%s/kjv.txt", dir);
    else if (home && *home)
        snprintf(buf, len, "%s/.local/share/dirmoe/kjv.txt", home);
    else
        return 1;
    return 0;
}

int dm_run_data_paths(const char *metrics_path, char *data, char *val, size_t size)
{
    FILE *f = fopen(metrics_path, "r");
    char line[65536];
    int found = 0;

    if (!f)
        return 0;
    if (fgets(line, sizeof line, f)) {
        cJSON *row = cJSON_Parse(line);
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(row, "type");
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(row, "data");
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(row, "val");
        if (cJSON_IsString(type) && strcmp(type->valuestring, "config") == 0 && cJSON_IsString(d)) {
            snprintf(data, size, "%s", d->valuestring);
            val[0] = '\0';
            /* A val path equal to the data path means the run split its data. */
            if (cJSON_IsString(v) && strcmp(v->valuestring, d->valuestring) != 0)
                snprintf(val, size, "%s", v->valuestring);
            found = 1;
        }
        cJSON_Delete(row);
    }
    fclose(f);
    return found;
}
