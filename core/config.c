/*
 * The run configuration: defaults, a table of options (option name, JSON key,
 * type, help), parsing from text, validation and JSON round trips. The table
 * drives dm_config_set, dm_config_get, the JSON writer and reader and
 * dm_config_diff, so a new field needs one table line.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "dirmoe/config.h"
#include "dirmoe/model.h"

typedef enum field_type { F_INT, F_DOUBLE, F_U64, F_ENUM, F_RANGE } field_type;

typedef struct field {
    const char *option;     /* option name with dashes */
    const char *key;        /* JSON key (for F_RANGE: the start key; the end key is key2) */
    const char *key2;
    field_type type;
    size_t offset;
    size_t offset2;         /* F_RANGE: the end value */
    const char *choices;    /* F_ENUM: "a|b|c", value = index */
    const char *metavar;
    const char *help;
    int runtime_only;       /* 1: does not change the computation (may differ on resume) */
} field;

#define OFF(f) offsetof(dm_config, f)

static const field fields[] = {
    {"vocab", "vocab", NULL, F_INT, OFF(vocab), 0, NULL, "N", "vocabulary size; 256 for byte-level text", 0},
    {"layers", "n_layer", NULL, F_INT, OFF(n_layer), 0, NULL, "N", "transformer blocks (default 4)", 0},
    {"d-model", "d_model", NULL, F_INT, OFF(d_model), 0, NULL, "N", "residual width (default 256)", 0},
    {"heads", "n_head", NULL, F_INT, OFF(n_head), 0, NULL, "N", "attention heads, must divide d-model (default 4)", 0},
    {"d-ff", "d_ff", NULL, F_INT, OFF(d_ff), 0, NULL, "N", "hidden width of each expert and dense FFN (default 512)", 0},
    {"seq-len", "seq_len", NULL, F_INT, OFF(seq_len), 0, NULL, "T", "tokens per training sequence (default 256)", 0},
    {"router", "router", NULL, F_ENUM, OFF(router), 0, "dirmoe|topk|switch|dense", NULL, "router of the MoE layers (default dirmoe)", 0},
    {"experts", "n_expert", NULL, F_INT, OFF(n_expert), 0, NULL, "E", "experts per MoE layer (default 8)", 0},
    {"k", "k", NULL, F_DOUBLE, OFF(k), 0, NULL, "K", "target active experts per token; fractional allowed for dirmoe, ignored by switch (default 2)", 0},
    {"k-max", "k_max", NULL, F_INT, OFF(k_max), 0, NULL, "N", "at most N experts per token for dirmoe; 0 = --experts (default 0)", 0},
    {"moe-every", "moe_every", NULL, F_INT, OFF(moe_every), 0, NULL, "N", "every N-th block has an MoE FFN, the others a dense FFN (default 1)", 0},
    {"aux-loss", "aux_loss", NULL, F_DOUBLE, OFF(aux_loss), 0, NULL, "X", "load-balancing loss coefficient for topk and switch (default 0.01)", 0},
    {"dirmoe-balance", "dirmoe_balance", NULL, F_INT, OFF(dirmoe_balance), 0, NULL, "0|1", "also apply the load-balancing loss to dirmoe (default 0)", 0},
    {"z-loss", "z_loss", NULL, F_DOUBLE, OFF(z_loss), 0, NULL, "X", "router z-loss coefficient (default 0)", 0},
    {"capacity-factor", "capacity_factor", NULL, F_DOUBLE, OFF(capacity_factor), 0, NULL, "X", "expert capacity ceil(X N k / E) slots; 0 = dropless (default 0)", 0},
    {"beta-b", "beta_b", NULL, F_DOUBLE, OFF(beta_b), 0, NULL, "X", "weight of the Bernoulli KL of dirmoe (default 0.01)", 0},
    {"beta-d", "beta_d", NULL, F_DOUBLE, OFF(beta_d), 0, NULL, "X", "weight of the Dirichlet KL of dirmoe (default 0.001)", 0},
    {"lambda-s", "lambda_s", NULL, F_DOUBLE, OFF(lambda_s), 0, NULL, "X", "weight of (Kbar - k)^2 of dirmoe (default 0.1)", 0},
    {"sparsity", "sparsity", NULL, F_ENUM, OFF(sparsity), 0, "fixed|adaptive", NULL, "fixed: mu = 0; adaptive: dual ascent on mu (default adaptive)", 0},
    {"dual-step", "dual_step", NULL, F_DOUBLE, OFF(dual_step), 0, NULL, "X", "step size of mu += X (Kbar - k) (default 0.01)", 0},
    {"tau", "tau_start", "tau_end", F_RANGE, OFF(tau_start), OFF(tau_end), NULL, "START:END", "Gumbel-Sigmoid temperature schedule (default 1:1)", 0},
    {"alpha0", "alpha0_start", "alpha0_end", F_RANGE, OFF(alpha0_start), OFF(alpha0_end), NULL, "START:END", "Dirichlet prior concentration schedule (default 1:1)", 0},
    {"schedule", "schedule", NULL, F_ENUM, OFF(schedule), 0, "linear|cosine|exp", NULL, "shape of the tau and alpha0 schedules (default linear)", 0},
    {"explore", "explore", NULL, F_DOUBLE, OFF(explore), 0, NULL, "X", "fraction of training before KL_B and sparsity ramp in, at most 0.5 (default 0.2)", 0},
    {"kl-b", "kl_b", NULL, F_ENUM, OFF(kl_b), 0, "batch|token", NULL, "Bernoulli KL on the batch-mean pi or per token (default batch)", 0},
    {"selection", "selection", NULL, F_ENUM, OFF(selection), 0, "hard|soft", NULL, "hard: sampled mask; soft: relaxed gate, all experts computed (default hard)", 0},
    {"alpha-min", "alpha_min", NULL, F_DOUBLE, OFF(alpha_min), 0, NULL, "X", "lower bound of the Dirichlet concentration (default 0.01)", 0},
    {"alpha-max", "alpha_max", NULL, F_DOUBLE, OFF(alpha_max), 0, NULL, "X", "upper bound of the Dirichlet concentration (default 10000)", 0},
    {"select-init", "select_init", NULL, F_DOUBLE, OFF(select_init), 0, NULL, "P", "initial selection probability pi of every expert (default 0.5)", 0},
    {"batch", "batch", NULL, F_INT, OFF(batch), 0, NULL, "B", "sequences per step (default 16)", 0},
    {"steps", "steps", NULL, F_INT, OFF(steps), 0, NULL, "N", "optimiser steps (default 1000)", 0},
    {"lr", "lr", NULL, F_DOUBLE, OFF(lr), 0, NULL, "X", "peak learning rate (default 0.001)", 0},
    {"lr-min-frac", "lr_min_frac", NULL, F_DOUBLE, OFF(lr_min_frac), 0, NULL, "X", "cosine decay ends at lr * X (default 0.1)", 0},
    {"warmup", "warmup", NULL, F_INT, OFF(warmup), 0, NULL, "N", "linear learning-rate warm-up steps (default 100)", 0},
    {"weight-decay", "weight_decay", NULL, F_DOUBLE, OFF(weight_decay), 0, NULL, "X", "AdamW decoupled weight decay on matrices (default 0.1)", 0},
    {"beta1", "beta1", NULL, F_DOUBLE, OFF(beta1), 0, NULL, "X", "AdamW first-moment decay (default 0.9)", 0},
    {"beta2", "beta2", NULL, F_DOUBLE, OFF(beta2), 0, NULL, "X", "AdamW second-moment decay (default 0.95)", 0},
    {"adam-eps", "adam_eps", NULL, F_DOUBLE, OFF(adam_eps), 0, NULL, "X", "AdamW epsilon (default 1e-8)", 0},
    {"clip", "clip", NULL, F_DOUBLE, OFF(clip), 0, NULL, "X", "global gradient-norm clip; 0 = off (default 1)", 0},
    {"seed", "seed", NULL, F_U64, OFF(seed), 0, NULL, "N", "run seed for initialisation, data and router noise (default 1337)", 0},
    {"val-fraction", "val_fraction", NULL, F_DOUBLE, OFF(val_fraction), 0, NULL, "X", "share of the data file held out for validation (default 0.1)", 0},
    {"eval-every", "eval_every", NULL, F_INT, OFF(eval_every), 0, NULL, "N", "steps between evaluations; 0 = at the end only (default 100)", 1},
    {"eval-batches", "eval_batches", NULL, F_INT, OFF(eval_batches), 0, NULL, "N", "validation batches per evaluation (default 8)", 1},
    {"log-every", "log_every", NULL, F_INT, OFF(log_every), 0, NULL, "N", "steps between metrics rows (default 10)", 1},
    {"save-every", "save_every", NULL, F_INT, OFF(save_every), 0, NULL, "N", "steps between checkpoints; 0 = at the end only (default 0)", 1},
};

