/* Validation passes and metrics rows shared by `dirmoe train` and `dirmoe eval`. */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "evaluation.h"

dm_status dm_eval_run(dm_model *model, const dm_dataset *ds, int batches, dm_eval_result *out)
{
    const dm_config *cfg = dm_model_config(model);
    const dm_run_opts opts = {.want_routing = 1};
    dm_routing_acc acc[DM_MAX_LAYERS];
    dm_batch batch;
    dm_status st;
    double loss_sum = 0.0;

    memset(out, 0, sizeof *out);
    memset(acc, 0, sizeof acc);
    st = dm_batch_alloc(&batch, cfg->batch, cfg->seq_len);
    if (st != DM_OK)
        return st;

    const int n_moe = dm_config_n_moe_layers(cfg);
    for (int i = 0; i < n_moe && st == DM_OK; i++)
        st = dm_routing_acc_init(&acc[i], cfg->n_expert, cfg->vocab);
    for (int l = 0, i = 0; l < cfg->n_layer; l++)
        if (dm_config_is_moe_layer(cfg, l))
            out->layers[i++].layer = l;

    const size_t n_tokens = (size_t)cfg->batch * (size_t)cfg->seq_len;
    for (int b = 0; b < batches && st == DM_OK; b++) {
        dm_step_stats stats;

        st = dm_data_sample(ds, cfg->seed, DM_DATA_STREAM_VAL, (uint32_t)b, &batch);
        if (st != DM_OK)
            break;
        st = dm_model_evaluate(model, &batch, &opts, &stats);
        if (st != DM_OK)
            break;

        /* Weight each batch by its tokens: all batches have B x T of them. */
        loss_sum += stats.ce;
        for (int i = 0; i < stats.n_moe && i < n_moe && st == DM_OK; i++) {
            const dm_layer_stats *ls = &stats.layers[i];
            if (ls->mask)
                st = dm_routing_acc_add(&acc[i], n_tokens, ls->mask, ls->probs, batch.inputs);
        }
        out->batches++;
    }

    if (st == DM_OK) {
        out->loss = out->batches ? loss_sum / out->batches : NAN;
        out->tokens = (int64_t)out->batches * (int64_t)n_tokens;
        out->n_moe = n_moe;
        for (int i = 0; i < n_moe; i++) {
            out->layers[i].n_expert = cfg->n_expert;
            dm_routing_acc_finish(&acc[i], &out->layers[i].routing, out->layers[i].load_share);
        }
    }
    for (int i = 0; i < n_moe; i++)
        dm_routing_acc_free(&acc[i]);
    dm_batch_free(&batch);
    return st;
}

cJSON *dm_eval_to_json(const dm_eval_result *res, int64_t step)
{
    cJSON *row = cJSON_CreateObject();
    cJSON *layers = cJSON_CreateArray();

    cJSON_AddStringToObject(row, "type", "eval");
    cJSON_AddNumberToObject(row, "step", (double)step);
    cJSON_AddNumberToObject(row, "loss", res->loss);
    cJSON_AddNumberToObject(row, "ppl", dm_perplexity(res->loss));
    cJSON_AddNumberToObject(row, "bpb", dm_bits_per_byte(res->loss));
    cJSON_AddNumberToObject(row, "tokens", (double)res->tokens);

    for (int i = 0; i < res->n_moe; i++) {
        const dm_eval_layer *l = &res->layers[i];
        const dm_routing_metrics *m = &l->routing;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "layer", l->layer);
        cJSON_AddNumberToObject(o, "active", m->mean_active);
        cJSON_AddItemToObject(o, "load", cJSON_CreateDoubleArray(l->load_share, l->n_expert));
        cJSON_AddNumberToObject(o, "load_cv", m->load_cv);
        cJSON_AddNumberToObject(o, "dead", m->dead_experts);
        cJSON_AddNumberToObject(o, "entropy", m->entropy);
        cJSON_AddNumberToObject(o, "h_expert", m->h_expert);
        cJSON_AddNumberToObject(o, "h_expert_given_token", m->h_expert_given_token);
        cJSON_AddNumberToObject(o, "mutual_info", m->mutual_info);
        cJSON_AddItemToArray(layers, o);
    }
    cJSON_AddItemToObject(row, "layers", layers);
    return row;
}

void dm_eval_print(FILE *out, const dm_eval_result *res)
{
    fprintf(out, "loss %.4f nats/byte  perplexity %.3f  bits/byte %.4f  (%lld tokens in %d batch%s)\n", res->loss,
            dm_perplexity(res->loss), dm_bits_per_byte(res->loss), (long long)res->tokens, res->batches,
            res->batches == 1 ? "" : "es");
    for (int i = 0; i < res->n_moe; i++) {
        const dm_eval_layer *l = &res->layers[i];
        const dm_routing_metrics *m = &l->routing;
        fprintf(out,
                "layer %d: active %.3f experts/token  load CV %.3f  dead %d/%d  router entropy %.3f bits  "
                "I(X;E) %.3f bits (H(E) %.3f, H(E|X) %.3f)\n",
                l->layer, m->mean_active, m->load_cv, m->dead_experts, l->n_expert, m->entropy, m->mutual_info,
                m->h_expert, m->h_expert_given_token);
        fprintf(out, "  load share:");
        for (int e = 0; e < l->n_expert; e++)
            fprintf(out, " %.3f", l->load_share[e]);
        fputc('\n', out);
    }
}

int dm_utf8_valid(const uint8_t *s, size_t n, size_t *bad_offset)
{
    size_t i = 0;

    while (i < n) {
        uint8_t c = s[i];
        size_t len;
        uint32_t cp;

        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4;
            cp = c & 0x07;
        } else {
            break;
        }
        if (i + len > n)
            break;

        size_t j = 1;
        for (; j < len && (s[i + j] & 0xC0) == 0x80; j++)
            cp = (cp << 6) | (s[i + j] & 0x3F);
        if (j < len)
            break;

        /* Reject overlong forms, UTF-16 surrogates and code points past U+10FFFF. */
        static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[len] || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
            break;
        i += len;
    }
    if (i < n && bad_offset)
        *bad_offset = i;
    return i >= n;
}

int dm_jsonl_write(FILE *f, const cJSON *row)
{
    char *text = cJSON_PrintUnformatted(row);
    int bad;

    if (!text)
        return 1;
    bad = fputs(text, f) == EOF || fputc('\n', f) == EOF || fflush(f) != 0;
    free(text);
    return bad;
}
