/*
 * Backend conformance (rules in dirmoe/conformance.h): for each op, size set,
 * attribute variant and data kind, generate inputs on the host, run the op on
 * the reference and on the backend under test through dm_op_run_ex with guard
 * regions, and compare.
 */
#include "config.h"

#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dirmoe/conformance.h"
#include "dirmoe/opreg.h"

#define GUARD 16
#define GUARD_BITS 0x7fc0deadu  /* a quiet NaN: a kernel that reads a guard spreads NaN */

/* Size sets: 1, primes, and sizes that are not multiples of common work-group sizes. */
static const struct {
    const char *name;
    const char *attrs;
} size_sets[] = {
    {"ones", "N=1 E=1 C=1 NH=1 V=2 B=1 T=1 M=1 K=1 n=1 S=1 k=1"},
    {"primes", "N=17 E=3 C=17 NH=1 V=127 B=3 T=17 M=17 K=3 n=127 S=17 k=2"},
    {"odd", "N=127 E=8 C=34 NH=2 V=257 B=2 T=33 M=33 K=65 n=1031 S=67 k=2"},
};

/* Attribute variants per op; ops not listed run once with their defaults. */
static const struct {
    const char *op;
    const char *variants[6];
} op_variants[] = {
    {"gemm", {"trans_a=0", "trans_a=1", "trans_b=1 beta=0.5", "trans_a=1 trans_b=1 alpha=-2 beta=1"}},
    {"axpy", {"a=-0.75"}},
    {"scale", {"a=3.5"}},
    {"dispatch_build", {"capacity=0", "capacity=2"}},
    {"philox", {"seed=1234", "seed=18446744073709551615 index_base=4000000000 attempt=3 layer=5 purpose=3 step=9"}},
    {"gamma_sample", {"seed=1234", "seed=99 step=3 layer=2 token_base=11"}},
    {"dirmoe_route_forward",
     {"fixed_noise=1", "fixed_noise=1 selection=1", "fixed_noise=1 k_max=1 tau=0.5",
      "fixed_noise=0 step=7 layer=3 token_base=5", "fixed_noise=0 selection=1"}},
    {"dirmoe_route_backward", {"fixed_noise=1", "fixed_noise=1 selection=1", "fixed_noise=1 tau=0.5"}},
    {"dirmoe_route_eval", {"k_max=0", "k_max=1"}},
    {"dirmoe_reg_forward", {"kl_b_mode=0", "kl_b_mode=1 coef_lin=0.3 alpha0=50"}},
    {"dirmoe_reg_backward", {"kl_b_mode=0", "kl_b_mode=1 coef_lin=0.3 alpha0=50"}},
    {"topk_route_forward", {"renormalize=1", "k=1 renormalize=0"}},
    {"topk_route_backward", {"renormalize=1", "k=1 renormalize=0"}},
    {"balance_forward", {"coef_z=0.001", "k=1 coef_z=0.1"}},
    {"balance_backward", {"coef_z=0.001", "k=1 coef_z=0.1"}},
    {"xent_backward", {"scale=0.01"}},
    {"adamw", {"t=1", "t=1000 weight_decay=0"}},
};

static const char *const data_kinds[] = {"random", "zeros", "edge"};

/* ---- host test data ----------------------------------------------------- */

typedef struct gen_state {
    uint64_t s;
} gen_state;