#define N_FIELDS ((int)(sizeof fields / sizeof fields[0]))

void dm_config_defaults(dm_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);

    cfg->vocab = 256;
    cfg->n_layer = 4;
    cfg->d_model = 256;
    cfg->n_head = 4;
    cfg->d_ff = 512;
    cfg->seq_len = 256;

    cfg->router = DM_ROUTER_DIRMOE;
    cfg->n_expert = 8;
    cfg->k = 2.0;
    cfg->k_max = 0;
    cfg->moe_every = 1;
    cfg->aux_loss = 0.01;
    cfg->dirmoe_balance = 0;
    cfg->z_loss = 0.0;
    cfg->capacity_factor = 0.0;

    cfg->beta_b = 0.01;
    cfg->beta_d = 0.001;
    cfg->lambda_s = 0.1;
    cfg->sparsity = DM_SPARSITY_ADAPTIVE;
    cfg->dual_step = 0.01;
    cfg->tau_start = 1.0;
    cfg->tau_end = 1.0;
    cfg->alpha0_start = 1.0;
    cfg->alpha0_end = 1.0;
    cfg->schedule = DM_SCHEDULE_LINEAR;
    cfg->explore = 0.2;
    cfg->kl_b = 0;          /* DM_KL_B_BATCH */
    cfg->selection = 0;     /* DM_SELECTION_HARD */
    cfg->alpha_min = 1e-2;
    cfg->alpha_max = 1e4;
    cfg->select_init = 0.5;

    cfg->batch = 16;
    cfg->steps = 1000;
    cfg->lr = 1e-3;
    cfg->lr_min_frac = 0.1;
    cfg->warmup = 100;
    cfg->weight_decay = 0.1;
    cfg->beta1 = 0.9;
    cfg->beta2 = 0.95;
    cfg->adam_eps = 1e-8;
    cfg->clip = 1.0;
    cfg->seed = 1337;

    cfg->val_fraction = 0.1;
    cfg->eval_every = 100;
    cfg->eval_batches = 8;
    cfg->log_every = 10;
    cfg->save_every = 0;
}

