/*
 * dirmoe: a table that describes every computing op of dm_backend_ops (names,
 * shapes, dtypes and attributes of its tensors) and a generic runner that
 * calls an op on host tensors. `dirmoe op` and `dirmoe conformance` are built
 * on it, and docs/OPS.md is generated from it.
 *
 * Shapes are written as comma-separated expressions over the op's integer
 * attributes, for example "N,2E" or "E+1": a term is an integer, an attribute
 * name, or an integer followed by a name (2E = 2 * E), and terms combine with
 * '*' and '+'.
 *
 * Tensor roles and how dm_op_run initialises each device buffer:
 *  - in:    must be given; uploaded; never modified by the op.
 *  - out:   written by the op; initialised from the input of the same name if
 *           one is given, else zero (visible where the op writes only part,
 *           such as combine_backward's dyg).
 *  - acc:   accumulated into (+=) by the op, as backward gradients are;
 *           initialised from the input of the same name if given, else zero.
 *  - inout: must be given; updated in place (AdamW's params, m, v).
 *  - noise: the router noise u or log_g: an input that must be given when the
 *           attribute fixed_noise is nonzero, otherwise drawn by the op (the
 *           buffer is initialised like an output). Returned in both cases.
 * Every role except `in` is returned by dm_op_run.
 */
#ifndef DIRMOE_OPREG_H
#define DIRMOE_OPREG_H

#include <stddef.h>
#include <stdint.h>

#include "dirmoe/loader.h"
#include "dirmoe/safetensors.h"
#include "dirmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DM_OP_MAX_ATTRS 24
#define DM_OP_MAX_TENSORS 12

typedef enum dm_op_family {
    DM_FAMILY_TENSOR = 0,   /* dense linear algebra */
    DM_FAMILY_EXPERT = 1,   /* transformer layers, dispatch and combine */
    DM_FAMILY_ROUTER = 2,   /* routing, Philox, Gamma */
    DM_FAMILY_LOSS = 3,     /* cross-entropy, balance, z-loss */
    DM_FAMILY_OPTIM = 4     /* AdamW */
} dm_op_family;

typedef enum dm_op_role {
    DM_ROLE_IN = 0,
    DM_ROLE_OUT = 1,
    DM_ROLE_ACC = 2,
    DM_ROLE_INOUT = 3,
    DM_ROLE_NOISE = 4
} dm_op_role;

typedef enum dm_attr_type {
    DM_ATTR_INT = 0,        /* int64 value */
    DM_ATTR_FLOAT = 1,      /* double value (ops that take float round it) */
    DM_ATTR_SEED = 2        /* uint64 value: a Philox key */
} dm_attr_type;

/* How the conformance runner fills a tensor with test data. */
typedef enum dm_gen_kind {
    DM_GEN_NORMAL = 0,      /* N(0, 1) */
    DM_GEN_LOGITS,          /* N(0, 2); edge case: +-80, 0, +-3 */
    DM_GEN_ALPHA,           /* log-uniform in [alpha_min, 1e4]; edge case: alpha_min, 1e4, 1 */
    DM_GEN_UNIT,            /* uniform in (0, 1) */
    DM_GEN_POSITIVE,        /* uniform in [0, 1) */
    DM_GEN_INDEX,           /* integers in the tensor's range */
    DM_GEN_SMALL            /* N(0, 0.1), for weights */
} dm_gen_kind;

/* One tensor of an op. */
typedef struct dm_op_tensor_spec {
    const char *name;
    dm_op_role role;
    dm_st_dtype dtype;      /* DM_ST_F32, DM_ST_I32 or DM_ST_U32 */
    const char *shape;      /* shape expression, "" for a single element */
    const char *range;      /* integer inputs: "LO:HI", values in [LO, HI); NULL when any value is valid */
    dm_gen_kind gen;
    const char *help;
} dm_op_tensor_spec;

/* One attribute of an op. Derived attributes are computed from the others. */
typedef struct dm_op_attr_spec {
    const char *name;
    dm_attr_type type;
    double def;             /* default value */
    double min, max;        /* inclusive bounds */
    int derived;            /* 1: set by the op's derive hook, not by the user */
    const char *help;
} dm_op_attr_spec;

typedef union dm_attr_value {
    int64_t i;
    double f;
    uint64_t u;
} dm_attr_value;

typedef struct dm_op_def dm_op_def;

/* Attribute values of one call, indexed like dm_op_def.attrs. */
typedef struct dm_op_attrs {
    const dm_op_def *op;
    dm_attr_value v[DM_OP_MAX_ATTRS];
} dm_op_attrs;