/* splitmix64: a small, well-mixed generator for test data (not the model's Philox). */
static uint64_t next_u64(gen_state *g)
{
    uint64_t z = (g->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1). */
static double next_unit(gen_state *g)
{
    return ((double)(next_u64(g) >> 11) + 0.5) * 0x1p-53;
}

static double next_normal(gen_state *g)
{
    double u0 = next_unit(g), u1 = next_unit(g);
    return sqrt(-2.0 * log(u0)) * cos(6.283185307179586 * u1);
}

/* Fills tensor i of the op with data of kind `data` (0 random, 1 zeros, 2 edge values). */
static void generate(const dm_op_attrs *a, int i, int data, gen_state *g, dm_host_tensor *h)
{
    const dm_op_tensor_spec *spec = &a->op->tensors[i];
    double alpha_min = dm_op_attr_index(a->op, "alpha_min") >= 0 ? dm_op_attr_float(a, "alpha_min") : 1e-2;
    static const double logit_edges[] = {80, -80, 0, 3, -3, 1e4};
    static const double unit_edges[] = {0x1p-24, 1 - 0x1p-24, 0.5};
    double alpha_edges[] = {alpha_min, 1e4, 1, 0.5};
    int64_t lo = 0, hi = 1;
    int has_range = dm_op_tensor_range(a, i, &lo, &hi);

    for (size_t k = 0; k < h->numel; k++) {
        double x = 0;
        if (spec->dtype != DM_ST_F32) {
            /* Integers: within the range; outputs without one start at 3, never a valid mask value. */
            int64_t v = has_range && hi > lo ? lo + (int64_t)(next_u64(g) % (uint64_t)(hi - lo)) : 3;
            if (spec->dtype == DM_ST_U32 && !has_range)
                v = spec->role == DM_ROLE_ACC ? 5 : 0;
            ((int32_t *)h->data)[k] = (int32_t)v;
            continue;
        }
        switch (spec->gen) {
        case DM_GEN_NORMAL:
            x = data == 1 ? 0 : next_normal(g);
            break;
        case DM_GEN_SMALL:
            x = data == 1 ? 0 : 0.1 * next_normal(g);
            break;
        case DM_GEN_LOGITS:
            x = data == 1 ? 0 : data == 2 ? logit_edges[k % 6] : 2 * next_normal(g);
            break;
        case DM_GEN_ALPHA:
            x = data == 1   ? alpha_min
                : data == 2 ? alpha_edges[k % 4]
                            : exp(log(alpha_min) + next_unit(g) * (log(1e4) - log(alpha_min)));
            break;
        case DM_GEN_UNIT:
            x = data == 1 ? 0.5 : data == 2 ? unit_edges[k % 3] : next_unit(g);
            break;
        case DM_GEN_POSITIVE:
            x = data == 1 ? 0 : next_unit(g);
            break;
        case DM_GEN_INDEX:
            x = 0;
            break;
        }
        ((float *)h->data)[k] = (float)x;
    }
}

static void free_inputs(dm_host_tensor *t, int n)
{
    dm_host_tensors_free(t, n);
}

/* Allocates and generates every tensor of the op (outputs too, as initial values). */
static dm_status make_inputs(const dm_op_attrs *a, int data, gen_state *g, dm_host_tensor *in, int *n_in)
{
    const dm_op_def *op = a->op;
    dm_status st;

    *n_in = 0;
    for (int i = 0; i < op->n_tensors; i++) {
        dm_host_tensor *h = &in[(*n_in)++];
        memset(h, 0, sizeof *h);
        snprintf(h->name, sizeof h->name, "%s", op->tensors[i].name);
        h->dtype = op->tensors[i].dtype;
        if ((st = dm_op_tensor_shape(a, i, &h->ndim, h->shape, &h->numel)) != DM_OK)
            return st;
        h->data = malloc(h->numel ? h->numel * 4 : 4);
        if (!h->data)
            return dm_error(DM_ERR_NOMEM, "conformance: out of memory");
        generate(a, i, data, g, h);
    }
    return DM_OK;
}

static dm_host_tensor *find_tensor(dm_host_tensor *t, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(t[i].name, name) == 0)
            return &t[i];
    return NULL;
}

/* Drops the noise tensors from the inputs when the op draws them itself. */
static int drop_drawn_noise(const dm_op_attrs *a, dm_host_tensor *in, int n_in)
{
    int kept = 0;
    for (int i = 0; i < n_in; i++) {
        int idx = dm_op_tensor_index(a->op, in[i].name);
        if (a->op->tensors[idx].role == DM_ROLE_NOISE && !dm_op_tensor_required(a, idx)) {
            free(in[i].data);
            continue;
        }
        in[kept++] = in[i];
    }
    return kept;
}