double dm_config_target_k(const dm_config *cfg)
{
    if (cfg->router == DM_ROUTER_SWITCH || cfg->router == DM_ROUTER_DENSE)
        return 1.0;
    return cfg->k;
}

int dm_config_k_max(const dm_config *cfg)
{
    return cfg->k_max > 0 ? cfg->k_max : cfg->n_expert;
}

int dm_config_is_moe_layer(const dm_config *cfg, int layer)
{
    if (cfg->router == DM_ROUTER_DENSE || cfg->moe_every < 1)
        return 0;
    return (layer + 1) % cfg->moe_every == 0;
}

int dm_config_n_moe_layers(const dm_config *cfg)
{
    int n = 0;
    for (int l = 0; l < cfg->n_layer; l++)
        n += dm_config_is_moe_layer(cfg, l);
    return n;
}

/* ---- enum names ----------------------------------------------------------- */

/* Writes the index-th word of "a|b|c" into buf; returns 0 when out of range. */
static int choice_word(const char *choices, int index, char *buf, size_t len)
{
    const char *p = choices;
    for (int i = 0; i < index; i++) {
        p = strchr(p, '|');
        if (!p)
            return 0;
        p++;
    }
    size_t n = strcspn(p, "|");
    if (n + 1 > len)
        return 0;
    memcpy(buf, p, n);
    buf[n] = '\0';
    return 1;
}

