/*
 * Op registry: attributes, shape expressions and the generic runner that
 * moves host tensors through device buffers (see dirmoe/opreg.h).
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dirmoe/opreg.h"

const char *dm_op_family_name(dm_op_family family)
{
    static const char *const names[] = {"tensor", "expert", "router", "loss", "optimizer"};
    return (unsigned)family < 5 ? names[family] : "?";
}

const char *dm_op_role_name(dm_op_role role)
{
    static const char *const names[] = {"in", "out", "acc", "inout", "noise"};
    return (unsigned)role < 5 ? names[role] : "?";
}

const dm_op_def *dm_op_find(const char *name)
{
    for (int i = 0; i < dm_op_count(); i++)
        if (strcmp(dm_op_at(i)->name, name) == 0)
            return dm_op_at(i);
    return NULL;
}

int dm_op_attr_index(const dm_op_def *op, const char *name)
{
    for (int i = 0; i < op->n_attrs; i++)
        if (strcmp(op->attrs[i].name, name) == 0)
            return i;
    return -1;
}

int dm_op_tensor_index(const dm_op_def *op, const char *name)
{
    for (int i = 0; i < op->n_tensors; i++)
        if (strcmp(op->tensors[i].name, name) == 0)
            return i;
    return -1;
}

/* ---- attributes --------------------------------------------------------- */

static void store(dm_op_attrs *a, int i, double value)
{
    switch (a->op->attrs[i].type) {
    case DM_ATTR_INT: a->v[i].i = (int64_t)value; break;
    case DM_ATTR_FLOAT: a->v[i].f = value; break;
    case DM_ATTR_SEED: a->v[i].u = (uint64_t)value; break;
    }
}

void dm_op_attrs_init(dm_op_attrs *a, const dm_op_def *op)
{
    memset(a, 0, sizeof *a);
    a->op = op;
    for (int i = 0; i < op->n_attrs; i++)
        store(a, i, op->attrs[i].def);
}

static dm_status unknown_attr(const dm_op_def *op, const char *name)
{
    char list[512] = "";
    for (int i = 0; i < op->n_attrs; i++) {
        if (op->attrs[i].derived)
            continue;
        size_t used = strlen(list);
        snprintf(list + used, sizeof list - used, "%s%s", used ? ", " : "", op->attrs[i].name);
    }
    return dm_error(DM_ERR_INVALID, "op %s: unknown attribute '%s' (attributes: %s)", op->name, name, list);
}

dm_status dm_op_attr_parse(dm_op_attrs *a, const char *name, const char *text)
{
    const dm_op_def *op = a->op;
    int i = dm_op_attr_index(op, name);
    char *end;

    if (i < 0 || op->attrs[i].derived)
        return unknown_attr(op, name);
    const dm_op_attr_spec *s = &op->attrs[i];
    errno = 0;
    if (s->type == DM_ATTR_SEED) {
        if (*text == '-')
            return dm_error(DM_ERR_INVALID, "op %s: invalid seed '%s': expected an unsigned 64-bit integer", op->name, text);
        unsigned long long u = strtoull(text, &end, 0);
        if (*text == '\0' || *end != '\0' || errno)
            return dm_error(DM_ERR_INVALID, "op %s: invalid seed '%s': expected an unsigned 64-bit integer", op->name, text);
        a->v[i].u = u;
        return DM_OK;
    }
    if (s->type == DM_ATTR_INT) {
        long long v = strtoll(text, &end, 10);
        if (*text == '\0' || *end != '\0' || errno)
            return dm_error(DM_ERR_INVALID, "op %s: invalid value '%s' for attribute %s: expected an integer",
                            op->name, text, name);
        a->v[i].i = v;
        return DM_OK;
    }
    double v = strtod(text, &end);
    if (*text == '\0' || *end != '\0' || errno || !isfinite(v))
        return dm_error(DM_ERR_INVALID, "op %s: invalid value '%s' for attribute %s: expected a finite number",
                        op->name, text, name);
    a->v[i].f = v;
    return DM_OK;
}

