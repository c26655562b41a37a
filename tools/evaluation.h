/* Validation passes and metrics rows shared by `dirmoe train` and `dirmoe eval`. */
#ifndef DM_TOOLS_EVALUATION_H
#define DM_TOOLS_EVALUATION_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cJSON.h>

#include "dirmoe/metrics.h"
#include "dirmoe/model.h"
#include "dirmoe/train.h"

/* Routing metrics of one MoE layer over a validation pass. */
typedef struct dm_eval_layer {
    int layer;                         /* transformer block index */
    int n_expert;
    dm_routing_metrics routing;        /* routing.mean_active is the evaluation count */
    double load_share[DM_MAX_EXPERTS];
} dm_eval_layer;

/* Result of a validation pass: the mean cross-entropy over every token seen. */
typedef struct dm_eval_result {
    double loss;                       /* nats per token */
    int64_t tokens;
    int batches;
    int n_moe;
    dm_eval_layer layers[DM_MAX_LAYERS];
} dm_eval_result;

/*
 * Evaluates `batches` batches of the model's batch size from `ds`, batch i
 * drawn with the validation stream at step i, so every pass over the same
 * data evaluates the same sequences. Routing metrics use the evaluation routing
 * and the input token of each position for I(X;E).
 */
dm_status dm_eval_run(dm_model *model, const dm_dataset *ds, int batches, dm_eval_result *out);

/* Returns the "eval" metrics row: {"type": "eval", "step": ..., "loss": ..., "layers": [...]}. */
cJSON *dm_eval_to_json(const dm_eval_result *res, int64_t step);

/* Prints the result for a person: loss, perplexity, bits per byte and one line per MoE layer. */
void dm_eval_print(FILE *out, const dm_eval_result *res);

/* Returns 1 when bytes[0..n-1] is valid UTF-8; otherwise 0 and the offset of the first bad byte. */
int dm_utf8_valid(const uint8_t *bytes, size_t n, size_t *bad_offset);

/* Appends one JSON row and a newline to f and flushes it. Returns 0, or 1 on a write error. */
int dm_jsonl_write(FILE *f, const cJSON *row);

#endif