static int choice_index(const char *choices, const char *word)
{
    char buf[32];
    for (int i = 0; choice_word(choices, i, buf, sizeof buf); i++)
        if (strcmp(buf, word) == 0)
            return i;
    return -1;
}

const char *dm_router_name(dm_router_kind r)
{
    switch (r) {
    case DM_ROUTER_DIRMOE: return "dirmoe";
    case DM_ROUTER_TOPK: return "topk";
    case DM_ROUTER_SWITCH: return "switch";
    case DM_ROUTER_DENSE: return "dense";
    }
    return "unknown";
}

/* ---- field access --------------------------------------------------------- */

static int *int_at(dm_config *cfg, size_t off) { return (int *)(void *)((char *)cfg + off); }
static double *dbl_at(dm_config *cfg, size_t off) { return (double *)(void *)((char *)cfg + off); }
static uint64_t *u64_at(dm_config *cfg, size_t off) { return (uint64_t *)(void *)((char *)cfg + off); }
static int int_get(const dm_config *cfg, size_t off) { return *(const int *)(const void *)((const char *)cfg + off); }
static double dbl_get(const dm_config *cfg, size_t off) { return *(const double *)(const void *)((const char *)cfg + off); }
static uint64_t u64_get(const dm_config *cfg, size_t off) { return *(const uint64_t *)(const void *)((const char *)cfg + off); }

/* Finds a field by option name; dashes and underscores are interchangeable. */
static const field *find_field(const char *name)
{
    char norm[64];
    size_t n = strlen(name);
    if (n >= sizeof norm)
        return NULL;
    for (size_t i = 0; i <= n; i++)
        norm[i] = name[i] == '_' ? '-' : name[i];
    for (int i = 0; i < N_FIELDS; i++)
        if (strcmp(fields[i].option, norm) == 0)
            return &fields[i];
    return NULL;
}

static int parse_double(const char *text, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end != '\0' || errno == ERANGE || !isfinite(v))
        return 0;
    *out = v;
    return 1;
}

static int parse_int(const char *text, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (end == text || *end != '\0' || errno == ERANGE || v < -2147483647L || v > 2147483647L)
        return 0;
    *out = (int)v;
    return 1;
}

static int parse_u64(const char *text, uint64_t *out)
{
    char *end;
    if (text[0] == '-' || text[0] == '\0')
        return 0;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 0);
    if (*end != '\0' || errno == ERANGE)
        return 0;
    *out = (uint64_t)v;
    return 1;
}

dm_status dm_config_set(dm_config *cfg, const char *name, const char *value)
{
    const field *f = find_field(name);
    if (!f)
        return dm_error(DM_ERR_NOT_FOUND, "unknown option --%s: run 'dirmoe train --help' for the list", name);

    switch (f->type) {
    case F_INT:
        if (!parse_int(value, int_at(cfg, f->offset)))
            return dm_error(DM_ERR_INVALID, "--%s: '%s' is not an integer", f->option, value);
        return DM_OK;
    case F_DOUBLE:
        if (!parse_double(value, dbl_at(cfg, f->offset)))
            return dm_error(DM_ERR_INVALID, "--%s: '%s' is not a finite number", f->option, value);
        return DM_OK;
    case F_U64:
        if (!parse_u64(value, u64_at(cfg, f->offset)))
            return dm_error(DM_ERR_INVALID, "--%s: '%s' is not an unsigned 64-bit integer",
                            f->option, value);
        return DM_OK;
    case F_ENUM: {
        int idx = choice_index(f->choices, value);
        if (idx < 0)
            return dm_error(DM_ERR_INVALID, "--%s: '%s' is not one of %s", f->option, value, f->choices);
        *int_at(cfg, f->offset) = idx;
        return DM_OK;
    }
    case F_RANGE: {
        char buf[128];
        double a, b;
        snprintf(buf, sizeof buf, "%s", value);
        char *colon = strchr(buf, ':');
        if (colon) {
            *colon = '\0';
            if (!parse_double(buf, &a) || !parse_double(colon + 1, &b))
                return dm_error(DM_ERR_INVALID, "--%s: '%s' is not START:END with two numbers",
                                f->option, value);
        } else {
            if (!parse_double(buf, &a))
                return dm_error(DM_ERR_INVALID, "--%s: '%s' is not a number or START:END",
                                f->option, value);
            b = a;
        }
        *dbl_at(cfg, f->offset) = a;
        *dbl_at(cfg, f->offset2) = b;
        return DM_OK;
    }
    }
    return dm_error(DM_ERR_INVALID, "--%s: unsupported option type", f->option);
}