/*
 * Runs the op's prep op on the reference and replaces inputs of the same
 * name with its outputs, so saved tensors (mask, w, mean, rstd, lse, slot)
 * are consistent with each other.
 */
static dm_status apply_prep(const dm_backend *ref, const dm_op_attrs *a, int data, gen_state *g,
                            dm_host_tensor *in, int n_in)
{
    const dm_op_def *prep = dm_op_find(a->op->prep);
    dm_host_tensor pin[DM_OP_MAX_TENSORS], pout[DM_OP_MAX_TENSORS];
    int n_pin = 0, n_pout = 0;
    dm_op_attrs pa;
    dm_status st;

    dm_op_attrs_init(&pa, prep);
    for (int i = 0; i < prep->n_attrs; i++) {
        int j = dm_op_attr_index(a->op, prep->attrs[i].name);
        if (j >= 0 && !prep->attrs[i].derived)
            pa.v[i] = a->v[j];
    }
    if ((st = dm_op_attrs_resolve(&pa)) != DM_OK)
        return st;
    if ((st = make_inputs(&pa, data, g, pin, &n_pin)) != DM_OK) {
        free_inputs(pin, n_pin);
        return st;
    }

    /* Shared names take the op's own values; only the prep op's required tensors are passed. */
    int kept = 0;
    for (int i = 0; i < n_pin; i++) {
        int idx = dm_op_tensor_index(prep, pin[i].name);
        dm_host_tensor *mine = find_tensor(in, n_in, pin[i].name);
        if (!dm_op_tensor_required(&pa, idx)) {
            free(pin[i].data);
            continue;
        }
        if (mine && mine->numel == pin[i].numel && mine->dtype == pin[i].dtype)
            memcpy(pin[i].data, mine->data, mine->numel * 4);
        pin[kept++] = pin[i];
    }
    n_pin = kept;

    st = dm_op_run(ref, &pa, pin, n_pin, pout, &n_pout);
    if (st == DM_OK)
        for (int i = 0; i < n_pout; i++) {
            dm_host_tensor *mine = find_tensor(in, n_in, pout[i].name);
            int idx = mine ? dm_op_tensor_index(a->op, mine->name) : -1;
            if (mine && a->op->tensors[idx].role == DM_ROLE_IN && mine->numel == pout[i].numel)
                memcpy(mine->data, pout[i].data, mine->numel * 4);
        }
    free_inputs(pin, n_pin);
    dm_host_tensors_free(pout, n_pout);
    return st;
}

/* ---- routing decision margins ------------------------------------------- */

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* Smallest gap between two of the n values (sorts them). */
static double min_gap(double *v, int n)
{
    double gap = INFINITY;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    for (int i = 1; i < n; i++)
        gap = fmin(gap, v[i] - v[i - 1]);
    return gap;
}

/* Decision margin of row t: how far its deciding values are from a threshold or a tie. */
static double row_margin(const dm_op_attrs *a, dm_host_tensor *in, int n_in, dm_host_tensor *ref_out, int n_out,
                         int t)
{
    const char *name = a->op->name;
    int E = (int)dm_op_attr_int(a, "E");
    dm_host_tensor *logits = find_tensor(in, n_in, "logits");
    double v[1024], margin = INFINITY;

    if (!logits || E > 1024)
        return INFINITY;
    int stride = strcmp(name, "topk_route_forward") == 0 ? E : 2 * E;
    const float *s = (const float *)logits->data + (size_t)t * stride;

    if (strcmp(name, "dirmoe_route_forward") == 0) {
        dm_host_tensor *u = find_tensor(ref_out, n_out, "u");
        const float *ur = (const float *)u->data + (size_t)t * E;
        for (int e = 0; e < E; e++) {
            v[e] = s[e] + log(ur[e]) - log1p(-(double)ur[e]);
            margin = fmin(margin, fabs(v[e]));
        }
    } else if (strcmp(name, "dirmoe_route_eval") == 0) {
        double K = 0, none = 1;
        for (int e = 0; e < E; e++) {
            double pi = 1 / (1 + exp(-(double)s[e]));
            K += pi;
            none *= 1 - pi;
            v[e] = s[e];
        }
        double x = K + none + 0.5;
        margin = fabs(x - floor(x + 0.5));
    } else {
        for (int e = 0; e < E; e++)
            v[e] = s[e];
    }
    return fmin(margin, min_gap(v, E));
}