dm_status dm_op_attr_set(dm_op_attrs *a, const char *name, double value)
{
    int i = dm_op_attr_index(a->op, name);
    if (i < 0)
        return unknown_attr(a->op, name);
    store(a, i, value);
    return DM_OK;
}

int64_t dm_op_attr_int(const dm_op_attrs *a, const char *name)
{
    int i = dm_op_attr_index(a->op, name);
    if (i < 0)
        return 0;
    switch (a->op->attrs[i].type) {
    case DM_ATTR_INT: return a->v[i].i;
    case DM_ATTR_FLOAT: return (int64_t)a->v[i].f;
    case DM_ATTR_SEED: return (int64_t)a->v[i].u;
    }
    return 0;
}

double dm_op_attr_float(const dm_op_attrs *a, const char *name)
{
    int i = dm_op_attr_index(a->op, name);
    if (i < 0)
        return 0;
    switch (a->op->attrs[i].type) {
    case DM_ATTR_INT: return (double)a->v[i].i;
    case DM_ATTR_FLOAT: return a->v[i].f;
    case DM_ATTR_SEED: return (double)a->v[i].u;
    }
    return 0;
}

void dm_op_attr_format(const dm_op_attrs *a, int i, char *buf, size_t len)
{
    switch (a->op->attrs[i].type) {
    case DM_ATTR_INT: snprintf(buf, len, "%" PRId64, a->v[i].i); break;
    case DM_ATTR_FLOAT: snprintf(buf, len, "%.17g", a->v[i].f); break;
    case DM_ATTR_SEED: snprintf(buf, len, "%" PRIu64, a->v[i].u); break;
    }
}

dm_status dm_op_attrs_resolve(dm_op_attrs *a)
{
    const dm_op_def *op = a->op;
    char msg[256];

    if (op->derive)
        op->derive(a);
    for (int i = 0; i < op->n_attrs; i++) {
        const dm_op_attr_spec *s = &op->attrs[i];
        if (s->derived || s->type == DM_ATTR_SEED)
            continue;
        double v = dm_op_attr_float(a, s->name);
        if (v < s->min || v > s->max)
            return dm_error(DM_ERR_INVALID, "op %s: attribute %s = %.15g is out of range: must be between %.15g and %.15g",
                            op->name, s->name, v, s->min, s->max);
    }
    if (op->check && op->check(a, msg, sizeof msg))
        return dm_error(DM_ERR_INVALID, "op %s: %s", op->name, msg);
    return DM_OK;
}

/* ---- shape expressions -------------------------------------------------- */

/* Parses one factor at *p: INT, NAME or INT NAME (the product). */
static int eval_factor(const dm_op_attrs *a, const char **p, int64_t *out)
{
    int64_t v = 1;
    int any = 0;

    while (**p == ' ')
        (*p)++;
    if (isdigit((unsigned char)**p)) {
        v = strtoll(*p, (char **)p, 10);
        any = 1;
    }
    if (isalpha((unsigned char)**p) || **p == '_') {
        char name[64];
        size_t n = 0;
        while ((isalnum((unsigned char)**p) || **p == '_') && n + 1 < sizeof name)
            name[n++] = *(*p)++;
        name[n] = '\0';
        if (dm_op_attr_index(a->op, name) < 0)
            return 0;
        v *= dm_op_attr_int(a, name);
        any = 1;
    }
    while (**p == ' ')
        (*p)++;
    *out = v;
    return any;
}

/* Evaluates "term (+ term)*" with "term = factor (* factor)*"; stops at ',', ':' or the end. */
static int eval_expr(const dm_op_attrs *a, const char **p, int64_t *out)
{
    int64_t sum = 0;
    int negate = 0;

    while (**p == ' ')
        (*p)++;
    if (**p == '-') {
        negate = 1;
        (*p)++;
    }
    for (;;) {
        int64_t term, f;
        if (!eval_factor(a, p, &term))
            return 0;
        while (**p == '*') {
            (*p)++;
            if (!eval_factor(a, p, &f))
                return 0;
            term *= f;
        }
        sum += term;
        if (**p != '+')
            break;
        (*p)++;
    }
    *out = negate ? -sum : sum;
    return **p == '\0' || **p == ',' || **p == ':';
}