static void format_field(const dm_config *cfg, const field *f, char *buf, size_t len)
{
    switch (f->type) {
    case F_INT:
        snprintf(buf, len, "%d", int_get(cfg, f->offset));
        break;
    case F_DOUBLE:
        snprintf(buf, len, "%.17g", dbl_get(cfg, f->offset));
        break;
    case F_U64:
        snprintf(buf, len, "%" PRIu64, u64_get(cfg, f->offset));
        break;
    case F_ENUM:
        if (!choice_word(f->choices, int_get(cfg, f->offset), buf, len))
            snprintf(buf, len, "%d", int_get(cfg, f->offset));
        break;
    case F_RANGE:
        snprintf(buf, len, "%.17g:%.17g", dbl_get(cfg, f->offset), dbl_get(cfg, f->offset2));
        break;
    }
}

dm_status dm_config_get(const dm_config *cfg, const char *name, char *buf, size_t len)
{
    const field *f = find_field(name);
    if (!f)
        return dm_error(DM_ERR_NOT_FOUND, "unknown option --%s", name);
    format_field(cfg, f, buf, len);
    return DM_OK;
}

int dm_config_option_count(void)
{
    return N_FIELDS;
}

const dm_config_option *dm_config_option_at(int i)
{
    static dm_config_option table[sizeof fields / sizeof fields[0]];
    static int filled;

    if (i < 0 || i >= N_FIELDS)
        return NULL;
    if (!filled) {
        /* Filled once from the constant table; writing identical values is harmless. */
        for (int j = 0; j < N_FIELDS; j++) {
            table[j].name = fields[j].option;
            table[j].metavar = fields[j].type == F_ENUM ? fields[j].choices : fields[j].metavar;
            table[j].help = fields[j].help;
            table[j].is_choice = fields[j].type == F_ENUM;
        }
        filled = 1;
    }
    return &table[i];
}

/* ---- validation ----------------------------------------------------------- */

