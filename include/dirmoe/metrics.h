/*
 * dirmoe: training and routing metrics computed on the host from plain arrays.
 *
 * The routing metrics of one MoE layer are accumulated over any number of
 * batches (a training interval or a whole evaluation pass) and then reduced:
 * mean active experts per token, per-expert load share, load coefficient of
 * variation, dead experts, router entropy and the mutual information between
 * input token and selected expert. Entropies are in bits. FLOPs per token
 * come from dm_flops_per_token in dirmoe/model.h.
 */
#ifndef DIRMOE_METRICS_H
#define DIRMOE_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "dirmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Running sums of one MoE layer's routing over the tokens seen so far. */
typedef struct dm_routing_acc {
    int n_expert;          /* E */
    int vocab;             /* V: token ids are in [0, V) */
    uint64_t n_tokens;     /* tokens added */
    uint64_t n_assign;     /* (token, expert) assignments added: sum of the masks */
    uint64_t *count;       /* (E) assignments per expert */
    uint64_t *joint;       /* (V,E) assignments per (token id, expert) pair */
    double entropy_sum;    /* sum over tokens of the router entropy in bits */
    uint64_t n_entropy;    /* tokens that contributed to entropy_sum */
} dm_routing_acc;

/* Reduced routing metrics of one layer. */
typedef struct dm_routing_metrics {
    uint64_t n_tokens;
    double mean_active;    /* assignments per token */
    double load_cv;        /* std / mean of the per-expert assignment counts (population std) */
    int dead_experts;      /* experts with no assignment */
    double entropy;        /* mean per-token entropy of the router distribution, bits; NaN if none given */
    double h_expert;       /* H(E) of the assignment pairs, bits */
    double h_expert_given_token; /* H(E|X), bits */
    double mutual_info;    /* I(X;E) = H(E) - H(E|X), bits */
} dm_routing_metrics;

/* Allocates the sums for E experts and V token ids, all zero. */
dm_status dm_routing_acc_init(dm_routing_acc *acc, int n_expert, int vocab);
void dm_routing_acc_free(dm_routing_acc *acc);
/* Sets every sum back to zero and keeps the allocation. */
void dm_routing_acc_reset(dm_routing_acc *acc);

/*
 * Adds N tokens. mask (N,E) int32, nonzero where the token was routed to the
 * expert. probs (N,E) float or NULL: the router's distribution over experts
 * for the entropy (softmax probabilities for top-k and Switch, selection
 * probabilities pi for DirMoE); each row is normalised to sum 1 here, and a
 * row that sums to 0 or to a non-finite value is skipped. tokens (N) int32:
 * the input token id at each position, or NULL to leave the mutual
 * information out. Fails on a token id outside [0, V).
 */
dm_status dm_routing_acc_add(dm_routing_acc *acc, size_t n, const int32_t *mask,
                             const float *probs, const int32_t *tokens);

/* Reduces the sums; writes load_share (E) = count_e / assignments when not NULL. */
void dm_routing_acc_finish(const dm_routing_acc *acc, dm_routing_metrics *out, double *load_share);

/* Language-model figures from a mean cross-entropy in nats per token. With
 * byte-level tokens, bits per byte = loss / ln 2. */
double dm_perplexity(double loss_nats);
double dm_bits_per_byte(double loss_nats);

#ifdef __cplusplus
}
#endif
#endif
