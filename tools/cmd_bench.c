/*
 * dirmoe bench: training throughput of one backend. Runs warm-up steps, then
 * timed training steps of the model that `dirmoe train` would build from the
 * same options. Reports tokens/s, the time of each op family, the achieved
 * GFLOP/s from the model's FLOP count, the GFLOP/s of a large SGEMM through
 * the same backend's gemm op, their ratio (MFU) and the peak resident memory.
 */
#include "config.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "dirmoe/dirmoe.h"
#include "dirmoe/model.h"
#include "dirmoe/philox.h"
#include "dirmoe/train.h"
#include "bench_timer.h"
#include "cli.h"
#include "train_options.h"

#define CMD "bench"

/* Bytes of the synthetic corpus used when --data is absent. */
#define SYNTHETIC_BYTES (1u << 20)

typedef struct bench_opts {
    int warmup_steps;
    int timed_steps;
    int gemm_size;
    int gemm_reps;
    int json;
    int no_breakdown;
} bench_opts;

typedef struct bench_result {
    double step_seconds;      /* mean wall time of one timed step */
    double tokens_per_s;
    double active_mean;       /* realised experts per token, mean over MoE layers and timed steps */
    double flops_per_token;
    double achieved_gflops;
    double gemm_gflops;
    double max_rss_mib;
    double last_loss;
    dm_bench_times times;     /* summed over the timed steps */
} bench_result;

/* Appends the bench's own options after the train table's terminator. */
static int add_bench_options(dm_train_cli *cli, bench_opts *b)
{
    const dm_option extra[] = {
        {"warmup-steps", DM_OPT_INT, &b->warmup_steps, "N", "untimed training steps before the timed ones", 0, 1e6, NULL},
        {"timed-steps", DM_OPT_INT, &b->timed_steps, "N", "timed training steps", 1, 1e6, NULL},
        {"gemm-size", DM_OPT_INT, &b->gemm_size, "N", "size of the square SGEMM that measures the peak rate", 16, 16384, NULL},
        {"gemm-reps", DM_OPT_INT, &b->gemm_reps, "N", "timed SGEMM repetitions; the fastest counts", 1, 1000, NULL},
        {"json", DM_OPT_FLAG, &b->json, NULL, "print one JSON object instead of text", 0, 0, NULL},
        {"no-breakdown", DM_OPT_FLAG, &b->no_breakdown, NULL,
         "do not time op families (no per-op synchronize on asynchronous backends)", 0, 0, NULL},
    };
    int n = 0;

    while (cli->opts[n].name)
        n++;
    if (n + (int)(sizeof extra / sizeof extra[0]) >= DM_TRAIN_MAX_OPTIONS)
        return dm_cli_fail(CMD, "the option table is full; raise DM_TRAIN_MAX_OPTIONS");
    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++)
        cli->opts[n++] = extra[i];
    cli->opts[n] = (dm_option){NULL, 0, NULL, NULL, NULL, 0, 0, NULL};
    return 0;
}

/* Copies the options parsed as text into cfg, as `dirmoe train` does after parsing. */
static int apply_text_options(dm_train_cli *cli)
{
    const char *names[] = {"router", "sparsity", "schedule", "kl-b", "selection"};
    const char *values[] = {cli->router, cli->sparsity, cli->schedule, cli->kl_b, cli->selection};

    for (int i = 0; i < 5; i++)
        if (dm_config_set(&cli->cfg, names[i], values[i]) != DM_OK)
            return dm_cli_fail(CMD, "%s", dm_last_error());
    cli->cfg.tau_start = cli->tau[0];
    cli->cfg.tau_end = cli->tau[1];
    cli->cfg.alpha0_start = cli->alpha0[0];
    cli->cfg.alpha0_end = cli->alpha0[1];
    cli->cfg.seed = (uint64_t)cli->seed;
    return 0;
}

/* Uniform random bytes from Philox (key = seed, purpose DM_RNG_TEXT, step 0). */
static dm_status synthetic_dataset(uint64_t seed, dm_dataset *ds)
{
    memset(ds, 0, sizeof *ds);
    ds->bytes = malloc(SYNTHETIC_BYTES);
    if (!ds->bytes)
        return dm_error(DM_ERR_NOMEM, "cannot allocate %u bytes of synthetic data", SYNTHETIC_BYTES);
    for (uint32_t i = 0; i < SYNTHETIC_BYTES / 16; i++) {
        dm_philox_block blk = dm_philox_at(seed, i, 0, 0, DM_RNG_TEXT, 0);
        memcpy(ds->bytes + 16 * (size_t)i, blk.w, 16);
    }
    ds->n = SYNTHETIC_BYTES;
    snprintf(ds->path, sizeof ds->path, "synthetic random bytes");
    return DM_OK;
}