dm_status dm_config_validate(const dm_config *c)
{
#define REQUIRE(cond, ...) do { if (!(cond)) return dm_error(DM_ERR_INVALID, __VA_ARGS__); } while (0)
    REQUIRE(c->vocab == 256, "--vocab %d is invalid: byte-level data needs 256", c->vocab);
    REQUIRE(c->n_layer >= 1 && c->n_layer <= DM_MAX_LAYERS, "--layers %d is out of range: use 1 to %d",
            c->n_layer, DM_MAX_LAYERS);
    REQUIRE(c->d_model >= 1 && c->d_model <= 65536, "--d-model %d is out of range: use 1 to 65536", c->d_model);
    REQUIRE(c->n_head >= 1 && c->d_model % c->n_head == 0,
            "--heads %d is invalid: it must be at least 1 and divide --d-model %d", c->n_head, c->d_model);
    REQUIRE(c->d_ff >= 1 && c->d_ff <= 1048576, "--d-ff %d is out of range: use 1 to 1048576", c->d_ff);
    REQUIRE(c->seq_len >= 1 && c->seq_len <= 65536, "--seq-len %d is out of range: use 1 to 65536", c->seq_len);

    REQUIRE(c->router >= DM_ROUTER_DIRMOE && c->router <= DM_ROUTER_DENSE,
            "--router %d is invalid: use dirmoe, topk, switch or dense", (int)c->router);
    REQUIRE(c->n_expert >= 1 && c->n_expert <= DM_MAX_EXPERTS, "--experts %d is out of range: use 1 to %d",
            c->n_expert, DM_MAX_EXPERTS);
    REQUIRE(c->k_max >= 0 && c->k_max <= c->n_expert,
            "--k-max %d is out of range: use 1 to --experts %d, or 0 for all experts", c->k_max, c->n_expert);
    REQUIRE(c->moe_every >= 1, "--moe-every %d is invalid: use 1 or more", c->moe_every);
    if (c->router == DM_ROUTER_DIRMOE) {
        int kmax = dm_config_k_max(c);
        REQUIRE(isfinite(c->k) && c->k >= 1.0 && c->k <= kmax,
                "--k %g is out of range for dirmoe: use 1 <= k <= k-max (%d)", c->k, kmax);
    } else if (c->router == DM_ROUTER_TOPK) {
        REQUIRE(c->k >= 1.0 && c->k <= c->n_expert && c->k == floor(c->k),
                "--k %g is invalid for topk: use an integer from 1 to --experts %d", c->k, c->n_expert);
    }
    REQUIRE(c->aux_loss >= 0.0, "--aux-loss %g is invalid: use 0 or more", c->aux_loss);
    REQUIRE(c->dirmoe_balance == 0 || c->dirmoe_balance == 1, "--dirmoe-balance %d is invalid: use 0 or 1",
            c->dirmoe_balance);
    /* TODO: the balance op takes softmax probabilities of contiguous (N,E) logits, which the
     * dirmoe router (N,2E) does not produce; until then the option is rejected. */
    REQUIRE(c->dirmoe_balance == 0, "--dirmoe-balance 1 is not supported yet: leave it at 0");
    REQUIRE(c->z_loss >= 0.0, "--z-loss %g is invalid: use 0 or more", c->z_loss);
    REQUIRE(c->capacity_factor >= 0.0 && c->capacity_factor <= 1e6,
            "--capacity-factor %g is invalid: use 0 (dropless) or a positive factor", c->capacity_factor);

    REQUIRE(c->beta_b >= 0.0, "--beta-b %g is invalid: use 0 or more", c->beta_b);
    REQUIRE(c->beta_d >= 0.0, "--beta-d %g is invalid: use 0 or more", c->beta_d);
    REQUIRE(c->lambda_s >= 0.0, "--lambda-s %g is invalid: use 0 or more", c->lambda_s);
    REQUIRE(c->sparsity == DM_SPARSITY_FIXED || c->sparsity == DM_SPARSITY_ADAPTIVE,
            "--sparsity %d is invalid: use fixed or adaptive", (int)c->sparsity);
    REQUIRE(c->dual_step >= 0.0, "--dual-step %g is invalid: use 0 or more", c->dual_step);
    REQUIRE(c->tau_start > 0.0 && c->tau_end > 0.0, "--tau %g:%g is invalid: both ends must be > 0",
            c->tau_start, c->tau_end);
    REQUIRE(c->alpha0_start > 0.0 && c->alpha0_end > 0.0, "--alpha0 %g:%g is invalid: both ends must be > 0",
            c->alpha0_start, c->alpha0_end);
    REQUIRE(c->schedule >= DM_SCHEDULE_LINEAR && c->schedule <= DM_SCHEDULE_EXP,
            "--schedule %d is invalid: use linear, cosine or exp", (int)c->schedule);
    REQUIRE(c->explore >= 0.0 && c->explore <= 0.5, "--explore %g is out of range: use 0 to 0.5", c->explore);
    REQUIRE(c->kl_b == 0 || c->kl_b == 1, "--kl-b %d is invalid: use batch or token", c->kl_b);
    REQUIRE(c->selection == 0 || c->selection == 1, "--selection %d is invalid: use hard or soft", c->selection);
    REQUIRE(c->alpha_min >= 1e-3 && c->alpha_min < c->alpha_max,
            "--alpha-min %g is invalid: use at least 1e-3 and less than --alpha-max %g", c->alpha_min,
            c->alpha_max);
    REQUIRE(c->alpha_max <= 1e4,
            "--alpha-max %g is out of range: the Gamma gradient is verified up to 1e4", c->alpha_max);
    REQUIRE(c->select_init > 0.0 && c->select_init < 1.0,
            "--select-init %g is out of range: use a probability strictly between 0 and 1", c->select_init);

    REQUIRE(c->batch >= 1, "--batch %d is invalid: use 1 or more", c->batch);
    REQUIRE(c->steps >= 1, "--steps %d is invalid: use 1 or more", c->steps);
    REQUIRE(c->lr > 0.0 && c->lr < 10.0, "--lr %g is out of range: use a value in (0, 10)", c->lr);
    REQUIRE(c->lr_min_frac >= 0.0 && c->lr_min_frac <= 1.0, "--lr-min-frac %g is out of range: use 0 to 1",
            c->lr_min_frac);
    REQUIRE(c->warmup >= 0, "--warmup %d is invalid: use 0 or more", c->warmup);
    REQUIRE(c->weight_decay >= 0.0, "--weight-decay %g is invalid: use 0 or more", c->weight_decay);
    REQUIRE(c->beta1 >= 0.0 && c->beta1 < 1.0, "--beta1 %g is out of range: use [0, 1)", c->beta1);
    REQUIRE(c->beta2 >= 0.0 && c->beta2 < 1.0, "--beta2 %g is out of range: use [0, 1)", c->beta2);
    REQUIRE(c->adam_eps > 0.0, "--adam-eps %g is invalid: use a positive value", c->adam_eps);
    REQUIRE(c->clip >= 0.0, "--clip %g is invalid: use 0 (off) or a positive norm", c->clip);

    REQUIRE(c->val_fraction >= 0.0 && c->val_fraction < 1.0, "--val-fraction %g is out of range: use [0, 1)",
            c->val_fraction);
    REQUIRE(c->eval_every >= 0, "--eval-every %d is invalid: use 0 or more", c->eval_every);
    REQUIRE(c->eval_batches >= 1, "--eval-batches %d is invalid: use 1 or more", c->eval_batches);
    REQUIRE(c->log_every >= 1, "--log-every %d is invalid: use 1 or more", c->log_every);
    REQUIRE(c->save_every >= 0, "--save-every %d is invalid: use 0 or more", c->save_every);

    /* Router noise uses counter word 0 = token * E + expert, which must fit 32 bits. */
    double elements = (double)c->batch * c->seq_len * c->n_expert;
    REQUIRE(elements < 4294967296.0,
            "--batch %d x --seq-len %d x --experts %d = %.0f exceeds the 2^32 router noise elements: "
            "reduce the batch", c->batch, c->seq_len, c->n_expert, elements);
    /* Tensor sizes are passed to ops as int: the widest activation is (B*T, V) and (B*T*E). */
    REQUIRE((double)c->batch * c->seq_len * (c->vocab > 4 * c->d_model ? c->vocab : 4 * c->d_model) <
                2147483647.0,
            "--batch %d x --seq-len %d is too large for 32-bit tensor indices: reduce the batch",
            c->batch, c->seq_len);
#undef REQUIRE
    return DM_OK;
}

