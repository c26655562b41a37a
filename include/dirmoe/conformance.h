/*
 * dirmoe: backend conformance. Runs every op of the registry (dirmoe/opreg.h)
 * on a backend under test and on the reference with identical inputs and
 * compares the outputs.
 *
 * Pass rules per case:
 *  - no NaN where the reference has none, and infinities equal;
 *  - NMSE = sum (a-b)^2 / sum a^2 over the finite elements (a: reference,
 *    b: test; for accumulated outputs both minus their initial values) at
 *    most 1e-7 for forward ops and 1e-6 for gradients, unless the op states a
 *    looser bound with its reason; when sum a^2 = 0, max |b| <= 1e-6;
 *  - integer outputs (masks, slots, counts, Philox words) and the selection
 *    uniforms u drawn from Philox equal;
 *  - routing decisions equal wherever the decision margin exceeds 1e-5;
 *    a flipped row inside the margin is counted, shown and left out of the
 *    float comparison;
 *  - guard elements around every device buffer unchanged, and inputs unchanged.
 */
#ifndef DIRMOE_CONFORMANCE_H
#define DIRMOE_CONFORMANCE_H

#include <stdint.h>

#include "dirmoe/loader.h"
#include "dirmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Margin below which a routing decision may differ between backends. */
#define DM_CONF_DECISION_MARGIN 1e-5

typedef enum dm_conf_result { DM_CONF_PASS = 0, DM_CONF_FAIL = 1, DM_CONF_SKIP = 2 } dm_conf_result;

/* One case: an op under one set of attributes and one kind of data. */
typedef struct dm_conf_row {
    char op[48];
    char case_name[160];     /* size set, variant and data kind, for example "primes trans_a=1 edge" */
    dm_conf_result result;
    double nmse;             /* worst NMSE over the float outputs (0 when none) */
    double bound;            /* the NMSE bound that applied */
    long flips;              /* routing decisions that differ inside the margin */
    char note[320];          /* why it failed or was skipped, or what was compared */
} dm_conf_row;

typedef struct dm_conf_summary {
    int cases, passed, failed, skipped;
    long flips;
} dm_conf_summary;

typedef struct dm_conf_options {
    const char *op_regex;    /* POSIX extended regular expression on op names; NULL for all */
    uint64_t seed;           /* seed of the test data */
} dm_conf_options;

typedef void (*dm_conf_report_fn)(const dm_conf_row *row, void *user);

/*
 * Runs every selected case and calls `report` once per case. Returns DM_OK
 * when the run completed (whatever the cases' results; read `summary`), or
 * an error when the run itself could not proceed (invalid regex, the
 * reference failing an op).
 */
dm_status dm_conformance_run(const dm_backend *reference, const dm_backend *test, const dm_conf_options *opts,
                             dm_conf_report_fn report, void *user, dm_conf_summary *summary);

/*
 * Whole-model check: trains a small DirMoE model for `steps` AdamW steps on
 * both backends from the same parameters and batches, with the router noise
 * drawn by the reference and fed to the backend under test. Fills one row:
 * it fails when a step's loss differs by more than 1e-4 relative or the final
 * parameters' NMSE exceeds 1e-6. Returns an error only when the reference fails.
 */
dm_status dm_conformance_model(dm_backend *reference, dm_backend *test, int steps, dm_conf_row *row);

#ifdef __cplusplus
}
#endif
#endif
