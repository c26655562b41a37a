/* Routing metrics, perplexity and bits per byte, from host arrays. */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dirmoe/metrics.h"

dm_status dm_routing_acc_init(dm_routing_acc *acc, int n_expert, int vocab)
{
    memset(acc, 0, sizeof *acc);
    if (n_expert < 1 || vocab < 1)
        return dm_error(DM_ERR_INVALID, "metrics: invalid routing shape: %d experts, vocabulary %d (both must be >= 1)",
                        n_expert, vocab);

    acc->n_expert = n_expert;
    acc->vocab = vocab;
    acc->count = calloc((size_t)n_expert, sizeof *acc->count);
    acc->joint = calloc((size_t)n_expert * (size_t)vocab, sizeof *acc->joint);
    if (!acc->count || !acc->joint) {
        dm_routing_acc_free(acc);
        return dm_error(DM_ERR_NOMEM, "metrics: out of memory for %d experts x %d token ids", n_expert, vocab);
    }
    return DM_OK;
}

void dm_routing_acc_free(dm_routing_acc *acc)
{
    free(acc->count);
    free(acc->joint);
    memset(acc, 0, sizeof *acc);
}

void dm_routing_acc_reset(dm_routing_acc *acc)
{
    if (!acc->count)
        return;
    memset(acc->count, 0, (size_t)acc->n_expert * sizeof *acc->count);
    memset(acc->joint, 0, (size_t)acc->n_expert * (size_t)acc->vocab * sizeof *acc->joint);
    acc->n_tokens = 0;
    acc->n_assign = 0;
    acc->entropy_sum = 0.0;
    acc->n_entropy = 0;
}

/* Computes the entropy in bits of one row after normalising it. A row that cannot be normalised gives NaN. */
static double row_entropy_bits(const float *p, int e)
{
    double total = 0.0, h = 0.0;

    for (int j = 0; j < e; j++)
        total += p[j];
    if (!(total > 0.0) || !isfinite(total))
        return NAN;

    for (int j = 0; j < e; j++) {
        double q = p[j] / total;
        if (q > 0.0)
            h -= q * log2(q);
    }
    return h;
}

dm_status dm_routing_acc_add(dm_routing_acc *acc, size_t n, const int32_t *mask,
                             const float *probs, const int32_t *tokens)
{
    const int e = acc->n_expert;

    /* Check every token id first, so a bad batch leaves the sums unchanged. */
    for (size_t t = 0; tokens && t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= acc->vocab)
            return dm_error(DM_ERR_INVALID, "metrics: token id %d at position %zu is outside [0, %d)",
                            (int)tokens[t], t, acc->vocab);

    for (size_t t = 0; t < n; t++) {
        const int32_t *row = mask + t * (size_t)e;
        for (int j = 0; j < e; j++) {
            if (!row[j])
                continue;
            acc->count[j]++;
            acc->n_assign++;
            if (tokens)
                acc->joint[(size_t)tokens[t] * (size_t)e + (size_t)j]++;
        }
        if (probs) {
            double h = row_entropy_bits(probs + t * (size_t)e, e);
            if (!isnan(h)) {
                acc->entropy_sum += h;
                acc->n_entropy++;
            }
        }
    }
    acc->n_tokens += n;
    return DM_OK;
}

/* Entropy in bits of counts c[0..n-1] that sum to total. */
static double count_entropy_bits(const uint64_t *c, int n, double total)
{
    double h = 0.0;

    for (int j = 0; j < n; j++) {
        double q = (double)c[j] / total;
        if (q > 0.0)
            h -= q * log2(q);
    }
    return h;
}

void dm_routing_acc_finish(const dm_routing_acc *acc, dm_routing_metrics *out, double *load_share)
{
    const int e = acc->n_expert;
    const double assign = (double)acc->n_assign;

    memset(out, 0, sizeof *out);
    out->n_tokens = acc->n_tokens;
    out->mean_active = acc->n_tokens ? assign / (double)acc->n_tokens : 0.0;
    out->entropy = acc->n_entropy ? acc->entropy_sum / (double)acc->n_entropy : NAN;

    /* Load: share and dead count per expert, CV with the population standard deviation. */
    double mean = assign / e, var = 0.0;
    for (int j = 0; j < e; j++) {
        double c = (double)acc->count[j];
        if (load_share)
            load_share[j] = assign > 0.0 ? c / assign : 0.0;
        if (acc->count[j] == 0)
            out->dead_experts++;
        var += (c - mean) * (c - mean);
    }
    out->load_cv = mean > 0.0 ? sqrt(var / e) / mean : 0.0;

    /* I(X;E) over the (token id, expert) assignment pairs: H(E) - sum_x p(x) H(E | X = x). */
    uint64_t joint_total = 0;
    for (size_t i = 0; i < (size_t)acc->vocab * (size_t)e; i++)
        joint_total += acc->joint[i];
    if (joint_total == 0)
        return;

    uint64_t *marginal = calloc((size_t)e, sizeof *marginal);
    if (!marginal) {
        out->h_expert = out->h_expert_given_token = out->mutual_info = NAN;
        return;
    }

    double total = (double)joint_total, h_cond = 0.0;
    for (int x = 0; x < acc->vocab; x++) {
        const uint64_t *row = acc->joint + (size_t)x * (size_t)e;
        uint64_t row_total = 0;
        for (int j = 0; j < e; j++) {
            row_total += row[j];
            marginal[j] += row[j];
        }
        if (row_total)
            h_cond += ((double)row_total / total) * count_entropy_bits(row, e, (double)row_total);
    }
    out->h_expert = count_entropy_bits(marginal, e, total);
    free(marginal);
    out->h_expert_given_token = h_cond;
    out->mutual_info = out->h_expert - h_cond;
}

double dm_perplexity(double loss_nats)
{
    return exp(loss_nats);
}

double dm_bits_per_byte(double loss_nats)
{
    return loss_nats / log(2.0);
}