/* ---- JSON ----------------------------------------------------------------- */

cJSON *dm_config_to_json(const dm_config *cfg)
{
    cJSON *obj = cJSON_CreateObject();
    if (!obj)
        return NULL;

    for (int i = 0; i < N_FIELDS; i++) {
        const field *f = &fields[i];
        cJSON *item = NULL, *item2 = NULL;
        char buf[64];
        switch (f->type) {
        case F_INT:
            item = cJSON_CreateNumber(int_get(cfg, f->offset));
            break;
        case F_DOUBLE:
            item = cJSON_CreateNumber(dbl_get(cfg, f->offset));
            break;
        case F_U64:
            snprintf(buf, sizeof buf, "%" PRIu64, u64_get(cfg, f->offset));
            item = cJSON_CreateString(buf);
            break;
        case F_ENUM:
            format_field(cfg, f, buf, sizeof buf);
            item = cJSON_CreateString(buf);
            break;
        case F_RANGE:
            item = cJSON_CreateNumber(dbl_get(cfg, f->offset));
            item2 = cJSON_CreateNumber(dbl_get(cfg, f->offset2));
            if (!item2 || !cJSON_AddItemToObject(obj, f->key2, item2)) {
                cJSON_Delete(item2);
                cJSON_Delete(item);
                cJSON_Delete(obj);
                return NULL;
            }
            break;
        }
        if (!item || !cJSON_AddItemToObject(obj, f->key, item)) {
            cJSON_Delete(item);
            cJSON_Delete(obj);
            return NULL;
        }
    }
    return obj;
}