/* ---- comparison --------------------------------------------------------- */

typedef struct compare_state {
    dm_conf_row *row;
    unsigned char *skip_row;  /* rows of N left out after a decision flip */
    int n_rows;
} compare_state;

static int fail(dm_conf_row *row, const char *fmt, const char *tensor, double x, double y)
{
    char msg[2048];
    snprintf(msg, sizeof msg, fmt, tensor, x, y);
    if (row->result != DM_CONF_FAIL)
        snprintf(row->note, sizeof row->note, "%.300s", msg);
    row->result = DM_CONF_FAIL;
    return 1;
}

static int is_gradient_op(const char *name)
{
    return strstr(name, "backward") != NULL || strstr(name, "grad") != NULL;
}

/* Elements per row when the tensor's first dimension is the token count N, else 0. */
static size_t row_width(const dm_op_attrs *a, const dm_host_tensor *t)
{
    int64_t n = dm_op_attr_int(a, "N");
    if (dm_op_attr_index(a->op, "E") < 0 || t->ndim < 1 || t->shape[0] != n || n == 0)
        return 0;
    return t->numel / (size_t)n;
}

static void compare_float(const dm_op_attrs *a, const compare_state *cs, const dm_host_tensor *init,
                          const dm_host_tensor *r, const dm_host_tensor *x, double bound, int exact)
{
    dm_conf_row *row = cs->row;
    const float *rv = r->data, *xv = x->data;
    const float *iv = init ? init->data : NULL;
    size_t width = cs->skip_row ? row_width(a, r) : 0;
    double num = 0, den = 0, max_b = 0;

    for (size_t k = 0; k < r->numel; k++) {
        if (width && cs->skip_row[k / width])
            continue;
        float ra = rv[k], xb = xv[k];
        if (exact && memcmp(&ra, &xb, 4) != 0) {
            fail(row, "%s differs at element %.0f (Philox-drawn values must be equal), reference %g", r->name, (double)k,
                 ra);
            return;
        }
        if (isnan(ra))
            continue;
        if (isnan(xb)) {
            fail(row, "%s is NaN at element %.0f where the reference is %g", r->name, (double)k, ra);
            return;
        }
        if (isinf(ra) || isinf(xb)) {
            if (ra != xb) {
                fail(row, "%s: infinity mismatch at element %.0f (reference %g)", r->name, (double)k, ra);
                return;
            }
            continue;
        }
        double da = ra, db = xb;
        if (iv) {
            da -= iv[k];
            db -= iv[k];
        }
        num += (da - db) * (da - db);
        den += da * da;
        max_b = fmax(max_b, fabs(db));
    }

    if (den == 0) {
        if (max_b > 1e-6)
            fail(row, "%s: reference is zero but max |b| = %g > %g", r->name, max_b, 1e-6);
        return;
    }
    double nmse = num / den;
    row->nmse = fmax(row->nmse, nmse);
    if (!(nmse <= bound))
        fail(row, "%s: NMSE %.3g exceeds %.1g", r->name, nmse, bound);
}

static void compare_int(const dm_op_attrs *a, compare_state *cs, dm_host_tensor *in, int n_in,
                        dm_host_tensor *ref_out, int n_out, const dm_host_tensor *r, const dm_host_tensor *x)
{
    dm_conf_row *row = cs->row;
    const int32_t *rv = r->data, *xv = x->data;
    size_t n = r->numel;
    int decisions = strcmp(r->name, "mask") == 0 && strstr(a->op->name, "route") != NULL;

    /* Only the first offsets[E] entries of token_of_slot are defined. */
    if (strcmp(r->name, "token_of_slot") == 0) {
        dm_host_tensor *off = find_tensor(ref_out, n_out, "offsets");
        n = (size_t)((const int32_t *)off->data)[off->numel - 1];
    }
    size_t width = decisions ? row_width(a, r) : 0;
    for (size_t k = 0; k < n; k++) {
        if (rv[k] == xv[k])
            continue;
        if (!width) {
            fail(row, "%s differs at element %.0f (reference %.0f)", r->name, (double)k, (double)rv[k]);
            return;
        }
        int t = (int)(k / width);
        if (cs->skip_row[t])
            continue;
        double margin = row_margin(a, in, n_in, ref_out, n_out, t);
        if (margin > DM_CONF_DECISION_MARGIN) {
            fail(row, "%s: routing decision of token %.0f differs with margin %.3g", r->name, (double)t, margin);
            return;
        }
        cs->skip_row[t] = 1;
        row->flips++;
    }
}

