/* dirmoe sample: generate text from a checkpoint with temperature, top-k and top-p sampling. */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dirmoe/dirmoe.h"
#include "dirmoe/model.h"
#include "dirmoe/train.h"
#include "cli.h"
#include "train_options.h"

#define CMD "sample"

typedef struct sample_options {
    const char *checkpoint;
    const char *prompt;
    const char *backend;
    int tokens;
    double temperature;
    int top_k;
    double top_p;
    long long seed;         /* -1: the checkpoint's run seed */
} sample_options;

/* One vocabulary entry while filtering: its probability and token id. */
typedef struct candidate {
    double p;
    int id;
} candidate;

/* Orders by descending probability, ties toward the lower token id. */
static int by_probability(const void *a, const void *b)
{
    const candidate *x = a, *y = b;
    if (x->p != y->p)
        return x->p < y->p ? 1 : -1;
    return x->id - y->id;
}

/*
 * Picks the next token from the logits (V) with the uniform u in (0, 1):
 * softmax(logits / temperature), then the top_k most likely (0 = all), then
 * the smallest prefix whose probability reaches top_p, renormalised, and the
 * inverse CDF of u over that set in descending order. temperature 0 is greedy.
 */
static int pick_token(const float *logits, int v, const sample_options *o, float u, candidate *c)
{
    int best = 0;
    for (int i = 1; i < v; i++)
        if (logits[i] > logits[best])
            best = i;
    if (o->temperature == 0.0)
        return best;

    double total = 0.0;
    for (int i = 0; i < v; i++) {
        c[i].id = i;
        c[i].p = exp(((double)logits[i] - logits[best]) / o->temperature);
        total += c[i].p;
    }
    qsort(c, (size_t)v, sizeof *c, by_probability);

    int n = o->top_k > 0 && o->top_k < v ? o->top_k : v;
    double kept = 0.0;
    for (int i = 0; i < n; i++) {
        kept += c[i].p / total;
        if (kept >= o->top_p) {
            n = i + 1;
            break;
        }
    }

    double mass = 0.0, target;
    for (int i = 0; i < n; i++)
        mass += c[i].p;
    target = (double)u * mass;
    double cum = 0.0;
    for (int i = 0; i < n; i++) {
        cum += c[i].p;
        if (target < cum)
            return c[i].id;
    }
    return c[n - 1].id;
}

static int run_sample(const sample_options *o)
{
    dm_config cfg;
    dm_backend *be = NULL;
    dm_model *model = NULL;
    dm_train_state state;
    int32_t *context = NULL;
    float *logits = NULL;
    candidate *cand = NULL;
    int rc = 1;

    if (dm_checkpoint_read_config(o->checkpoint, &cfg) != DM_OK)
        return dm_cli_fail(CMD, "cannot read the checkpoint: %s", dm_last_error());

    const size_t prompt_len = strlen(o->prompt);
    const size_t total = prompt_len + (size_t)o->tokens;
    const int t_max = cfg.seq_len;
    context = malloc(total * sizeof *context);
    logits = malloc((size_t)t_max * (size_t)cfg.vocab * sizeof *logits);
    cand = malloc((size_t)cfg.vocab * sizeof *cand);
    if (!context || !logits || !cand) {
        dm_cli_fail(CMD, "out of memory for %zu tokens", total);
        goto done;
    }

    if (dm_backend_open(o->backend, &be) != DM_OK || dm_model_create(be, &cfg, &model) != DM_OK) {
        dm_cli_fail(CMD, "%s", dm_last_error());
        goto done;
    }
    if (dm_checkpoint_load(o->checkpoint, model, &state) != DM_OK) {
        dm_cli_fail(CMD, "cannot load the checkpoint: %s", dm_last_error());
        goto done;
    }

    for (size_t i = 0; i < prompt_len; i++)
        context[i] = (uint8_t)o->prompt[i];
    fwrite(o->prompt, 1, prompt_len, stdout);
    fflush(stdout);

    /* Philox: key = seed, counter {generated token index, 0, DM_RNG_TEXT, checkpoint step}. */
    const uint64_t seed = o->seed >= 0 ? (uint64_t)o->seed : cfg.seed;
    size_t n = prompt_len;
    for (int i = 0; i < o->tokens; i++, n++) {
        /* The context window is seq_len tokens, so only the latest ones are passed. */
        int t = n < (size_t)t_max ? (int)n : t_max;
        if (dm_model_logits(model, context + (n - (size_t)t), t, logits) != DM_OK) {
            fputc('\n', stdout);
            dm_cli_fail(CMD, "generation failed at token %d: %s", i, dm_last_error());
            goto done;
        }
        dm_philox_block r = dm_philox_at(seed, (uint32_t)i, 0, 0, DM_RNG_TEXT, (uint32_t)state.step);
        int next = pick_token(logits + (size_t)(t - 1) * (size_t)cfg.vocab, cfg.vocab, o,
                              dm_uniform_from_word(r.w[0]), cand);
        context[n] = next;
        fputc(next, stdout);
        fflush(stdout);
    }
    fputc('\n', stdout);
    rc = 0;

done:
    if (model)
        dm_model_free(model);
    if (be)
        dm_backend_close(be);
    free(context);
    free(logits);
    free(cand);
    return rc;
}

int dm_cmd_sample(int argc, char **argv)
{
    sample_options o = {NULL, NULL, NULL, 200, 1.0, 0, 1.0, -1};
    const dm_option opts[] = {
        {"checkpoint", DM_OPT_STRING, &o.checkpoint, "FILE", "checkpoint written by dirmoe train (required)", 0, 0,
         NULL},
        {"prompt", DM_OPT_STRING, &o.prompt, "TEXT", "text to continue, as bytes (required)", 0, 0, NULL},
        {"tokens", DM_OPT_INT, &o.tokens, "N", "bytes to generate", 0, 1 << 24, NULL},
        {"temperature", DM_OPT_DOUBLE, &o.temperature, "T", "divides the logits; 0 picks the most likely byte", 0,
         100, NULL},
        {"top-k", DM_OPT_INT, &o.top_k, "K", "sample among the K most likely bytes (0 = all)", 0, 1 << 20, NULL},
        {"top-p", DM_OPT_DOUBLE, &o.top_p, "P", "sample among the most likely bytes whose probability reaches P", 1e-9,
         1, NULL},
        {"seed", DM_OPT_LONG, &o.seed, "S", "Philox key of the sampling noise (-1 = the checkpoint's run seed)", -1,
         9.2e18, NULL},
        {"backend", DM_OPT_STRING, &o.backend, "NAME", "backend plugin (default: $DIRMOE_BACKEND, else auto)", 0, 0,
         NULL},
        {NULL, 0, NULL, NULL, NULL, 0, 0, NULL},
    };

    int rc = dm_cli_parse(CMD, opts, argc, argv, NULL, 0, NULL);
    if (rc == DM_CLI_HELP) {
        dm_options_usage(stdout, CMD, NULL,
                         "Continue --prompt by --tokens bytes with the model of a checkpoint, using deterministic\n"
                         "(evaluation) routing and a context of the last --seq-len bytes. Writes the prompt\n"
                         "and the generated bytes to standard output. The same checkpoint, options, seed and\n"
                         "backend give the same text.",
                         opts);
        return 0;
    }
    if (rc)
        return 1;
    if (!o.checkpoint)
        return dm_cli_fail(CMD, "missing --checkpoint FILE: give the checkpoint.safetensors of a run");
    if (!o.prompt)
        return dm_cli_fail(CMD, "missing --prompt TEXT: give the text to continue");
    return run_sample(&o);
}