dm_status dm_op_tensor_shape(const dm_op_attrs *a, int i, int *ndim, int64_t *shape, size_t *numel)
{
    const dm_op_tensor_spec *t = &a->op->tensors[i];
    const char *p = t->shape;
    size_t n = 1;

    *ndim = 0;
    while (*p) {
        int64_t d;
        if (*ndim == DM_ST_MAX_DIMS || !eval_expr(a, &p, &d) || d < 0)
            return dm_error(DM_ERR_INVALID, "op %s: tensor %s: cannot evaluate shape '%s'", a->op->name, t->name,
                            t->shape);
        shape[(*ndim)++] = d;
        n *= (size_t)d;
        if (*p == ',')
            p++;
    }
    *numel = n;
    return DM_OK;
}

int dm_op_tensor_range(const dm_op_attrs *a, int i, int64_t *lo, int64_t *hi)
{
    const char *p = a->op->tensors[i].range;
    if (!p)
        return 0;
    if (!eval_expr(a, &p, lo) || *p != ':')
        return 0;
    p++;
    return eval_expr(a, &p, hi);
}

int dm_op_tensor_required(const dm_op_attrs *a, int i)
{
    switch (a->op->tensors[i].role) {
    case DM_ROLE_IN:
    case DM_ROLE_INOUT:
        return 1;
    case DM_ROLE_NOISE:
        return dm_op_attr_int(a, "fixed_noise") != 0;
    default:
        return 0;
    }
}

int dm_op_tensor_returned(const dm_op_def *op, int i)
{
    return op->tensors[i].role != DM_ROLE_IN;
}

void dm_shape_format(int ndim, const int64_t *shape, char *buf, size_t len)
{
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int d = 0; d < ndim && used < len; d++)
        used += (size_t)snprintf(buf + used, len - used, "%s%" PRId64, d ? ", " : "", shape[d]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
}

void dm_host_tensors_free(dm_host_tensor *t, int n)
{
    for (int i = 0; i < n; i++) {
        free(t[i].data);
        t[i].data = NULL;
    }
}

/* ---- running ------------------------------------------------------------ */

/* Per tensor of one run: the expected shape, the given input, the device buffer. */
typedef struct run_slot {
    int ndim;
    int64_t shape[DM_ST_MAX_DIMS];
    size_t numel;
    const dm_host_tensor *given;
    dm_buffer *buf;
    uint32_t *host;     /* numel + 2 guard elements, as uploaded */
} run_slot;

static int same_shape(const dm_host_tensor *h, const run_slot *s)
{
    if (h->ndim != s->ndim)
        return 0;
    for (int d = 0; d < s->ndim; d++)
        if (h->shape[d] != s->shape[d])
            return 0;
    return 1;
}