/* Best GFLOP/s of `reps` square SGEMMs of size n through the backend's gemm op. */
static dm_status measure_gemm(dm_backend *be, int n, int reps, double *gflops)
{
    const dm_backend_ops *ops = be->ops;
    size_t nn = (size_t)n * n;
    dm_buffer *buf = NULL;
    dm_status st = ops->alloc(be->ctx, 3 * nn, &buf);
    if (st)
        return dm_backend_fail(be, "alloc", st);

    float *host = malloc(nn * sizeof *host);
    if (!host) {
        ops->free(be->ctx, buf);
        return dm_error(DM_ERR_NOMEM, "cannot allocate %zu bytes for the SGEMM inputs", nn * sizeof *host);
    }
    for (size_t i = 0; i < nn; i++)
        host[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;

    dm_tensor a = {buf, 0}, b = {buf, nn}, c = {buf, 2 * nn};
    double best = INFINITY;
    st = ops->upload(be->ctx, a, host, nn);
    if (!st)
        st = ops->upload(be->ctx, b, host, nn);
    for (int r = -1; r < reps && !st; r++) {
        double t0 = dm_bench_now();
        st = ops->gemm(be->ctx, 0, 0, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        if (!st)
            st = ops->synchronize(be->ctx);
        double dt = dm_bench_now() - t0;
        if (r >= 0 && dt < best)
            best = dt; /* r = -1 is the warm-up call */
    }
    free(host);
    ops->free(be->ctx, buf);
    if (st)
        return dm_backend_fail(be, "gemm", st);
    *gflops = 2.0 * n * (double)n * n / best * 1e-9;
    return DM_OK;
}

/* Runs warm-up and timed steps; fills the throughput part of `res`. */
static dm_status run_steps(dm_model *model, const dm_config *cfg, const dm_dataset *ds,
                           const bench_opts *b, bench_result *res)
{
    dm_train_state state;
    dm_batch batch;
    dm_step_stats stats;
    dm_status st = dm_batch_alloc(&batch, cfg->batch, cfg->seq_len);
    if (st)
        return st;

    dm_train_state_init(model, &state);
    double active_sum = 0.0, elapsed = 0.0;
    long active_count = 0;

    for (int i = 0; i < b->warmup_steps + b->timed_steps && !st; i++) {
        int timed = i >= b->warmup_steps;
        if (i == b->warmup_steps)
            dm_bench_timer_reset();
        if ((st = dm_data_sample(ds, cfg->seed, DM_DATA_STREAM_TRAIN, (uint32_t)state.step, &batch)))
            break;

        double t0 = dm_bench_now();
        st = dm_train_step(model, &state, &batch, NULL, &stats);
        double dt = dm_bench_now() - t0;
        if (st || !timed)
            continue;

        elapsed += dt;
        res->last_loss = stats.loss;
        for (int l = 0; l < stats.n_moe; l++) {
            active_sum += stats.layers[l].active_mean;
            active_count++;
        }
    }
    dm_batch_free(&batch);
    if (st)
        return st;

    double tokens = (double)cfg->batch * cfg->seq_len * b->timed_steps;
    res->step_seconds = elapsed / b->timed_steps;
    res->tokens_per_s = tokens / elapsed;
    res->active_mean = active_count ? active_sum / active_count : 0.0;

    /* FLOPs at the measured mean count in every MoE layer (dense models pass NULL). */
    int n_moe = dm_config_n_moe_layers(cfg);
    double active[DM_MAX_LAYERS];
    for (int l = 0; l < n_moe; l++)
        active[l] = res->active_mean;
    res->flops_per_token = dm_flops_per_token(cfg, n_moe ? active : NULL);
    res->achieved_gflops = res->flops_per_token * res->tokens_per_s * 1e-9;
    dm_bench_timer_read(&res->times);
    return DM_OK;
}

static void print_text(const dm_backend *be, const dm_probe_result *probe, const dm_config *cfg,
                       const bench_opts *b, const bench_result *r)
{
    printf("backend %s: %s (%s)\n", be->name, probe->n_devices ? probe->devices[0].name : "?",
           probe->n_devices ? probe->devices[0].detail : "");
    printf("model: router %s, %d layers, d_model %d, %d heads, d_ff %d, %d experts, k %g, seq_len %d, batch %d\n",
           dm_router_name(cfg->router), cfg->n_layer, cfg->d_model, cfg->n_head, cfg->d_ff, cfg->n_expert, cfg->k,
           cfg->seq_len, cfg->batch);
    printf("steps: %d warm-up, %d timed, %d tokens each\n", b->warmup_steps, b->timed_steps,
           cfg->batch * cfg->seq_len);
    printf("throughput:      %.0f tokens/s (%.1f ms per step), last loss %.4f\n", r->tokens_per_s,
           1e3 * r->step_seconds, r->last_loss);
    if (dm_config_n_moe_layers(cfg) > 0)
        printf("active experts:  %.3f per token (realised, mean over MoE layers)\n", r->active_mean);
    else
        printf("active experts:  none (dense FFNs)\n");
    printf("model FLOPs:     %.4g per token (6 x active params + full T x T attention)\n", r->flops_per_token);
    printf("achieved:        %.1f GFLOP/s\n", r->achieved_gflops);
    printf("SGEMM %dx%dx%d: %.1f GFLOP/s (best of %d)\n", b->gemm_size, b->gemm_size, b->gemm_size,
           r->gemm_gflops, b->gemm_reps);
    /* The project's target for the cpu backend is 40% of the same-run SGEMM rate. */
    double mfu = 100.0 * r->achieved_gflops / r->gemm_gflops;
    if (mfu >= 40.0)
        printf("MFU:             %.1f%% of the SGEMM rate (target 40%%: met)\n", mfu);
    else
        printf("MFU:             %.1f%% of the SGEMM rate (target 40%%: missed by %.1f points)\n", mfu, 40.0 - mfu);
    printf("peak memory:     %.1f MiB (maxrss)\n", r->max_rss_mib);

    if (b->no_breakdown)
        return;
    double total = 0.0;
    for (int f = 0; f < DM_FAM_COUNT; f++)
        total += r->times.seconds[f];
    printf("time per step by op family (%s):\n", be->name);
    for (int f = 0; f < DM_FAM_COUNT; f++)
        printf("  %-10s %8.2f ms  %5.1f%%  %6.0f calls\n", dm_bench_family_names[f],
               1e3 * r->times.seconds[f] / b->timed_steps, total > 0 ? 100.0 * r->times.seconds[f] / total : 0.0,
               (double)r->times.calls[f] / b->timed_steps);
    printf("  %-10s %8.2f ms  (outside ops: %.2f ms)\n", "total", 1e3 * total / b->timed_steps,
           1e3 * (r->step_seconds - total / b->timed_steps));
}

static int print_json(const dm_backend *be, const dm_probe_result *probe, const dm_config *cfg,
                      const bench_opts *b, const bench_result *r)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *conf = dm_config_to_json(cfg);
    cJSON *fam = cJSON_CreateObject();

    if (!root || !conf || !fam) {
        cJSON_Delete(root), cJSON_Delete(conf), cJSON_Delete(fam);
        return dm_cli_fail(CMD, "out of memory while building the JSON report");
    }
    cJSON_AddStringToObject(root, "backend", be->name);
    cJSON_AddStringToObject(root, "device", probe->n_devices ? probe->devices[0].name : "");
    cJSON_AddStringToObject(root, "device_detail", probe->n_devices ? probe->devices[0].detail : "");
    cJSON_AddItemToObject(root, "config", conf);
    cJSON_AddNumberToObject(root, "warmup_steps", b->warmup_steps);
    cJSON_AddNumberToObject(root, "timed_steps", b->timed_steps);
    cJSON_AddNumberToObject(root, "tokens_per_step", (double)cfg->batch * cfg->seq_len);
    cJSON_AddNumberToObject(root, "step_seconds", r->step_seconds);
    cJSON_AddNumberToObject(root, "tokens_per_s", r->tokens_per_s);
    cJSON_AddNumberToObject(root, "last_loss", r->last_loss);
    cJSON_AddNumberToObject(root, "active_experts", r->active_mean);
    cJSON_AddNumberToObject(root, "flops_per_token", r->flops_per_token);
    cJSON_AddNumberToObject(root, "achieved_gflops", r->achieved_gflops);
    cJSON_AddNumberToObject(root, "gemm_size", b->gemm_size);
    cJSON_AddNumberToObject(root, "gemm_gflops", r->gemm_gflops);
    cJSON_AddNumberToObject(root, "mfu", r->achieved_gflops / r->gemm_gflops);
    cJSON_AddNumberToObject(root, "max_rss_mib", r->max_rss_mib);
    if (!b->no_breakdown) {
        for (int f = 0; f < DM_FAM_COUNT; f++)
            cJSON_AddNumberToObject(fam, dm_bench_family_names[f], r->times.seconds[f] / b->timed_steps);
        cJSON_AddItemToObject(root, "family_seconds_per_step", fam);
    } else {
        cJSON_Delete(fam);
    }

    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!text)
        return dm_cli_fail(CMD, "out of memory while printing the JSON report");
    printf("%s\n", text);
    free(text);
    return 0;
}