/* Compares every returned tensor; decisions first, so flipped rows are skipped after. */
static void compare_outputs(const dm_op_attrs *a, dm_conf_row *row, dm_host_tensor *in, int n_in,
                            dm_host_tensor *ref_out, dm_host_tensor *test_out, int n_out)
{
    int N = dm_op_attr_index(a->op, "N") >= 0 ? (int)dm_op_attr_int(a, "N") : 0;
    compare_state cs = {row, calloc((size_t)(N ? N : 1), 1), N};
    double bound = a->op->tolerance > 0 ? a->op->tolerance : is_gradient_op(a->op->name) ? 1e-6 : 1e-7;
    int drawn = dm_op_attr_index(a->op, "fixed_noise") >= 0 && dm_op_attr_int(a, "fixed_noise") == 0;

    row->bound = bound;
    for (int pass = 0; pass < 2 && row->result != DM_CONF_FAIL; pass++)
        for (int i = 0; i < n_out && row->result != DM_CONF_FAIL; i++) {
            const dm_host_tensor *r = &ref_out[i], *x = &test_out[i];
            int idx = dm_op_tensor_index(a->op, r->name);
            int is_float = r->dtype == DM_ST_F32;
            if ((pass == 0) == is_float)
                continue;
            if (!is_float) {
                compare_int(a, &cs, in, n_in, ref_out, n_out, r, x);
                continue;
            }
            const dm_host_tensor *init = a->op->tensors[idx].role == DM_ROLE_ACC ? find_tensor(in, n_in, r->name)
                                                                                 : NULL;
            /* NOTE: a Marsaglia-Tsang accept decision that flips inside the margin changes that
             * element's log_g and fails the case: gamma_sample flips are not yet detected. */
            int exact = drawn && strcmp(r->name, "u") == 0;
            compare_float(a, &cs, init, r, x, bound, exact);
        }
    free(cs.skip_row);
}

/* ---- one case ----------------------------------------------------------- */

static dm_status apply_assignments(dm_op_attrs *a, const char *text)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", text);
    for (char *save = NULL, *tok = strtok_r(buf, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
        char *eq = strchr(tok, '=');
        *eq = '\0';
        int i = dm_op_attr_index(a->op, tok);
        if (i < 0 || a->op->attrs[i].derived)
            continue;
        dm_status st = dm_op_attr_parse(a, tok, eq + 1);
        if (st)
            return st;
    }
    return DM_OK;
}

static int has_float_input(const dm_op_def *op)
{
    for (int i = 0; i < op->n_tensors; i++)
        if (op->tensors[i].dtype == DM_ST_F32 && op->tensors[i].role != DM_ROLE_OUT)
            return 1;
    return 0;
}

/* Describes guard damage of the test run in row->note; returns 1 when there is any. */
static int check_guards(const dm_op_def *op, const size_t *damage, dm_conf_row *row)
{
    for (int i = 0; i < op->n_tensors; i++)
        if (damage[i]) {
            snprintf(row->note, sizeof row->note, "%zu %s of %s changed", damage[i],
                     op->tensors[i].role == DM_ROLE_IN ? "guard or input elements" : "guard elements",
                     op->tensors[i].name);
            row->result = DM_CONF_FAIL;
            return 1;
        }
    return 0;
}

