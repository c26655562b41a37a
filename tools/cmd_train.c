/* dirmoe train: the training loop with progress, metrics rows, checkpoints and clean stops. */
#define _POSIX_C_SOURCE 200809L /* getline, sigaction, clock_gettime */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>

#include "dirmoe/dirmoe.h"
#include "dirmoe/metrics.h"
#include "dirmoe/model.h"
#include "dirmoe/train.h"
#include "cli.h"
#include "evaluation.h"
#include "train_options.h"

#define CMD "train"

/* Set by the SIGINT / SIGTERM handler; the loop saves a checkpoint and stops. */
static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig)
{
    stop_signal = sig;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Sums over the steps of one log interval. */
typedef struct interval_sums {
    int steps;
    double seconds;                       /* time spent in training steps */
    double loss, ce, aux, grad_norm;
    double active[DM_MAX_LAYERS], kbar[DM_MAX_LAYERS];
    double kl_b[DM_MAX_LAYERS], kl_d[DM_MAX_LAYERS], balance[DM_MAX_LAYERS], zloss[DM_MAX_LAYERS];
    int64_t dropped[DM_MAX_LAYERS];
    uint64_t demand[DM_MAX_LAYERS][DM_MAX_EXPERTS];
} interval_sums;

/* Everything one `dirmoe train` invocation holds. */
typedef struct train_run {
    dm_train_cli cli;
    char data_path[1024];
    char val_path[1024];                  /* --val of the run being resumed, when not given again */
    char checkpoint_path[1200];
    char metrics_path[1200];
    dm_data data;
    dm_backend *be;
    dm_model *model;
    dm_train_state state;
    FILE *metrics;
    int64_t saved_step;                   /* step of the newest checkpoint on disk, -1 when none */
    int progress_line;                    /* 1: draw the live progress line on stdout */
    int line_open;                        /* 1: the progress line is drawn and not yet ended */
    double step_seconds;                  /* time in training steps since this invocation started */
    int64_t steps_timed;
    double last_draw;
    interval_sums *sums;
    dm_step_stats last;                   /* stats of the latest step (layers copied below) */
    dm_layer_stats last_layers[DM_MAX_LAYERS];
} train_run;

/* Ends a drawn progress line so the next message starts on its own line. */
static void end_progress_line(train_run *run)
{
    if (run->line_open) {
        fputc('\n', stdout);
        fflush(stdout);
        run->line_open = 0;
    }
}

/* Prints one error line (after ending the progress line) and returns 1. */
#define FAIL(run, ...) (end_progress_line(run), dm_cli_fail(CMD, __VA_ARGS__))

static void format_duration(double seconds, char *buf, size_t len)
{
    long s = seconds > 0 && isfinite(seconds) ? (long)(seconds + 0.5) : 0;
    if (s >= 3600)
        snprintf(buf, len, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
    else if (s >= 60)
        snprintf(buf, len, "%ldm%02lds", s / 60, s % 60);
    else
        snprintf(buf, len, "%lds", s);
}

/* ---- options ----------------------------------------------------------- */

/*
 * Parses the command line. With --resume the configuration starts from the
 * checkpoint's, so options that are not given keep the checkpoint's values,
 * and an option given with another value that changes the computation is an error.
 */
static int parse_options(train_run *run, int argc, char **argv, int *help)
{
    dm_train_cli *cli = &run->cli;
    dm_config saved;

    *help = 0;
    dm_train_cli_init(cli);
    int rc = dm_cli_parse(CMD, cli->opts, argc, argv, NULL, 0, NULL);
    if (rc == DM_CLI_HELP) {
        *help = 1;
        return dm_train_cli_parse(cli, argc, argv) == DM_CLI_HELP ? 0 : 1;
    }
    if (rc != DM_CLI_OK)
        return 1;

    snprintf(run->checkpoint_path, sizeof run->checkpoint_path, "%s/checkpoint.safetensors", cli->out);
    snprintf(run->metrics_path, sizeof run->metrics_path, "%s/metrics.jsonl", cli->out);

    if (cli->resume) {
        if (access(run->checkpoint_path, F_OK) != 0)
            return dm_cli_fail(CMD, "cannot resume: no checkpoint at '%s'; check --out, or drop --resume to start a "
                                    "new run", run->checkpoint_path);
        if (dm_checkpoint_read_config(run->checkpoint_path, &saved) != DM_OK)
            return dm_cli_fail(CMD, "cannot resume from '%s': %s", run->checkpoint_path, dm_last_error());
        dm_train_cli_init(cli);
        cli->cfg = saved;
        dm_train_cli_sync(cli);
    }

    if (dm_train_cli_parse(cli, argc, argv) != DM_CLI_OK)
        return 1;

    if (cli->resume) {
        char name[64], was[128], now[128];
        if (dm_config_diff(&saved, &cli->cfg, 0, name, was, now, sizeof was)) {
            const char *reason = strcmp(name, "steps") == 0
                                  ? " (the learning-rate and router schedules span the total steps, so a run "
                                    "continues only with the --steps it started with)"
                                  : "";
            return dm_cli_fail(CMD, "cannot resume: the checkpoint was trained with --%s %s but this command sets "
                                    "%s%s; drop the option to keep the checkpoint's value, or start a new run in "
                                    "another --out",
                               name, was, now, reason);
        }
    }
    return 0;
}

/* ---- data and output directory ----------------------------------------- */

static int load_data(train_run *run)
{
    dm_train_cli *cli = &run->cli;

    /* With --resume and no --data, the run continues on the files it recorded. */
    char recorded_val[sizeof run->val_path];
    if (!cli->data && cli->resume &&
        dm_run_data_paths(run->metrics_path, run->data_path, recorded_val, sizeof run->data_path)) {
        if (recorded_val[0] && !cli->val) {
            snprintf(run->val_path, sizeof run->val_path, "%s", recorded_val);
            cli->val = run->val_path;
        }
        if (access(run->data_path, R_OK) != 0)
            return dm_cli_fail(CMD, "the run's data file '%s' (recorded in %s) cannot be read: %s; pass --data FILE",
                               run->data_path, run->metrics_path, strerror(errno));
    } else if (cli->data) {
        snprintf(run->data_path, sizeof run->data_path, "%s", cli->data);
    } else {
        if (dm_default_corpus_path(run->data_path, sizeof run->data_path))
            return dm_cli_fail(CMD, "no --data given and neither DIRMOE_DATA_DIR nor HOME is set: pass --data FILE");
        if (access(run->data_path, F_OK) != 0)
            return dm_cli_fail(CMD, "no --data given and the default corpus '%s' is missing: get it with "
                                    "'apt-get install bible-kjv && scripts/get_kjv.sh', or pass --data FILE",
                               run->data_path);
    }

    /* Absolute paths in the metrics, so --resume finds the data from any directory. */
    char resolved[PATH_MAX];
    if (realpath(run->data_path, resolved) && strlen(resolved) < sizeof run->data_path)
        snprintf(run->data_path, sizeof run->data_path, "%s", resolved);

    if (cli->val && cli->val != run->val_path && realpath(cli->val, resolved) &&
        strlen(resolved) < sizeof run->val_path) {
        snprintf(run->val_path, sizeof run->val_path, "%s", resolved);
        cli->val = run->val_path;
    }

    double fraction = cli->val ? 0.0 : cli->cfg.val_fraction;
    if (dm_data_load(run->data_path, cli->val, fraction, cli->cfg.seq_len, &run->data) != DM_OK)
        return dm_cli_fail(CMD, "%s", dm_last_error());

    /* Byte-level tokens accept any bytes, so text that is not UTF-8 only gets a note. */
    const dm_dataset *parts[2] = {&run->data.train, &run->data.val};
    for (int i = 0; i < 2; i++) {
        size_t bad;
        if (parts[i]->n && !dm_utf8_valid(parts[i]->bytes, parts[i]->n, &bad))
            fprintf(stderr, "dirmoe %s: note: '%s' is not valid UTF-8 (first invalid byte at offset %zu); "
                            "training is byte-level, so every byte is a token and this is fine\n",
                    CMD, parts[i]->path, bad);
    }
    return 0;
}

/* Creates DIR and its missing parents. */
static int make_dirs(const char *dir)
{
    char path[1024];
    snprintf(path, sizeof path, "%s", dir);

    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0777) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(path, 0777) != 0 && errno != EEXIST)
        return -1;

    struct stat sb;
    if (stat(path, &sb) != 0)
        return -1;
    if (!S_ISDIR(sb.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

static int prepare_output(train_run *run)
{
    const char *out = run->cli.out;

    if (make_dirs(out) != 0)
        return dm_cli_fail(CMD, "cannot create output directory '%s': %s; choose another --out", out,
                           strerror(errno));
    if (access(out, W_OK | X_OK) != 0)
        return dm_cli_fail(CMD, "cannot write to output directory '%s': %s; choose another --out", out,
                           strerror(errno));
    if (!run->cli.resume && access(run->checkpoint_path, F_OK) == 0)
        return dm_cli_fail(CMD, "'%s' already holds a run (%s exists): pass --resume to continue it, or choose "
                                "another --out",
                           out, run->checkpoint_path);

    /* A run that stopped before its first checkpoint leaves metrics that a new run would overwrite. */
    struct stat sb;
    if (!run->cli.resume && stat(run->metrics_path, &sb) == 0 && sb.st_size > 0)
        return dm_cli_fail(CMD, "'%s' holds the metrics of an earlier run that saved no checkpoint (%s): remove it "
                                "or choose another --out",
                           out, run->metrics_path);
    return 0;
}

/* Notes on stderr when the configuration row records other training data than this run reads. */
static void note_changed_data(const train_run *run, const cJSON *row)
{
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(row, "type");
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(row, "data");
    const cJSON *tokens = cJSON_GetObjectItemCaseSensitive(row, "train_tokens");

    if (!cJSON_IsString(type) || strcmp(type->valuestring, "config") != 0 || !cJSON_IsString(data) ||
        !cJSON_IsNumber(tokens))
        return;
    if (strcmp(data->valuestring, run->data.train.path) != 0 || tokens->valuedouble != (double)run->data.train.n)
        fprintf(stderr, "dirmoe %s: note: the run started on '%s' (%.0f training bytes) and resumes on '%s' (%zu "
                        "bytes), so it will not match an uninterrupted run\n",
                CMD, data->valuestring, tokens->valuedouble, run->data.train.path, run->data.train.n);
}

/*
 * Drops the rows after the checkpoint's step from OUT/metrics.jsonl, so a
 * resumed run does not repeat rows that a stop after the last checkpoint left
 * behind. Rows that do not parse (a line cut by a crash) are dropped too.
 */
static int trim_metrics(train_run *run, int64_t step)
{
    FILE *in = fopen(run->metrics_path, "r");
    if (!in)
        return errno == ENOENT ? 0 : dm_cli_fail(CMD, "cannot read '%s': %s", run->metrics_path, strerror(errno));

    char tmp[1300];
    snprintf(tmp, sizeof tmp, "%s.tmp", run->metrics_path);
    FILE *out = fopen(tmp, "w");
    if (!out) {
        fclose(in);
        return dm_cli_fail(CMD, "cannot write '%s': %s", tmp, strerror(errno));
    }

    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int bad = 0;
    while ((len = getline(&line, &cap, in)) > 0) {
        cJSON *row = cJSON_Parse(line);
        const cJSON *s = row ? cJSON_GetObjectItemCaseSensitive(row, "step") : NULL;
        int keep = row && (!cJSON_IsNumber(s) || s->valuedouble <= (double)step);
        if (keep && fputs(line, out) == EOF)
            bad = 1;
        if (row)
            note_changed_data(run, row);
        cJSON_Delete(row);
    }
    free(line);
    fclose(in);
    if (fclose(out) != 0 || bad || rename(tmp, run->metrics_path) != 0) {
        remove(tmp);
        return dm_cli_fail(CMD, "cannot rewrite '%s': %s", run->metrics_path, strerror(errno));
    }
    return 0;
}

/* ---- metrics rows ---------------------------------------------------------- */

static int write_row(train_run *run, cJSON *row)
{
    int bad = dm_jsonl_write(run->metrics, row);
    cJSON_Delete(row);
    if (bad)
        return FAIL(run, "cannot write '%s': %s", run->metrics_path, strerror(errno));
    return 0;
}

static int write_config_row(train_run *run)
{
    const dm_config *cfg = &run->cli.cfg;
    cJSON *row = cJSON_CreateObject();

    cJSON_AddStringToObject(row, "type", "config");
    cJSON_AddStringToObject(row, "dirmoe_version", dm_version());
    cJSON_AddItemToObject(row, "config", dm_config_to_json(cfg));
    cJSON_AddStringToObject(row, "backend", run->be->name);
    cJSON_AddStringToObject(row, "data", run->data.train.path);
    cJSON_AddNumberToObject(row, "train_tokens", (double)run->data.train.n);
    if (run->data.val.n)
        cJSON_AddStringToObject(row, "val", run->data.val.path);
    cJSON_AddNumberToObject(row, "val_tokens", (double)run->data.val.n);
    cJSON_AddNumberToObject(row, "n_params", (double)dm_model_n_params(run->model));
    cJSON_AddNumberToObject(row, "flops_per_token_at_k", dm_flops_per_token(cfg, NULL));
    cJSON_AddStringToObject(row, "flops_convention",
                            "6 x active parameters (LM head included, embedding lookups excluded) + attention "
                            "scores over the full T x T");
    return write_row(run, row);
}

/* Mean active experts per MoE layer over the interval, as the FLOP count expects. */
static void interval_active(const train_run *run, double *active)
{
    const dm_config *cfg = &run->cli.cfg;
    const interval_sums *s = run->sums;
    const int n_moe = dm_config_n_moe_layers(cfg);

    for (int i = 0; i < n_moe; i++) {
        /* Soft selection computes every expert whatever the mask holds. */
        if (cfg->router == DM_ROUTER_DIRMOE && cfg->selection == DM_SELECTION_SOFT)
            active[i] = cfg->n_expert;
        else
            active[i] = s->steps ? s->active[i] / s->steps : 0.0;
    }
}

/* Formats "active X.XX  " with the interval's mean active experts over MoE layers; "" for a dense model. */
static const char *active_text(const train_run *run, char *buf, size_t len)
{
    const interval_sums *s = run->sums;
    const int n_moe = run->last.n_moe;
    double total = 0.0;

    buf[0] = '\0';
    if (!n_moe || !s->steps)
        return buf;
    for (int i = 0; i < n_moe; i++)
        total += s->active[i] / s->steps;
    snprintf(buf, len, "active %.2f  ", total / n_moe);
    return buf;
}

static void add_to_interval(train_run *run, const dm_step_stats *st, double seconds)
{
    interval_sums *s = run->sums;

    s->steps++;
    s->seconds += seconds;
    s->loss += st->loss;
    s->ce += st->ce;
    s->aux += st->aux;
    s->grad_norm += st->grad_norm;
    for (int i = 0; i < st->n_moe; i++) {
        const dm_layer_stats *l = &st->layers[i];
        s->active[i] += l->active_mean;
        s->kbar[i] += l->kbar;
        s->kl_b[i] += l->kl_b;
        s->kl_d[i] += l->kl_d;
        s->balance[i] += l->balance;
        s->zloss[i] += l->zloss;
        s->dropped[i] += l->dropped;
        for (int e = 0; e < l->n_expert; e++)
            s->demand[i][e] += (uint64_t)l->demand[e];
    }

    /* Keep the latest step's per-layer values (mu, tau, ...) past the model's next forward. */
    run->last = *st;
    memcpy(run->last_layers, st->layers, (size_t)st->n_moe * sizeof *st->layers);
    run->last.layers = run->last_layers;
}

static cJSON *train_layers_json(const train_run *run)
{
    const interval_sums *s = run->sums;
    const double n = s->steps;
    cJSON *layers = cJSON_CreateArray();

    for (int i = 0; i < run->last.n_moe; i++) {
        const dm_layer_stats *l = &run->last.layers[i];
        const int ne = l->n_expert;
        double share[DM_MAX_EXPERTS], total = 0.0, var = 0.0;
        int dead = 0;

        /* Load over the interval from the selected assignments (before capacity dropping). */
        for (int e = 0; e < ne; e++)
            total += (double)s->demand[i][e];
        for (int e = 0; e < ne; e++) {
            share[e] = total > 0 ? (double)s->demand[i][e] / total : 0.0;
            var += (share[e] - 1.0 / ne) * (share[e] - 1.0 / ne);
            dead += s->demand[i][e] == 0;
        }

        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "layer", l->layer);
        cJSON_AddNumberToObject(o, "active", s->active[i] / n);
        cJSON_AddNumberToObject(o, "kbar", s->kbar[i] / n);
        cJSON_AddItemToObject(o, "load", cJSON_CreateDoubleArray(share, ne));
        cJSON_AddNumberToObject(o, "load_cv", total > 0 ? sqrt(var / ne) * ne : 0.0);
        cJSON_AddNumberToObject(o, "dead", dead);
        cJSON_AddNumberToObject(o, "kl_b", s->kl_b[i] / n);
        cJSON_AddNumberToObject(o, "kl_d", s->kl_d[i] / n);
        cJSON_AddNumberToObject(o, "balance", s->balance[i] / n);
        cJSON_AddNumberToObject(o, "zloss", s->zloss[i] / n);
        cJSON_AddNumberToObject(o, "dropped", (double)s->dropped[i]);
        cJSON_AddNumberToObject(o, "mu", l->mu);
        cJSON_AddNumberToObject(o, "tau", l->tau);
        cJSON_AddNumberToObject(o, "alpha0", l->alpha0);
        cJSON_AddNumberToObject(o, "ramp", l->ramp);
        cJSON_AddNumberToObject(o, "gamma_fallbacks", (double)run->state.gamma_fallbacks[l->layer]);
        cJSON_AddItemToArray(layers, o);
    }
    return layers;
}

/* Writes the interval's "train" row, prints the log line when there is no progress line, resets the sums. */
static int log_interval(train_run *run)
{
    const dm_config *cfg = &run->cli.cfg;
    interval_sums *s = run->sums;
    const double n = s->steps;
    const double tokens = n * cfg->batch * cfg->seq_len;
    double active[DM_MAX_LAYERS];

    if (!s->steps)
        return 0;
    interval_active(run, active);
    const double ce = s->ce / n;
    const double tok_s = s->seconds > 0 ? tokens / s->seconds : 0.0;
    const double flops = dm_flops_per_token(cfg, dm_config_n_moe_layers(cfg) ? active : NULL);

    cJSON *row = cJSON_CreateObject();
    cJSON_AddStringToObject(row, "type", "train");
    cJSON_AddNumberToObject(row, "step", (double)run->state.step);
    cJSON_AddNumberToObject(row, "tokens", (double)run->state.step * cfg->batch * cfg->seq_len);
    cJSON_AddNumberToObject(row, "lr", run->last.lr);
    cJSON_AddNumberToObject(row, "loss", s->loss / n);
    cJSON_AddNumberToObject(row, "ce", ce);
    cJSON_AddNumberToObject(row, "ppl", dm_perplexity(ce));
    cJSON_AddNumberToObject(row, "bpb", dm_bits_per_byte(ce));
    cJSON_AddNumberToObject(row, "aux", s->aux / n);
    cJSON_AddNumberToObject(row, "grad_norm", s->grad_norm / n);
    cJSON_AddNumberToObject(row, "tokens_per_s", tok_s);
    cJSON_AddNumberToObject(row, "flops_per_token", flops);
    cJSON_AddNumberToObject(row, "flops_per_s", flops * tok_s);
    cJSON_AddItemToObject(row, "layers", train_layers_json(run));
    if (write_row(run, row))
        return 1;

    if (!run->progress_line) {
        char eta[32], active[32];
        double per_step = run->steps_timed ? run->step_seconds / run->steps_timed : 0.0;
        format_duration(per_step * (double)(cfg->steps - run->state.step), eta, sizeof eta);
        printf("step %lld/%d  loss %.4f  bpb %.4f  lr %.3g  %s%.0f tok/s  ETA %s\n", (long long)run->state.step,
               cfg->steps, s->loss / n, dm_bits_per_byte(ce), run->last.lr, active_text(run, active, sizeof active),
               tok_s, eta);
        fflush(stdout);
    }
    memset(s, 0, sizeof *s);
    return 0;
}

/* Redraws the live progress line, at most ten times a second. */
static void draw_progress(train_run *run, int force)
{
    const dm_config *cfg = &run->cli.cfg;
    const interval_sums *s = run->sums;
    double t = now_seconds();

    if (!run->progress_line || !s->steps || (!force && t - run->last_draw < 0.1))
        return;
    run->last_draw = t;

    char eta[32], active[32];
    double per_step = run->step_seconds / (double)run->steps_timed;
    double tok_s = s->seconds > 0 ? s->steps * (double)cfg->batch * cfg->seq_len / s->seconds : 0.0;
    format_duration(per_step * (double)(cfg->steps - run->state.step), eta, sizeof eta);
    printf("\rstep %lld/%d  loss %.4f  %.0f tok/s  %sETA %s   ", (long long)run->state.step, cfg->steps,
           s->loss / s->steps, tok_s, active_text(run, active, sizeof active), eta);
    fflush(stdout);
    run->line_open = 1;
}

/* ---- evaluation and checkpoints ------------------------------------------- */

static int evaluate(train_run *run)
{
    dm_eval_result res;

    if (!run->data.val.n)
        return 0;
    if (dm_eval_run(run->model, &run->data.val, run->cli.cfg.eval_batches, &res) != DM_OK)
        return FAIL(run, "validation at step %lld failed: %s", (long long)run->state.step, dm_last_error());
    if (write_row(run, dm_eval_to_json(&res, run->state.step)))
        return 1;

    end_progress_line(run);
    printf("eval step %lld: val loss %.4f  ppl %.3f  bpb %.4f", (long long)run->state.step, res.loss,
           dm_perplexity(res.loss), dm_bits_per_byte(res.loss));
    for (int i = 0; i < res.n_moe; i++)
        printf("  L%d active %.2f MI %.3f", res.layers[i].layer, res.layers[i].routing.mean_active,
               res.layers[i].routing.mutual_info);
    printf("\n");
    fflush(stdout);
    return 0;
}

static int save(train_run *run)
{
    if (run->saved_step == run->state.step)
        return 0;
    if (dm_checkpoint_save(run->checkpoint_path, run->model, &run->state) != DM_OK)
        return FAIL(run, "cannot save checkpoint '%s': %s", run->checkpoint_path, dm_last_error());
    run->saved_step = run->state.step;
    return 0;
}

/* Saves after SIGINT or SIGTERM and returns the conventional exit status 128 + signal number. */
static int stop_on_signal(train_run *run)
{
    const int sig = stop_signal;

    if (save(run))
        return 1;
    FAIL(run, "interrupted by %s after step %lld: saved '%s'; continue with the same command and --resume",
         sig == SIGINT ? "SIGINT" : "SIGTERM", (long long)run->state.step, run->checkpoint_path);
    return 128 + sig;
}

/* ---- the loop ----------------------------------------------------------------- */

static int train_loop(train_run *run)
{
    const dm_config *cfg = &run->cli.cfg;
    dm_batch batch;

    if (dm_batch_alloc(&batch, cfg->batch, cfg->seq_len) != DM_OK)
        return FAIL(run, "%s", dm_last_error());

    int rc = 0;
    while (run->state.step < cfg->steps) {
        dm_step_stats st;
        const int64_t step = run->state.step;

        if (dm_data_sample(&run->data.train, cfg->seed, DM_DATA_STREAM_TRAIN, (uint32_t)step, &batch) != DM_OK) {
            rc = FAIL(run, "%s", dm_last_error());
            break;
        }

        double t0 = now_seconds();
        dm_status status = dm_train_step(run->model, &run->state, &batch, NULL, &st);
        double dt = now_seconds() - t0;
        if (status == DM_OK && !isfinite(st.loss))
            status = dm_error(DM_ERR_NUMERIC, "the loss is %g at step %lld", st.loss, (long long)step);
        if (status == DM_ERR_NUMERIC) {
            char kept[1400];
            if (run->saved_step >= 0)
                snprintf(kept, sizeof kept, "the last good checkpoint '%s' (step %lld) is kept", run->checkpoint_path,
                         (long long)run->saved_step);
            else
                snprintf(kept, sizeof kept, "no checkpoint was written");
            rc = FAIL(run, "%s; training stopped and %s", dm_last_error(), kept);
            break;
        }
        if (status != DM_OK) {
            rc = FAIL(run, "step %lld failed: %s", (long long)step, dm_last_error());
            break;
        }

        run->step_seconds += dt;
        run->steps_timed++;
        add_to_interval(run, &st, dt);
        draw_progress(run, 0);

        const int64_t done = run->state.step;
        const int last = done == cfg->steps;
        if (done % cfg->log_every == 0 || last) {
            draw_progress(run, 1);
            if (log_interval(run)) {
                rc = 1;
                break;
            }
        }
        if (((cfg->eval_every && done % cfg->eval_every == 0) || last) && evaluate(run)) {
            rc = 1;
            break;
        }
        if (((cfg->save_every && done % cfg->save_every == 0) || last) && save(run)) {
            rc = 1;
            break;
        }

        if (stop_signal) {
            rc = stop_on_signal(run);
            break;
        }
        if (run->cli.stop_after && done == run->cli.stop_after && !last) {
            if (save(run)) {
                rc = 1;
                break;
            }
            end_progress_line(run);
            printf("stopped after step %lld (--stop-after): saved '%s'; continue with --resume\n", (long long)done,
                   run->checkpoint_path);
            break;
        }
    }
    end_progress_line(run);
    dm_batch_free(&batch);
    return rc;
}

static void release(train_run *run)
{
    if (run->metrics)
        fclose(run->metrics);
    if (run->model)
        dm_model_free(run->model);
    if (run->be)
        dm_backend_close(run->be);
    dm_data_free(&run->data);
    free(run->sums);
    free(run);
}

/* Opens the backend first, so a bad --backend leaves no output directory behind. */
static int open_backend(train_run *run)
{
    if (dm_backend_open(run->cli.backend, &run->be) != DM_OK)
        return dm_cli_fail(CMD, "%s", dm_last_error());
    return 0;
}

/* Builds the model and restores the checkpoint on --resume. */
static int start_model(train_run *run)
{
    const dm_config *cfg = &run->cli.cfg;

    if (dm_model_create(run->be, cfg, &run->model) != DM_OK)
        return dm_cli_fail(CMD, "%s", dm_last_error());

    if (run->cli.resume) {
        if (dm_checkpoint_load(run->checkpoint_path, run->model, &run->state) != DM_OK)
            return dm_cli_fail(CMD, "cannot resume from '%s': %s", run->checkpoint_path, dm_last_error());
        run->saved_step = run->state.step;
    } else {
        dm_train_state_init(run->model, &run->state);
    }
    return 0;
}

static int open_metrics(train_run *run)
{
    if (run->cli.resume && trim_metrics(run, run->state.step))
        return 1;

    int fresh = !run->cli.resume || access(run->metrics_path, F_OK) != 0;
    run->metrics = fopen(run->metrics_path, fresh ? "w" : "a");
    if (!run->metrics)
        return dm_cli_fail(CMD, "cannot write '%s': %s; choose another --out", run->metrics_path, strerror(errno));
    if (fresh)
        return write_config_row(run);

    cJSON *row = cJSON_CreateObject();
    cJSON_AddStringToObject(row, "type", "resume");
    cJSON_AddNumberToObject(row, "step", (double)run->state.step);
    return write_row(run, row);
}

int dm_cmd_train(int argc, char **argv)
{
    train_run *run = calloc(1, sizeof *run);
    int help, rc;

    if (!run)
        return dm_cli_fail(CMD, "out of memory");
    run->saved_step = -1;
    run->sums = calloc(1, sizeof *run->sums);
    if (!run->sums) {
        free(run);
        return dm_cli_fail(CMD, "out of memory");
    }

    rc = parse_options(run, argc, argv, &help);
    if (rc || help || open_backend(run) || load_data(run) || prepare_output(run) || start_model(run)) {
        release(run);
        return help && !rc ? 0 : 1;
    }

    const dm_config *cfg = &run->cli.cfg;
    if (run->state.step >= cfg->steps) {
        printf("the run in '%s' has already completed its %d steps; the schedules span --steps, so to train longer "
               "start a new run in another --out\n",
               run->cli.out, cfg->steps);
        release(run);
        return 0;
    }
    if (open_metrics(run)) {
        release(run);
        return 1;
    }

    const int mode = run->cli.progress;
    run->progress_line = mode == DM_PROGRESS_ALWAYS || (mode == DM_PROGRESS_AUTO && isatty(STDOUT_FILENO));
    printf("training %s: %zu parameters, %d MoE layers, backend %s, %zu training bytes%s\n",
           dm_router_name(cfg->router), dm_model_n_params(run->model), dm_config_n_moe_layers(cfg), run->be->name,
           run->data.train.n, run->cli.resume ? " (resumed)" : "");
    if (run->cli.resume)
        printf("resuming at step %lld of %d\n", (long long)run->state.step, cfg->steps);
    fflush(stdout);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    /* A second signal takes the default action, so a stuck step can still be killed. */
    sa.sa_flags = SA_RESETHAND;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    rc = train_loop(run);
    if (rc == 0 && run->state.step == cfg->steps)
        printf("done: %lld steps; checkpoint '%s', metrics '%s'\n", (long long)run->state.step,
               run->checkpoint_path, run->metrics_path);

    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    release(run);
    return rc;
}