int dm_cmd_bench(int argc, char **argv)
{
    static dm_train_cli cli;
    bench_opts b = {.warmup_steps = 3, .timed_steps = 10, .gemm_size = 1536, .gemm_reps = 3};

    dm_train_cli_init(&cli);
    if (add_bench_options(&cli, &b))
        return 1;

    int rc = dm_cli_parse(CMD, cli.opts, argc, argv, NULL, 0, NULL);
    if (rc == DM_CLI_HELP) {
        dm_options_usage(stdout, CMD, NULL,
                         "Measure training throughput on one backend: --warmup-steps untimed steps, then\n"
                         "--timed-steps timed steps of the model the train options describe, on --data or,\n"
                         "without it, on synthetic random bytes. Reports tokens/s, the time per op family,\n"
                         "achieved GFLOP/s (6 x active parameters per token plus full T x T attention), the\n"
                         "GFLOP/s of a --gemm-size SGEMM through the same backend, their ratio (MFU) and the\n"
                         "peak resident memory. Options that only concern training runs (--out, --eval-every,\n"
                         "...) are accepted and ignored.",
                         cli.opts);
        return 0;
    }
    /* NOTE: dm_train_cli_check prefixes its messages with "dirmoe train:", also here. */
    if (rc != DM_CLI_OK || apply_text_options(&cli) || dm_train_cli_check(&cli))
        return 1;
    const dm_config *cfg = &cli.cfg;

    /* Data: the given file, or synthetic bytes (throughput does not depend on the text). */
    dm_data data;
    dm_dataset synthetic;
    const dm_dataset *ds;
    memset(&data, 0, sizeof data);
    memset(&synthetic, 0, sizeof synthetic);
    if (cli.data) {
        if (dm_data_load(cli.data, NULL, 0.0, cfg->seq_len, &data) != DM_OK)
            return dm_cli_fail(CMD, "%s", dm_last_error());
        ds = &data.train;
    } else {
        if (synthetic_dataset(cfg->seed, &synthetic) != DM_OK)
            return dm_cli_fail(CMD, "%s", dm_last_error());
        ds = &synthetic;
    }

    dm_backend *be = NULL;
    dm_model *model = NULL;
    bench_result res;
    dm_probe_result probe;
    int status = 1;
    memset(&res, 0, sizeof res);

    if (dm_backend_open(cli.backend, &be) != DM_OK) {
        dm_cli_fail(CMD, "%s", dm_last_error());
        goto done;
    }
    be->desc->probe(&probe);
    if (!b.no_breakdown)
        dm_bench_timer_install(be, 1);
    if (dm_model_create(be, cfg, &model) != DM_OK) {
        dm_cli_fail(CMD, "%s", dm_last_error());
        goto done;
    }
    if (!b.no_breakdown)
        dm_bench_timer_set_model(model);

    if (run_steps(model, cfg, ds, &b, &res) != DM_OK) {
        dm_cli_fail(CMD, "%s", dm_last_error());
        goto done;
    }
    if (measure_gemm(be, b.gemm_size, b.gemm_reps, &res.gemm_gflops) != DM_OK) {
        dm_cli_fail(CMD, "%s", dm_last_error());
        goto done;
    }

    /* ru_maxrss is in KiB on Linux. */
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    res.max_rss_mib = (double)ru.ru_maxrss / 1024.0;

    if (b.json)
        status = print_json(be, &probe, cfg, &b, &res);
    else {
        print_text(be, &probe, cfg, &b, &res);
        status = 0;
    }

done:
    dm_model_free(model);
    if (be) {
        dm_bench_timer_remove(be);
        dm_backend_close(be);
    }
    dm_data_free(&data);
    free(synthetic.bytes);
    return status;
}