/*
 * Reference result of the optional fused bias_gelu_forward, which the
 * reference backend leaves out: bias_forward on pre, then gelu_forward.
 * Writes out[0] = out and out[1] = pre, the op's returned tensors in order.
 */
static dm_status reference_bias_gelu(const dm_backend *ref, const dm_op_attrs *a, dm_host_tensor *in, int n_in,
                                     dm_host_tensor *out, int *n_out)
{
    dm_op_attrs bias_attrs, gelu_attrs;
    dm_host_tensor bin[2], pre[DM_OP_MAX_TENSORS], act[DM_OP_MAX_TENSORS];
    int n_pre = 0, n_act = 0;
    dm_status st;

    dm_op_attrs_init(&bias_attrs, dm_op_find("bias_forward"));
    dm_op_attr_set(&bias_attrs, "M", (double)dm_op_attr_int(a, "M"));
    dm_op_attr_set(&bias_attrs, "N", (double)dm_op_attr_int(a, "N"));
    bin[0] = *find_tensor(in, n_in, "pre");
    snprintf(bin[0].name, sizeof bin[0].name, "out");
    bin[1] = *find_tensor(in, n_in, "bias");
    if ((st = dm_op_run(ref, &bias_attrs, bin, 2, pre, &n_pre)) != DM_OK)
        return st;

    dm_op_attrs_init(&gelu_attrs, dm_op_find("gelu_forward"));
    dm_op_attr_set(&gelu_attrs, "n", (double)pre[0].numel);
    dm_host_tensor gin = pre[0];
    snprintf(gin.name, sizeof gin.name, "inp");
    gin.ndim = 1;
    gin.shape[0] = (int64_t)gin.numel;
    if ((st = dm_op_run(ref, &gelu_attrs, &gin, 1, act, &n_act)) != DM_OK) {
        dm_host_tensors_free(pre, n_pre);
        return st;
    }
    out[0] = act[0];
    out[0].ndim = pre[0].ndim;
    memcpy(out[0].shape, pre[0].shape, sizeof out[0].shape);
    out[1] = pre[0];
    snprintf(out[1].name, sizeof out[1].name, "pre");
    *n_out = 2;
    return DM_OK;
}

static dm_status run_case(const dm_backend *ref, const dm_backend *test, dm_op_attrs *a, int data, uint64_t seed,
                          dm_conf_row *row)
{
    dm_host_tensor in[DM_OP_MAX_TENSORS], ref_out[DM_OP_MAX_TENSORS], test_out[DM_OP_MAX_TENSORS];
    int n_in = 0, n_ref = 0, n_test = 0;
    size_t ref_damage[DM_OP_MAX_TENSORS], test_damage[DM_OP_MAX_TENSORS];
    dm_op_run_opts ref_opts = {GUARD, GUARD_BITS, ref_damage}, test_opts = {GUARD, GUARD_BITS, test_damage};
    gen_state g = {seed};
    dm_status st;

    if ((st = dm_op_attrs_resolve(a)) != DM_OK)
        return st;
    if ((st = make_inputs(a, data, &g, in, &n_in)) != DM_OK)
        goto done;
    if (a->op->prep && (st = apply_prep(ref, a, data, &g, in, n_in)) != DM_OK)
        goto done;
    n_in = drop_drawn_noise(a, in, n_in);

    st = dm_op_run_ex(ref, a, in, n_in, ref_out, &n_ref, &ref_opts);
    if (st == DM_ERR_UNSUPPORTED && strcmp(a->op->name, "bias_gelu_forward") == 0)
        st = reference_bias_gelu(ref, a, in, n_in, ref_out, &n_ref);
    if (st == DM_ERR_UNSUPPORTED) {
        row->result = DM_CONF_SKIP;
        snprintf(row->note, sizeof row->note, "reference: %.300s", dm_last_error());
        st = DM_OK;
        goto done;
    }
    if (st)
        goto done;
    st = dm_op_run_ex(test, a, in, n_in, test_out, &n_test, &test_opts);
    if (st == DM_ERR_UNSUPPORTED) {
        row->result = DM_CONF_SKIP;
        snprintf(row->note, sizeof row->note, "%.310s", dm_last_error());
        st = DM_OK;
        goto done;
    }
    if (st) {
        /* A failing op on the backend under test is a failed case, not a failed run. */
        row->result = DM_CONF_FAIL;
        snprintf(row->note, sizeof row->note, "%.310s", dm_last_error());
        st = DM_OK;
        goto done;
    }
    if (!check_guards(a->op, test_damage, row))
        compare_outputs(a, row, in, n_in, ref_out, test_out, n_ref);

done:
    free_inputs(in, n_in);
    dm_host_tensors_free(ref_out, n_ref);
    dm_host_tensors_free(test_out, n_test);
    return st;
}