/* Checks one given tensor against the op's expectation. */
static dm_status check_given(const dm_op_attrs *a, int i, const run_slot *s)
{
    const dm_op_def *op = a->op;
    const dm_op_tensor_spec *spec = &op->tensors[i];
    const dm_host_tensor *h = s->given;
    char want[128], got[128];
    int64_t lo, hi;

    dm_shape_format(s->ndim, s->shape, want, sizeof want);
    dm_shape_format(h->ndim, h->shape, got, sizeof got);
    if (!same_shape(h, s) || h->numel != s->numel)
        return dm_error(DM_ERR_INVALID, "op %s: tensor %s has shape %s, expected %s (%s)", op->name, spec->name, got,
                        want, spec->shape[0] ? spec->shape : "one element");
    int int_ok = (spec->dtype == DM_ST_I32 || spec->dtype == DM_ST_U32) &&
                 (h->dtype == DM_ST_I32 || h->dtype == DM_ST_U32);
    if (h->dtype != spec->dtype && !int_ok)
        return dm_error(DM_ERR_INVALID, "op %s: tensor %s has dtype %s, expected %s", op->name, spec->name,
                        dm_st_dtype_name(h->dtype), dm_st_dtype_name(spec->dtype));
    if (spec->dtype == DM_ST_I32 && dm_op_tensor_range(a, i, &lo, &hi)) {
        const int32_t *v = h->data;
        for (size_t k = 0; k < h->numel; k++)
            if (v[k] < lo || v[k] >= hi)
                return dm_error(DM_ERR_INVALID, "op %s: tensor %s: element %zu is %d, outside the valid range [%" PRId64
                                ", %" PRId64 ")", op->name, spec->name, k, v[k], lo, hi);
    }
    return DM_OK;
}

/* Matches the given tensors to the op's table and checks them. */
static dm_status bind_inputs(const dm_op_attrs *a, const dm_host_tensor *in, int n_in, run_slot *slots)
{
    const dm_op_def *op = a->op;
    dm_status st;

    for (int k = 0; k < n_in; k++) {
        int i = dm_op_tensor_index(op, in[k].name);
        if (i < 0) {
            char list[512] = "";
            for (int j = 0; j < op->n_tensors; j++) {
                size_t used = strlen(list);
                snprintf(list + used, sizeof list - used, "%s%s", j ? ", " : "", op->tensors[j].name);
            }
            return dm_error(DM_ERR_INVALID, "op %s: unknown tensor '%s' (tensors of this op: %s)", op->name,
                            in[k].name, list);
        }
        if (slots[i].given)
            return dm_error(DM_ERR_INVALID, "op %s: tensor %s is given twice", op->name, in[k].name);
        slots[i].given = &in[k];
    }
    for (int i = 0; i < op->n_tensors; i++) {
        if (!slots[i].given && dm_op_tensor_required(a, i))
            return dm_error(DM_ERR_INVALID, "op %s: missing input tensor %s (%s %s)%s", op->name,
                            op->tensors[i].name, dm_st_dtype_name(op->tensors[i].dtype), op->tensors[i].shape,
                            op->tensors[i].role == DM_ROLE_NOISE ? ": it is required when fixed_noise = 1" : "");
        if (slots[i].given && (st = check_given(a, i, &slots[i])) != DM_OK)
            return st;
    }
    return DM_OK;
}

/* Allocates each buffer with guards, fills guards with the pattern and the view with the input or zero. */
static dm_status upload_all(const dm_backend *be, const dm_op_def *op, run_slot *slots, size_t guard,
                            uint32_t guard_bits)
{
    for (int i = 0; i < op->n_tensors; i++) {
        run_slot *s = &slots[i];
        size_t total = s->numel + 2 * guard;

        s->host = malloc((total ? total : 1) * sizeof(uint32_t));
        if (!s->host)
            return dm_error(DM_ERR_NOMEM, "op %s: out of host memory for tensor %s", op->name, op->tensors[i].name);
        for (size_t k = 0; k < guard; k++)
            s->host[k] = s->host[guard + s->numel + k] = guard_bits;
        if (s->given)
            memcpy(s->host + guard, s->given->data, s->numel * sizeof(uint32_t));
        else
            memset(s->host + guard, 0, s->numel * sizeof(uint32_t));

        dm_status st = be->ops->alloc(be->ctx, total ? total : 1, &s->buf);
        if (st)
            return dm_backend_fail(be, "alloc", st);
        dm_tensor whole = {s->buf, 0};
        if (total && (st = be->ops->upload(be->ctx, whole, s->host, total)) != DM_OK)
            return dm_backend_fail(be, "upload", st);
    }
    return DM_OK;
}