char *dm_config_to_json_string(const dm_config *cfg)
{
    cJSON *obj = dm_config_to_json(cfg);
    if (!obj)
        return NULL;
    char *text = cJSON_PrintUnformatted(obj);
    cJSON_Delete(obj);
    return text;
}

/* Reads one JSON value into the field at `off`; key names the key for messages. */
static dm_status read_json_value(dm_config *cfg, const field *f, size_t off, const char *key,
                                 const cJSON *item)
{
    switch (f->type) {
    case F_INT: {
        double v = item->valuedouble;
        if (!cJSON_IsNumber(item) || v != floor(v) || fabs(v) > 2147483647.0)
            return dm_error(DM_ERR_FORMAT, "configuration key \"%s\" must be an integer", key);
        *int_at(cfg, off) = (int)v;
        return DM_OK;
    }
    case F_DOUBLE:
    case F_RANGE:
        if (!cJSON_IsNumber(item))
            return dm_error(DM_ERR_FORMAT, "configuration key \"%s\" must be a number", key);
        *dbl_at(cfg, off) = item->valuedouble;
        return DM_OK;
    case F_U64:
        if (cJSON_IsString(item) && parse_u64(item->valuestring, u64_at(cfg, off)))
            return DM_OK;
        if (cJSON_IsNumber(item) && item->valuedouble >= 0 && item->valuedouble < 9007199254740992.0 &&
            item->valuedouble == floor(item->valuedouble)) {
            *u64_at(cfg, off) = (uint64_t)item->valuedouble;
            return DM_OK;
        }
        return dm_error(DM_ERR_FORMAT, "configuration key \"%s\" must be an unsigned integer (as a string)",
                        key);
    case F_ENUM: {
        int idx = cJSON_IsString(item) ? choice_index(f->choices, item->valuestring) : -1;
        if (idx < 0)
            return dm_error(DM_ERR_FORMAT, "configuration key \"%s\" must be one of %s", key, f->choices);
        *int_at(cfg, off) = idx;
        return DM_OK;
    }
    }
    return dm_error(DM_ERR_FORMAT, "configuration key \"%s\" has an unsupported type", key);
}

dm_status dm_config_from_json(const cJSON *json, dm_config *out)
{
    dm_config cfg;
    dm_config_defaults(&cfg);

    if (!cJSON_IsObject(json))
        return dm_error(DM_ERR_FORMAT, "configuration is not a JSON object");

    const cJSON *item;
    cJSON_ArrayForEach(item, json) {
        const char *key = item->string ? item->string : "";
        int found = 0;
        for (int i = 0; i < N_FIELDS && !found; i++) {
            const field *f = &fields[i];
            dm_status st = DM_OK;
            if (strcmp(f->key, key) == 0) {
                st = read_json_value(&cfg, f, f->offset, key, item);
                found = 1;
            } else if (f->key2 && strcmp(f->key2, key) == 0) {
                st = read_json_value(&cfg, f, f->offset2, key, item);
                found = 1;
            }
            if (st)
                return st;
        }
        if (!found)
            return dm_error(DM_ERR_FORMAT, "configuration has an unknown key \"%s\"", key);
    }
    *out = cfg;
    return DM_OK;
}

dm_status dm_config_from_json_string(const char *text, dm_config *out)
{
    cJSON *json = cJSON_Parse(text);
    if (!json)
        return dm_error(DM_ERR_FORMAT, "configuration is not valid JSON");
    dm_status st = dm_config_from_json(json, out);
    cJSON_Delete(json);
    return st;
}

int dm_config_diff(const dm_config *a, const dm_config *b, int all, char *name, char *va, char *vb,
                   size_t len)
{
    for (int i = 0; i < N_FIELDS; i++) {
        const field *f = &fields[i];
        if (f->runtime_only && !all)
            continue;
        char ta[96], tb[96];
        format_field(a, f, ta, sizeof ta);
        format_field(b, f, tb, sizeof tb);
        if (strcmp(ta, tb) != 0) {
            snprintf(name, len, "%s", f->option);
            snprintf(va, len, "%s", ta);
            snprintf(vb, len, "%s", tb);
            return 1;
        }
    }
    return 0;
}