static const char *const *variants_of(const char *op)
{
    static const char *const none[] = {"", NULL};
    for (size_t i = 0; i < sizeof op_variants / sizeof op_variants[0]; i++)
        if (strcmp(op_variants[i].op, op) == 0)
            return op_variants[i].variants;
    return none;
}

dm_status dm_conformance_run(const dm_backend *reference, const dm_backend *test, const dm_conf_options *opts,
                             dm_conf_report_fn report, void *user, dm_conf_summary *summary)
{
    regex_t re;
    int use_re = opts && opts->op_regex && *opts->op_regex;
    uint64_t seed = opts && opts->seed ? opts->seed : 20260209;
    dm_status st = DM_OK;

    memset(summary, 0, sizeof *summary);
    if (use_re && regcomp(&re, opts->op_regex, REG_EXTENDED | REG_NOSUB) != 0)
        return dm_error(DM_ERR_INVALID, "conformance: invalid --op regular expression '%s'", opts->op_regex);

    for (int o = 0; o < dm_op_count() && !st; o++) {
        const dm_op_def *op = dm_op_at(o);
        if (use_re && regexec(&re, op->name, 0, NULL, 0) != 0)
            continue;
        const char *const *variants = variants_of(op->name);
        int n_data = has_float_input(op) ? 3 : 1;

        for (size_t z = 0; z < sizeof size_sets / sizeof size_sets[0] && !st; z++)
            for (int v = 0; variants[v] && !st; v++)
                for (int d = 0; d < n_data && !st; d++) {
                    dm_conf_row row;
                    dm_op_attrs a;

                    memset(&row, 0, sizeof row);
                    snprintf(row.op, sizeof row.op, "%s", op->name);
                    snprintf(row.case_name, sizeof row.case_name, "%s%s%s %s", size_sets[z].name,
                             variants[v][0] ? " " : "", variants[v], data_kinds[d]);
                    dm_op_attrs_init(&a, op);
                    if ((st = apply_assignments(&a, size_sets[z].attrs)) != DM_OK ||
                        (st = apply_assignments(&a, variants[v])) != DM_OK)
                        break;
                    /* Combine ops index yg by dispatch slots: room for every (token, expert). */
                    if (op->prep && strcmp(op->prep, "dispatch_build") == 0)
                        dm_op_attr_set(&a, "S", (double)(dm_op_attr_int(&a, "N") * dm_op_attr_int(&a, "E")));
                    /* A k above E in a size set means "every expert". */
                    if (dm_op_attr_index(op, "k") >= 0 && dm_op_attr_int(&a, "k") > dm_op_attr_int(&a, "E"))
                        dm_op_attr_set(&a, "k", (double)dm_op_attr_int(&a, "E"));

                    st = run_case(reference, test, &a, d, seed + 1000003u * (uint64_t)(o * 97 + (int)z * 13 + v * 3 + d),
                                  &row);
                    if (st) {
                        st = dm_error(st, "conformance: %s (%s) failed on the reference: %s", op->name, row.case_name,
                                      dm_last_error());
                        break;
                    }
                    summary->cases++;
                    summary->flips += row.flips;
                    if (row.result == DM_CONF_PASS)
                        summary->passed++;
                    else if (row.result == DM_CONF_FAIL)
                        summary->failed++;
                    else
                        summary->skipped++;
                    if (report)
                        report(&row, user);
                }
    }
    if (use_re)
        regfree(&re);
    return st;
}