struct dm_op_def {
    const char *name;
    dm_op_family family;
    const char *summary;
    int n_attrs;
    dm_op_attr_spec attrs[DM_OP_MAX_ATTRS];
    int n_tensors;
    dm_op_tensor_spec tensors[DM_OP_MAX_TENSORS];
    /* Computes derived attributes; may be NULL. */
    void (*derive)(dm_op_attrs *a);
    /* Checks constraints between attributes; writes a message and returns nonzero on failure. May be NULL. */
    int (*check)(const dm_op_attrs *a, char *msg, size_t len);
    /* Calls the backend op with device views t[i] for tensors[i]. */
    dm_status (*call)(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t);
    /* Conformance: op whose reference outputs provide consistent inputs (same names), or NULL. */
    const char *prep;
    /* Conformance: NMSE bound for float outputs; 0 means 1e-7 forward, 1e-6 for acc outputs. */
    double tolerance;
    const char *tolerance_reason;
};

/* A host tensor: numel 4-byte elements of type dtype (F32, I32 or U32). */
typedef struct dm_host_tensor {
    char name[64];
    dm_st_dtype dtype;
    int ndim;
    int64_t shape[DM_ST_MAX_DIMS];
    size_t numel;
    void *data;
} dm_host_tensor;

/* Guard checking and test hooks of dm_op_run_ex. */
typedef struct dm_op_run_opts {
    size_t guard;           /* elements before and after every view (0: none) */
    uint32_t guard_bits;    /* pattern written into the guard elements */
    /* Out: per tensor, the number of guard elements changed by the op, and for
     * role `in` also the number of view elements changed. NULL to ignore. */
    size_t *guard_damage;
} dm_op_run_opts;

/* ---- the table ---------------------------------------------------------- */

int dm_op_count(void);
const dm_op_def *dm_op_at(int index);
/* Returns the op called `name`, or NULL. */
const dm_op_def *dm_op_find(const char *name);
const char *dm_op_family_name(dm_op_family family);
const char *dm_op_role_name(dm_op_role role);

/* Index of the attribute or tensor called `name` in `op`, or -1. */
int dm_op_attr_index(const dm_op_def *op, const char *name);
int dm_op_tensor_index(const dm_op_def *op, const char *name);

/* ---- attributes --------------------------------------------------------- */

/* Sets every attribute of `op` to its default. */
void dm_op_attrs_init(dm_op_attrs *a, const dm_op_def *op);

/* Parses `text` into attribute `name`; the message names the op, the attribute and its bounds. */
dm_status dm_op_attr_parse(dm_op_attrs *a, const char *name, const char *text);

/* Sets an attribute from a number (for programs and tests); fails on an unknown name. */
dm_status dm_op_attr_set(dm_op_attrs *a, const char *name, double value);
int64_t dm_op_attr_int(const dm_op_attrs *a, const char *name);
double dm_op_attr_float(const dm_op_attrs *a, const char *name);

/* Formats the value of attribute i as it would be parsed back. */
void dm_op_attr_format(const dm_op_attrs *a, int i, char *buf, size_t len);

/* Computes derived attributes, checks every bound and constraint. */
dm_status dm_op_attrs_resolve(dm_op_attrs *a);

/* Evaluates tensor i's shape under resolved attributes: writes ndim, shape and numel. */
dm_status dm_op_tensor_shape(const dm_op_attrs *a, int i, int *ndim, int64_t *shape, size_t *numel);

/* Evaluates tensor i's range ("LO:HI"); returns 0 when the tensor has none. */
int dm_op_tensor_range(const dm_op_attrs *a, int i, int64_t *lo, int64_t *hi);

/* 1 when tensor i must be given to dm_op_run under these attributes. */
int dm_op_tensor_required(const dm_op_attrs *a, int i);

/* 1 when tensor i is returned by dm_op_run. */
int dm_op_tensor_returned(const dm_op_def *op, int i);

/* ---- running ------------------------------------------------------------ */

/*
 * Runs the op on backend `be`: resolves the attributes, checks every given
 * tensor's name, dtype, shape and index range, allocates device buffers,
 * uploads, calls, downloads. `in` contains n_in tensors by name; every tensor
 * that is required must be among them, and a name the op does not have is
 * an error. On success out[0 .. *n_out-1] are the returned tensors in table
 * order, with data allocated by malloc (release with dm_host_tensors_free).
 */
dm_status dm_op_run(const dm_backend *be, dm_op_attrs *a, const dm_host_tensor *in, int n_in,
                    dm_host_tensor *out, int *n_out);
dm_status dm_op_run_ex(const dm_backend *be, dm_op_attrs *a, const dm_host_tensor *in, int n_in,
                       dm_host_tensor *out, int *n_out, const dm_op_run_opts *opts);
void dm_host_tensors_free(dm_host_tensor *t, int n);

/* Writes "[2, 3]" into buf. */
void dm_shape_format(int ndim, const int64_t *shape, char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