/* Downloads every buffer, counts guard damage and changed inputs, and returns the outputs. */
static dm_status download_all(const dm_backend *be, const dm_op_attrs *a, run_slot *slots, size_t guard,
                              size_t *damage, dm_host_tensor *out, int *n_out)
{
    const dm_op_def *op = a->op;
    dm_status st;

    for (int i = 0; i < op->n_tensors; i++) {
        run_slot *s = &slots[i];
        size_t total = s->numel + 2 * guard;
        uint32_t *back = malloc((total ? total : 1) * sizeof(uint32_t));
        dm_tensor whole = {s->buf, 0};

        if (!back)
            return dm_error(DM_ERR_NOMEM, "op %s: out of host memory", op->name);
        if (total && (st = be->ops->download(be->ctx, back, whole, total)) != DM_OK) {
            free(back);
            return dm_backend_fail(be, "download", st);
        }
        size_t changed = 0;
        for (size_t k = 0; k < guard; k++)
            changed += (back[k] != s->host[k]) + (back[guard + s->numel + k] != s->host[guard + s->numel + k]);
        if (op->tensors[i].role == DM_ROLE_IN)
            for (size_t k = guard; k < guard + s->numel; k++)
                changed += back[k] != s->host[k];
        if (damage)
            damage[i] = changed;

        if (!dm_op_tensor_returned(op, i)) {
            free(back);
            continue;
        }
        dm_host_tensor *o = &out[(*n_out)++];
        memset(o, 0, sizeof *o);
        snprintf(o->name, sizeof o->name, "%s", op->tensors[i].name);
        o->dtype = op->tensors[i].dtype;
        o->ndim = s->ndim;
        memcpy(o->shape, s->shape, sizeof o->shape);
        o->numel = s->numel;
        /* Shift the view to the start of the allocation the caller frees. */
        memmove(back, back + guard, s->numel * sizeof(uint32_t));
        o->data = back;
    }
    return DM_OK;
}

dm_status dm_op_run_ex(const dm_backend *be, dm_op_attrs *a, const dm_host_tensor *in, int n_in,
                       dm_host_tensor *out, int *n_out, const dm_op_run_opts *opts)
{
    const dm_op_def *op = a->op;
    run_slot slots[DM_OP_MAX_TENSORS];
    dm_tensor views[DM_OP_MAX_TENSORS];
    size_t guard = opts ? opts->guard : 0;
    uint32_t guard_bits = opts ? opts->guard_bits : 0;
    dm_status st;

    *n_out = 0;
    memset(slots, 0, sizeof slots);
    if ((st = dm_op_attrs_resolve(a)) != DM_OK)
        return st;
    for (int i = 0; i < op->n_tensors; i++)
        if ((st = dm_op_tensor_shape(a, i, &slots[i].ndim, slots[i].shape, &slots[i].numel)) != DM_OK)
            return st;
    if ((st = bind_inputs(a, in, n_in, slots)) != DM_OK)
        return st;

    st = upload_all(be, op, slots, guard, guard_bits);
    if (!st) {
        for (int i = 0; i < op->n_tensors; i++) {
            views[i].buf = slots[i].buf;
            views[i].off = guard;
        }
        st = op->call(be, a, views);
    }
    if (!st && (st = be->ops->synchronize(be->ctx)) != DM_OK)
        st = dm_backend_fail(be, "synchronize", st);
    if (!st)
        st = download_all(be, a, slots, guard, opts ? opts->guard_damage : NULL, out, n_out);

    for (int i = 0; i < op->n_tensors; i++) {
        if (slots[i].buf)
            be->ops->free(be->ctx, slots[i].buf);
        free(slots[i].host);
    }
    if (st) {
        dm_host_tensors_free(out, *n_out);
        *n_out = 0;
    }
    return st;
}

dm_status dm_op_run(const dm_backend *be, dm_op_attrs *a, const dm_host_tensor *in, int n_in,
                    dm_host_tensor *out, int *n_out)
{
    return dm_op_run_ex(be, a, in, n_in, out, n_out, NULL);
}
