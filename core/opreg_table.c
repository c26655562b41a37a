/*
 * The op table: one entry per computing op of dm_backend_ops, with the
 * shapes its contract in dirmoe/backend.h states, and the call that maps
 * attributes and device views onto the op's arguments.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "dirmoe/opreg.h"

#define MAXN 16777216.0   /* 2^24: upper bound of every size attribute */
#define MAXU32 4294967295.0

/* Attribute and tensor entries. */
#define SIZE(n, d, lo, h) {n, DM_ATTR_INT, d, lo, MAXN, 0, h}
#define INT(n, d, lo, hi, h) {n, DM_ATTR_INT, d, lo, hi, 0, h}
#define FLT(n, d, lo, hi, h) {n, DM_ATTR_FLOAT, d, lo, hi, 0, h}
#define DERIVED(n, h) {n, DM_ATTR_INT, 0, 0, MAXN, 1, h}
#define SEED {"seed", DM_ATTR_SEED, 1234, 0, 18446744073709551615.0, 0, "Philox key (run seed)"}
#define TF(n, role, shape, gen, h) {n, role, DM_ST_F32, shape, NULL, gen, h}
#define TI(n, role, shape, range, h) {n, role, DM_ST_I32, shape, range, DM_GEN_INDEX, h}
#define TU(n, role, shape, h) {n, role, DM_ST_U32, shape, NULL, DM_GEN_INDEX, h}

#define IN DM_ROLE_IN
#define OUT DM_ROLE_OUT
#define ACC DM_ROLE_ACC
#define INOUT DM_ROLE_INOUT
#define NOISE DM_ROLE_NOISE

#define AI(name) ((int)dm_op_attr_int(a, name))
#define AZ(name) ((size_t)dm_op_attr_int(a, name))
#define AF(name) ((float)dm_op_attr_float(a, name))
#define AD(name) dm_op_attr_float(a, name)
#define OPS (be->ops)
#define CTX (be->ctx)

static void set_int(dm_op_attrs *a, const char *name, int64_t v)
{
    int i = dm_op_attr_index(a->op, name);
    if (i >= 0)
        a->v[i].i = v;
}

static int require_op(const dm_backend *be, const void *fn, const char *name)
{
    if (fn)
        return 0;
    dm_error(DM_ERR_UNSUPPORTED, "backend %s does not provide the optional op %s", be->name, name);
    return 1;
}

/* Wraps an op call: a failed call gets the backend's message and the op name. */
#define CALL(op, ...)                                                           \
    do {                                                                        \
        if (require_op(be, (const void *)(uintptr_t)OPS->op, #op))              \
            return DM_ERR_UNSUPPORTED;                                          \
        dm_status call_st_ = OPS->op(CTX, __VA_ARGS__);                         \
        return call_st_ ? dm_backend_fail(be, #op, call_st_) : DM_OK;           \
    } while (0)

/* ---- tensor family ------------------------------------------------------ */

static void gemm_derive(dm_op_attrs *a)
{
    int ta = AI("trans_a"), tb = AI("trans_b");
    set_int(a, "a_rows", ta ? AI("K") : AI("M"));
    set_int(a, "a_cols", ta ? AI("M") : AI("K"));
    set_int(a, "b_rows", tb ? AI("N") : AI("K"));
    set_int(a, "b_cols", tb ? AI("K") : AI("N"));
}

static dm_status gemm_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    CALL(gemm, AI("trans_a"), AI("trans_b"), AI("M"), AI("N"), AI("K"), AF("alpha"), t[0], AI("a_cols"),
         t[1], AI("b_cols"), AF("beta"), t[2], AI("N"));
}

static dm_status axpy_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    CALL(axpy, AZ("n"), AF("a"), t[0], t[1]);
}

static dm_status scale_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    CALL(scale, AZ("n"), AF("a"), t[0]);
}

static dm_status sum_squares_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    CALL(sum_squares, AZ("n"), t[0], t[1]);
}

/* ---- expert family: layers ---------------------------------------------- */

static dm_status encoder_forward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    CALL(encoder_forward, AI("B"), AI("T"), AI("C"), t[0], t[1], t[2], t[3]);
}

static dm_status encoder_backward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    CALL(encoder_backward, AI("B"), AI("T"), AI("C"), t[0], t[1], t[2], t[3]);
}

static dm_status layernorm_forward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    CALL(layernorm_forward, AI("N"), AI("C"), t[0], t[1], t[2], t[3], t[4], t[5]);
}

static dm_status layernorm_backward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    CALL(layernorm_backward, AI("N"), AI("C"), t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]);
}

static int attention_check(const dm_op_attrs *a, char *msg, size_t len)
{
    if (AI("C") % AI("NH") == 0)
        return 0;
    snprintf(msg, len, "C = %d is not a multiple of NH = %d: each head needs C/NH columns", AI("C"), AI("NH"));
    return 1;
}

static dm_status attention_forward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    CALL(attention_forward, AI("B"), AI("T"), AI("C"), AI("NH"), t[0], t[1], t[2]);
}

static dm_status attention_backward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    CALL(attention_backward, AI("B"), AI("T"), AI("C"), AI("NH"), t[0], t[1], t[2], t[3], t[4]);
}

static dm_status gelu_forward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    CALL(gelu_forward, AZ("n"), t[0], t[1]);
}

static dm_status gelu_backward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    CALL(gelu_backward, AZ("n"), t[0], t[1], t[2]);
}

static dm_status bias_forward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    CALL(bias_forward, AI("M"), AI("N"), t[0], t[1]);
}

static dm_status bias_backward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    CALL(bias_backward, AI("M"), AI("N"), t[0], t[1]);
}

static dm_status bias_gelu_forward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    CALL(bias_gelu_forward, AI("M"), AI("N"), t[0], t[1], t[2]);
}

/* ---- expert family: dispatch and combine --------------------------------- */

static dm_status dispatch_build_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    CALL(dispatch_build, AI("N"), AI("E"), AI("capacity"), t[0], t[1], t[2], t[3], t[4], t[5]);
}

static dm_status gather_forward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    CALL(gather_forward, AI("S"), AI("C"), t[0], t[1], t[2]);
}

static dm_status gather_backward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    CALL(gather_backward, AI("S"), AI("C"), t[0], t[1], t[2]);
}

static dm_status combine_forward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    CALL(combine_forward, AI("N"), AI("E"), AI("C"), t[0], t[1], t[2], t[3]);
}

static dm_status combine_backward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    CALL(combine_backward, AI("N"), AI("E"), AI("C"), t[0], t[1], t[2], t[3], t[4], t[5]);
}

/* ---- router family ------------------------------------------------------ */

static dm_rng_site rng_site(const dm_op_attrs *a)
{
    dm_rng_site rng;
    rng.seed = a->v[dm_op_attr_index(a->op, "seed")].u;
    rng.layer = (uint32_t)dm_op_attr_int(a, "layer");
    rng.step = (uint32_t)dm_op_attr_int(a, "step");
    rng.token_base = (uint32_t)dm_op_attr_int(a, "token_base");
    return rng;
}

static dm_status philox_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    uint64_t seed = a->v[dm_op_attr_index(a->op, "seed")].u;
    CALL(philox, AZ("n"), seed, (uint32_t)dm_op_attr_int(a, "index_base"), (uint32_t)dm_op_attr_int(a, "attempt"),
         (uint32_t)dm_op_attr_int(a, "layer"), (uint32_t)dm_op_attr_int(a, "purpose"),
         (uint32_t)dm_op_attr_int(a, "step"), t[0]);
}

static dm_status gamma_sample_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    dm_rng_site rng = rng_site(a);
    CALL(gamma_sample, AZ("n"), &rng, t[0], t[1], t[2]);
}

static dm_status gamma_grad_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    CALL(gamma_grad, AZ("n"), t[0], t[1], t[2]);
}

static void dirmoe_derive(dm_op_attrs *a)
{
    if (AI("k_max") == 0)
        set_int(a, "k_max", AI("E"));
}

static int dirmoe_check(const dm_op_attrs *a, char *msg, size_t len)
{
    if (AI("k_max") > AI("E")) {
        snprintf(msg, len, "k_max = %d exceeds E = %d: give 1 <= k_max <= E (0 means E)", AI("k_max"), AI("E"));
        return 1;
    }
    if (AD("alpha_min") >= AD("alpha_max")) {
        snprintf(msg, len, "alpha_min = %g must be below alpha_max = %g", AD("alpha_min"), AD("alpha_max"));
        return 1;
    }
    return 0;
}

static dm_dirmoe_params dirmoe_params(const dm_op_attrs *a)
{
    dm_dirmoe_params p;
    memset(&p, 0, sizeof p);
    p.n_tokens = AI("N");
    p.n_expert = AI("E");
    p.k_max = AI("k_max");
    p.selection = AI("selection");
    p.fixed_noise = AI("fixed_noise");
    p.tau = AF("tau");
    p.alpha_min = AF("alpha_min");
    p.alpha_max = AF("alpha_max");
    p.rng = rng_site(a);
    return p;
}

static dm_status dirmoe_route_forward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    dm_dirmoe_params p = dirmoe_params(a);
    CALL(dirmoe_route_forward, &p, t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]);
}

static dm_status dirmoe_route_backward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    dm_dirmoe_params p = dirmoe_params(a);
    CALL(dirmoe_route_backward, &p, t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]);
}

static dm_status dirmoe_route_eval_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    dm_dirmoe_params p = dirmoe_params(a);
    CALL(dirmoe_route_eval, &p, t[0], t[1], t[2]);
}

static int reg_check(const dm_op_attrs *a, char *msg, size_t len)
{
    if (AD("alpha_min") >= AD("alpha_max")) {
        snprintf(msg, len, "alpha_min = %g must be below alpha_max = %g", AD("alpha_min"), AD("alpha_max"));
        return 1;
    }
    return 0;
}

/* p0 is clamped to [1e-6, 1 - 1e-6] and its logs are taken in double, as the core does. */
static dm_dirmoe_reg_params reg_params(const dm_op_attrs *a)
{
    dm_dirmoe_reg_params p;
    double p0 = fmin(fmax(AD("p0"), 1e-6), 1.0 - 1e-6);

    memset(&p, 0, sizeof p);
    p.n_tokens = AI("N");
    p.n_expert = AI("E");
    p.kl_b_mode = AI("kl_b_mode");
    p.alpha_min = AF("alpha_min");
    p.alpha_max = AF("alpha_max");
    p.log_p0 = log(p0);
    p.log_1mp0 = log1p(-p0);
    p.alpha0 = AD("alpha0");
    p.k_target = AD("k_target");
    p.coef_kl_b = AD("coef_kl_b");
    p.coef_kl_d = AD("coef_kl_d");
    p.coef_sq = AD("coef_sq");
    p.coef_lin = AD("coef_lin");
    return p;
}

static dm_status dirmoe_reg_forward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    dm_dirmoe_reg_params p = reg_params(a);
    CALL(dirmoe_reg_forward, &p, t[0], t[1]);
}

static dm_status dirmoe_reg_backward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    dm_dirmoe_reg_params p = reg_params(a);
    CALL(dirmoe_reg_backward, &p, t[0], t[1]);
}

static int topk_check(const dm_op_attrs *a, char *msg, size_t len)
{
    if (AI("k") <= AI("E"))
        return 0;
    snprintf(msg, len, "k = %d exceeds E = %d: give 1 <= k <= E", AI("k"), AI("E"));
    return 1;
}

static dm_topk_params topk_params(const dm_op_attrs *a)
{
    dm_topk_params p = {AI("N"), AI("E"), AI("k"), AI("renormalize")};
    return p;
}

static dm_status topk_route_forward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    dm_topk_params p = topk_params(a);
    CALL(topk_route_forward, &p, t[0], t[1], t[2], t[3]);
}

static dm_status topk_route_backward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    dm_topk_params p = topk_params(a);
    CALL(topk_route_backward, &p, t[0], t[1], t[2], t[3], t[4]);
}

/* ---- loss family -------------------------------------------------------- */

static void balance_derive(dm_op_attrs *a)
{
    if (AI("stride") == 0)
        set_int(a, "stride", AI("E"));
}

static int balance_check(const dm_op_attrs *a, char *msg, size_t len)
{
    if (AI("stride") < AI("E")) {
        snprintf(msg, len, "stride = %d is below E = %d: each logits row holds at least E values", AI("stride"),
                 AI("E"));
        return 1;
    }
    return topk_check(a, msg, len);
}

static dm_balance_params balance_params(const dm_op_attrs *a)
{
    dm_balance_params p;
    memset(&p, 0, sizeof p);
    p.n_tokens = AI("N");
    p.n_expert = AI("E");
    p.k = AI("k");
    p.logits_stride = AI("stride");
    p.coef_balance = AD("coef_balance");
    p.coef_z = AD("coef_z");
    return p;
}

static dm_status balance_forward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    dm_balance_params p = balance_params(a);
    CALL(balance_forward, &p, t[0], t[1], t[2], t[3]);
}

static dm_status balance_backward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    dm_balance_params p = balance_params(a);
    CALL(balance_backward, &p, t[0], t[1], t[2], t[3]);
}

static dm_status xent_forward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    CALL(xent_forward, AI("N"), AI("V"), t[0], t[1], t[2], t[3]);
}

static dm_status xent_backward_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    CALL(xent_backward, AI("N"), AI("V"), AF("scale"), t[0], t[1], t[2]);
}

/* ---- optimizer ---------------------------------------------------------- */

static dm_status adamw_call(const dm_backend *be, const dm_op_attrs *a, const dm_tensor *t)
{
    dm_adamw_params p;
    p.lr = AF("lr");
    p.beta1 = AF("beta1");
    p.beta2 = AF("beta2");
    p.eps = AF("eps");
    p.weight_decay = AF("weight_decay");
    p.t = AI("t");
    CALL(adamw, AZ("n"), &p, t[0], t[1], t[2], t[3]);
}

/* ---- the table ---------------------------------------------------------- */

/* Attribute lists shared by several ops. */
#define DIRMOE_ATTRS                                                                               \
    SIZE("N", 4, 1, "tokens"), SIZE("E", 4, 1, "experts"),                                         \
        INT("k_max", 0, 0, MAXN, "at most k_max experts per token (0: E)"),                        \
        INT("selection", 0, 0, 1, "0 hard mask (straight-through), 1 soft"),                       \
        INT("fixed_noise", 0, 0, 1, "1: u and log_g are inputs; 0: drawn from Philox"),           \
        FLT("tau", 1, 1e-3, 1e3, "Gumbel-Sigmoid temperature"),                                     \
        FLT("alpha_min", 1e-2, 1e-6, 1e6, "lower bound added to softplus(c)"),                      \
        FLT("alpha_max", 1e4, 1e-6, 1e6, "upper clamp of alpha"), SEED,                             \
        INT("layer", 0, 0, 16777215, "transformer block index (Philox counter word 2)"),          \
        INT("step", 0, 0, MAXU32, "training step (Philox counter word 3)"),                        \
        INT("token_base", 0, 0, MAXU32, "global index of row 0")

#define REG_ATTRS                                                                                  \
    SIZE("N", 4, 1, "tokens"), SIZE("E", 4, 1, "experts"),                                         \
        INT("kl_b_mode", 0, 0, 1, "0: KL_B on batch-mean pi; 1: per token"),                       \
        FLT("alpha_min", 1e-2, 1e-6, 1e6, "lower bound added to softplus(c)"),                      \
        FLT("alpha_max", 1e4, 1e-6, 1e6, "upper clamp of alpha"),                                   \
        FLT("p0", 0.2354, 0, 1, "Bernoulli prior; clamped to [1e-6, 1-1e-6], logs taken in double"), \
        FLT("alpha0", 1, 1e-6, 1e6, "symmetric Dirichlet prior concentration"),                    \
        FLT("k_target", 2, 0, MAXN, "target count k"), FLT("coef_kl_b", 1, -1e9, 1e9, "beta_B * r"),   \
        FLT("coef_kl_d", 1, -1e9, 1e9, "beta_D"), FLT("coef_sq", 1, -1e9, 1e9, "lambda_s * r"),        \
        FLT("coef_lin", 0, -1e9, 1e9, "mu * r")

#define TOPK_ATTRS                                                                                 \
    SIZE("N", 4, 1, "tokens"), SIZE("E", 4, 1, "experts"), SIZE("k", 2, 1, "experts kept per token"), \
        INT("renormalize", 1, 0, 1, "1: w = p / sum of kept p (top-k); 0: w = p (Switch)")

#define BALANCE_ATTRS                                                                              \
    SIZE("N", 4, 1, "tokens"), SIZE("E", 4, 1, "experts"),                                         \
        SIZE("k", 2, 1, "assignments per token in f_e = count_e / (N k)"),                           \
        INT("stride", 0, 0, MAXN, "row stride of logits (0: E; 2E for DirMoE's s)"),                \
        FLT("coef_balance", 0.01, -1e9, 1e9, "weight of the balance loss in backward"),              \
        FLT("coef_z", 0.001, -1e9, 1e9, "weight of the z-loss in backward")

#define COUNT(x) ((int)(sizeof x / sizeof x[0]))
#define A(...) .n_attrs = COUNT(((dm_op_attr_spec[]){__VA_ARGS__})), .attrs = {__VA_ARGS__}
#define T(...) .n_tensors = COUNT(((dm_op_tensor_spec[]){__VA_ARGS__})), .tensors = {__VA_ARGS__}

static const dm_op_def table[] = {
    /* tensor family */
    {.name = "gemm", .family = DM_FAMILY_TENSOR,
     .summary = "c (M,N) = alpha op(a) op(b) + beta c, row-major; op transposes when trans_a / trans_b",
     A(SIZE("M", 4, 1, "rows of c"), SIZE("N", 4, 1, "columns of c"), SIZE("K", 4, 1, "inner dimension"),
       INT("trans_a", 0, 0, 1, "1: a is stored (K,M)"), INT("trans_b", 0, 0, 1, "1: b is stored (N,K)"),
       FLT("alpha", 1, -1e30, 1e30, "scale of the product"),
       FLT("beta", 0, -1e30, 1e30, "scale of the old c (0: c is not read)"),
       DERIVED("a_rows", "K if trans_a else M"), DERIVED("a_cols", "M if trans_a else K"),
       DERIVED("b_rows", "N if trans_b else K"), DERIVED("b_cols", "K if trans_b else N")),
     T(TF("a", IN, "a_rows,a_cols", DM_GEN_NORMAL, "left operand"),
       TF("b", IN, "b_rows,b_cols", DM_GEN_NORMAL, "right operand"),
       TF("c", ACC, "M,N", DM_GEN_NORMAL, "result; read when beta != 0")),
     .derive = gemm_derive, .call = gemm_call},
    {.name = "axpy", .family = DM_FAMILY_TENSOR, .summary = "y += a x",
     A(SIZE("n", 16, 1, "elements"), FLT("a", 1, -1e30, 1e30, "scale")),
     T(TF("x", IN, "n", DM_GEN_NORMAL, ""), TF("y", ACC, "n", DM_GEN_NORMAL, "")), .call = axpy_call},
    {.name = "scale", .family = DM_FAMILY_TENSOR, .summary = "x *= a in place",
     A(SIZE("n", 16, 1, "elements"), FLT("a", 1, -1e30, 1e30, "scale")),
     T(TF("x", INOUT, "n", DM_GEN_NORMAL, "")), .call = scale_call},
    {.name = "sum_squares", .family = DM_FAMILY_TENSOR, .summary = "out = sum of x^2 (for gradient clipping)",
     A(SIZE("n", 16, 1, "elements")),
     T(TF("x", IN, "n", DM_GEN_NORMAL, ""), TF("out", OUT, "1", DM_GEN_NORMAL, "")), .call = sum_squares_call},

    /* expert family: layers */
    {.name = "encoder_forward", .family = DM_FAMILY_EXPERT, .summary = "out = wte[tokens] + wpe[t]",
     A(SIZE("B", 2, 1, "batch"), SIZE("T", 4, 1, "sequence length"), SIZE("C", 8, 1, "d_model"),
       SIZE("V", 16, 1, "vocabulary")),
     T(TF("out", OUT, "B,T,C", DM_GEN_NORMAL, ""), TI("tokens", IN, "B,T", "0:V", "token ids"),
       TF("wte", IN, "V,C", DM_GEN_SMALL, "token embedding"),
       TF("wpe", IN, "T,C", DM_GEN_SMALL, "position embedding (first T rows)")),
     .call = encoder_forward_call},
    {.name = "encoder_backward", .family = DM_FAMILY_EXPERT,
     .summary = "dwte[tokens] += dout; dwpe[t] += sum over b of dout",
     A(SIZE("B", 2, 1, "batch"), SIZE("T", 4, 1, "sequence length"), SIZE("C", 8, 1, "d_model"),
       SIZE("V", 16, 1, "vocabulary")),
     T(TF("dwte", ACC, "V,C", DM_GEN_NORMAL, ""), TF("dwpe", ACC, "T,C", DM_GEN_NORMAL, ""),
       TF("dout", IN, "B,T,C", DM_GEN_NORMAL, ""), TI("tokens", IN, "B,T", "0:V", "token ids")),
     .call = encoder_backward_call},
    {.name = "layernorm_forward", .family = DM_FAMILY_EXPERT,
     .summary = "out = (inp - mean) rstd weight + bias per row, eps 1e-5",
     A(SIZE("N", 4, 1, "rows"), SIZE("C", 8, 1, "columns")),
     T(TF("out", OUT, "N,C", DM_GEN_NORMAL, ""), TF("mean", OUT, "N", DM_GEN_NORMAL, ""),
       TF("rstd", OUT, "N", DM_GEN_NORMAL, ""), TF("inp", IN, "N,C", DM_GEN_NORMAL, ""),
       TF("weight", IN, "C", DM_GEN_NORMAL, ""), TF("bias", IN, "C", DM_GEN_NORMAL, "")),
     .call = layernorm_forward_call},
    {.name = "layernorm_backward", .family = DM_FAMILY_EXPERT,
     .summary = "dinp, dweight, dbias += gradients from dout with the saved mean and rstd",
     A(SIZE("N", 4, 1, "rows"), SIZE("C", 8, 1, "columns")),
     T(TF("dinp", ACC, "N,C", DM_GEN_NORMAL, ""), TF("dweight", ACC, "C", DM_GEN_NORMAL, ""),
       TF("dbias", ACC, "C", DM_GEN_NORMAL, ""), TF("dout", IN, "N,C", DM_GEN_NORMAL, ""),
       TF("inp", IN, "N,C", DM_GEN_NORMAL, ""), TF("weight", IN, "C", DM_GEN_NORMAL, ""),
       TF("mean", IN, "N", DM_GEN_NORMAL, "from layernorm_forward"),
       TF("rstd", IN, "N", DM_GEN_POSITIVE, "from layernorm_forward")),
     .call = layernorm_backward_call, .prep = "layernorm_forward"},
    {.name = "attention_forward", .family = DM_FAMILY_EXPERT,
     .summary = "causal multi-head self-attention; qkv holds [q | k | v]",
     A(SIZE("B", 2, 1, "batch"), SIZE("T", 4, 1, "sequence length"), SIZE("C", 8, 1, "d_model"),
       SIZE("NH", 2, 1, "heads")),
     T(TF("out", OUT, "B,T,C", DM_GEN_NORMAL, ""), TF("lse", OUT, "B,NH,T", DM_GEN_NORMAL, "log-sum-exp of the scaled scores"),
       TF("qkv", IN, "B,T,3C", DM_GEN_NORMAL, "")),
     .check = attention_check, .call = attention_forward_call},
    {.name = "attention_backward", .family = DM_FAMILY_EXPERT,
     .summary = "dqkv += gradient from dout, recomputing scores from qkv and lse",
     A(SIZE("B", 2, 1, "batch"), SIZE("T", 4, 1, "sequence length"), SIZE("C", 8, 1, "d_model"),
       SIZE("NH", 2, 1, "heads")),
     T(TF("dqkv", ACC, "B,T,3C", DM_GEN_NORMAL, ""), TF("dout", IN, "B,T,C", DM_GEN_NORMAL, ""),
       TF("qkv", IN, "B,T,3C", DM_GEN_NORMAL, ""), TF("out", IN, "B,T,C", DM_GEN_NORMAL, "from attention_forward"),
       TF("lse", IN, "B,NH,T", DM_GEN_NORMAL, "from attention_forward")),
     .check = attention_check, .call = attention_backward_call, .prep = "attention_forward"},
    {.name = "gelu_forward", .family = DM_FAMILY_EXPERT, .summary = "out = gelu(inp), tanh approximation",
     A(SIZE("n", 16, 1, "elements")),
     T(TF("out", OUT, "n", DM_GEN_NORMAL, ""), TF("inp", IN, "n", DM_GEN_LOGITS, "")), .call = gelu_forward_call},
    {.name = "gelu_backward", .family = DM_FAMILY_EXPERT, .summary = "dinp += gelu'(inp) dout",
     A(SIZE("n", 16, 1, "elements")),
     T(TF("dinp", ACC, "n", DM_GEN_NORMAL, ""), TF("inp", IN, "n", DM_GEN_LOGITS, ""),
       TF("dout", IN, "n", DM_GEN_NORMAL, "")),
     .call = gelu_backward_call},
    {.name = "bias_forward", .family = DM_FAMILY_EXPERT, .summary = "out (M,N) += bias (N) on every row",
     A(SIZE("M", 4, 1, "rows"), SIZE("N", 8, 1, "columns")),
     T(TF("out", ACC, "M,N", DM_GEN_NORMAL, ""), TF("bias", IN, "N", DM_GEN_NORMAL, "")), .call = bias_forward_call},
    {.name = "bias_backward", .family = DM_FAMILY_EXPERT, .summary = "dbias += column sums of dout",
     A(SIZE("M", 4, 1, "rows"), SIZE("N", 8, 1, "columns")),
     T(TF("dbias", ACC, "N", DM_GEN_NORMAL, ""), TF("dout", IN, "M,N", DM_GEN_NORMAL, "")),
     .call = bias_backward_call},
    {.name = "bias_gelu_forward", .family = DM_FAMILY_EXPERT,
     .summary = "optional fused op: pre += bias in place, out = gelu(pre)",
     A(SIZE("M", 4, 1, "rows"), SIZE("N", 8, 1, "columns")),
     T(TF("out", OUT, "M,N", DM_GEN_NORMAL, ""), TF("pre", INOUT, "M,N", DM_GEN_LOGITS, ""),
       TF("bias", IN, "N", DM_GEN_NORMAL, "")),
     .call = bias_gelu_forward_call},

    /* expert family: dispatch and combine */
    {.name = "dispatch_build", .family = DM_FAMILY_EXPERT,
     .summary = "group (token, expert) assignments by expert; capacity > 0 drops later tokens",
     A(SIZE("N", 4, 1, "tokens"), SIZE("E", 4, 1, "experts"),
       INT("capacity", 0, 0, MAXN, "slots per expert (0: unlimited)")),
     T(TI("mask", IN, "N,E", "0:2", "1 where the expert is selected"),
       TI("slot", OUT, "N,E", NULL, "slot of each assignment, -1 when unselected or dropped"),
       TI("counts", OUT, "E", NULL, "kept per expert"), TI("demand", OUT, "E", NULL, "selected per expert"),
       TI("offsets", OUT, "E+1", NULL, "exclusive prefix sum of counts"),
       TI("token_of_slot", OUT, "N*E", NULL, "first offsets[E] entries valid")),
     .call = dispatch_build_call},
    {.name = "gather_forward", .family = DM_FAMILY_EXPERT, .summary = "xg[s] = x[token_of_slot[s]]",
     A(SIZE("S", 4, 1, "slots"), SIZE("C", 8, 1, "columns"), SIZE("N", 4, 1, "rows of x")),
     T(TF("xg", OUT, "S,C", DM_GEN_NORMAL, ""), TF("x", IN, "N,C", DM_GEN_NORMAL, ""),
       TI("token_of_slot", IN, "S", "0:N", "")),
     .call = gather_forward_call},
    {.name = "gather_backward", .family = DM_FAMILY_EXPERT, .summary = "dx[token_of_slot[s]] += dxg[s]",
     A(SIZE("S", 4, 1, "slots"), SIZE("C", 8, 1, "columns"), SIZE("N", 4, 1, "rows of dx")),
     T(TF("dx", ACC, "N,C", DM_GEN_NORMAL, ""), TF("dxg", IN, "S,C", DM_GEN_NORMAL, ""),
       TI("token_of_slot", IN, "S", "0:N", "")),
     .call = gather_backward_call},
    {.name = "combine_forward", .family = DM_FAMILY_EXPERT,
     .summary = "y[t] = sum over kept e (ascending) of w[t,e] yg[slot[t,e]]",
     A(SIZE("N", 4, 1, "tokens"), SIZE("E", 4, 1, "experts"), SIZE("C", 8, 1, "columns"),
       SIZE("S", 16, 1, "rows of yg (at least offsets[E])")),
     T(TF("y", OUT, "N,C", DM_GEN_NORMAL, ""), TF("yg", IN, "S,C", DM_GEN_NORMAL, ""),
       TI("slot", IN, "N,E", "-1:S", "from dispatch_build"), TF("w", IN, "N,E", DM_GEN_POSITIVE, "")),
     .call = combine_forward_call, .prep = "dispatch_build"},
    {.name = "combine_backward", .family = DM_FAMILY_EXPERT,
     .summary = "dyg[slot] = w dy for kept slots (other rows untouched); dw = <dy, yg[slot]>, 0 elsewhere",
     A(SIZE("N", 4, 1, "tokens"), SIZE("E", 4, 1, "experts"), SIZE("C", 8, 1, "columns"),
       SIZE("S", 16, 1, "rows of yg (at least offsets[E])")),
     T(TF("dyg", OUT, "S,C", DM_GEN_NORMAL, "rows of unkept slots keep their initial value"),
       TF("dw", OUT, "N,E", DM_GEN_NORMAL, ""), TF("dy", IN, "N,C", DM_GEN_NORMAL, ""),
       TF("yg", IN, "S,C", DM_GEN_NORMAL, ""), TI("slot", IN, "N,E", "-1:S", "from dispatch_build; kept slots distinct"),
       TF("w", IN, "N,E", DM_GEN_POSITIVE, "")),
     .call = combine_backward_call, .prep = "dispatch_build"},

    /* router family */
    {.name = "philox", .family = DM_FAMILY_ROUTER,
     .summary = "Philox4x32-10 words of elements index_base .. index_base+n-1",
     A(SIZE("n", 16, 1, "elements"), SEED, INT("index_base", 0, 0, MAXU32, "counter word 0 of element 0"),
       INT("attempt", 0, 0, MAXU32, "counter word 1"), INT("layer", 0, 0, 16777215, "counter word 2 high bits"),
       INT("purpose", 2, 0, 255, "counter word 2 low byte (1 data .. 5 text)"),
       INT("step", 0, 0, MAXU32, "counter word 3")),
     T(TU("out", OUT, "n,4", "the four 32-bit words of each element")), .call = philox_call},
    {.name = "gamma_sample", .family = DM_FAMILY_ROUTER,
     .summary = "log g for g ~ Gamma(alpha, 1), Marsaglia-Tsang on Philox (purpose 3)",
     A(SIZE("n", 16, 1, "elements"), SEED, INT("layer", 0, 0, 16777215, "transformer block index"),
       INT("step", 0, 0, MAXU32, "training step"), INT("token_base", 0, 0, MAXU32, "counter word 0 of element 0")),
     T(TF("log_g", OUT, "n", DM_GEN_NORMAL, ""), TF("alpha", IN, "n", DM_GEN_ALPHA, "concentrations > 0"),
       TU("fallbacks", ACC, "1", "elements that exhausted 64 attempts")),
     .call = gamma_sample_call},
    {.name = "gamma_grad", .family = DM_FAMILY_ROUTER,
     .summary = "out = d log g / d alpha, implicit reparameterisation gradient",
     A(SIZE("n", 16, 1, "elements")),
     T(TF("out", OUT, "n", DM_GEN_NORMAL, ""), TF("alpha", IN, "n", DM_GEN_ALPHA, ""),
       TF("log_g", IN, "n", DM_GEN_NORMAL, "from gamma_sample")),
     .call = gamma_grad_call, .prep = "gamma_sample"},
    {.name = "dirmoe_route_forward", .family = DM_FAMILY_ROUTER,
     .summary = "DirMoE training routing: gate, mask with at-least-one and k_max rules, Dirichlet weights",
     A(DIRMOE_ATTRS),
     T(TF("logits", IN, "N,2E", DM_GEN_LOGITS, "rows [s | c]"),
       TF("u", NOISE, "N,E", DM_GEN_UNIT, "selection uniforms"),
       TF("log_g", NOISE, "N,E", DM_GEN_NORMAL, "log Gamma noise"),
       TF("zt", OUT, "N,E", DM_GEN_NORMAL, "relaxed gate"), TF("alpha", OUT, "N,E", DM_GEN_NORMAL, ""),
       TI("mask", OUT, "N,E", NULL, ""), TF("w", OUT, "N,E", DM_GEN_NORMAL, "weights, 0 where unselected"),
       TU("fallbacks", ACC, "1", "Gamma elements that exhausted 64 attempts")),
     .derive = dirmoe_derive, .check = dirmoe_check, .call = dirmoe_route_forward_call},
    {.name = "dirmoe_route_backward", .family = DM_FAMILY_ROUTER,
     .summary = "DirMoE routing backward: dlogits += gradient through the weights",
     A(DIRMOE_ATTRS),
     T(TF("dlogits", ACC, "N,2E", DM_GEN_NORMAL, ""), TF("dw", IN, "N,E", DM_GEN_NORMAL, "dL/dw"),
       TF("logits", IN, "N,2E", DM_GEN_LOGITS, ""), TF("zt", IN, "N,E", DM_GEN_UNIT, "from the forward"),
       TF("alpha", IN, "N,E", DM_GEN_ALPHA, "from the forward"),
       TF("log_g", IN, "N,E", DM_GEN_NORMAL, "from the forward"),
       TI("mask", IN, "N,E", "0:2", "from the forward"), TF("w", IN, "N,E", DM_GEN_POSITIVE, "from the forward")),
     .derive = dirmoe_derive, .check = dirmoe_check, .call = dirmoe_route_backward_call,
     .prep = "dirmoe_route_forward"},
    {.name = "dirmoe_route_eval", .family = DM_FAMILY_ROUTER,
     .summary = "DirMoE evaluation routing: round(K) largest s, w = alpha / sum of selected alpha",
     A(DIRMOE_ATTRS),
     T(TF("logits", IN, "N,2E", DM_GEN_LOGITS, "rows [s | c]"), TI("mask", OUT, "N,E", NULL, ""),
       TF("w", OUT, "N,E", DM_GEN_NORMAL, "")),
     .derive = dirmoe_derive, .check = dirmoe_check, .call = dirmoe_route_eval_call},
    {.name = "dirmoe_reg_forward", .family = DM_FAMILY_ROUTER,
     .summary = "DirMoE regularisers: stats = [KL_B, KL_D, Kbar, weighted loss]",
     A(REG_ATTRS),
     T(TF("logits", IN, "N,2E", DM_GEN_LOGITS, "rows [s | c]"), TF("stats", OUT, "4", DM_GEN_NORMAL, "")),
     .check = reg_check, .call = dirmoe_reg_forward_call, .tolerance = 1e-6,
     .tolerance_reason = "KL_D sums lgamma and digamma terms that cancel (a few ulp of the largest term)"},
    {.name = "dirmoe_reg_backward", .family = DM_FAMILY_ROUTER,
     .summary = "dlogits += gradient of the weighted regulariser loss",
     A(REG_ATTRS),
     T(TF("logits", IN, "N,2E", DM_GEN_LOGITS, ""), TF("dlogits", ACC, "N,2E", DM_GEN_NORMAL, "")),
     .check = reg_check, .call = dirmoe_reg_backward_call},
    {.name = "topk_route_forward", .family = DM_FAMILY_ROUTER,
     .summary = "top-k / Switch routing: probs = softmax(s), mask of the k largest, weights",
     A(TOPK_ATTRS),
     T(TF("logits", IN, "N,E", DM_GEN_LOGITS, ""), TF("probs", OUT, "N,E", DM_GEN_NORMAL, ""),
       TI("mask", OUT, "N,E", NULL, ""), TF("w", OUT, "N,E", DM_GEN_NORMAL, "")),
     .check = topk_check, .call = topk_route_forward_call},
    {.name = "topk_route_backward", .family = DM_FAMILY_ROUTER, .summary = "dlogits += gradient through w",
     A(TOPK_ATTRS),
     T(TF("dlogits", ACC, "N,E", DM_GEN_NORMAL, ""), TF("dw", IN, "N,E", DM_GEN_NORMAL, ""),
       TF("probs", IN, "N,E", DM_GEN_POSITIVE, "from the forward"),
       TI("mask", IN, "N,E", "0:2", "from the forward"), TF("w", IN, "N,E", DM_GEN_POSITIVE, "from the forward")),
     .check = topk_check, .call = topk_route_backward_call, .prep = "topk_route_forward"},

    /* loss family */
    {.name = "balance_forward", .family = DM_FAMILY_LOSS,
     .summary = "stats = [E sum f_e P_e, mean (logsumexp s)^2]",
     A(BALANCE_ATTRS),
     T(TF("logits", IN, "N,stride", DM_GEN_LOGITS, "first E columns used"),
       TF("probs", IN, "N,E", DM_GEN_POSITIVE, "softmax of the logits"),
       TI("demand", IN, "E", "0:N+1", "selected per expert"), TF("stats", OUT, "2", DM_GEN_NORMAL, "")),
     .derive = balance_derive, .check = balance_check, .call = balance_forward_call},
    {.name = "balance_backward", .family = DM_FAMILY_LOSS,
     .summary = "dlogits += coef_balance d(balance)/ds + coef_z d(z)/ds",
     A(BALANCE_ATTRS),
     T(TF("logits", IN, "N,stride", DM_GEN_LOGITS, ""), TF("probs", IN, "N,E", DM_GEN_POSITIVE, ""),
       TI("demand", IN, "E", "0:N+1", ""), TF("dlogits", ACC, "N,stride", DM_GEN_NORMAL, "")),
     .derive = balance_derive, .check = balance_check, .call = balance_backward_call},
    {.name = "xent_forward", .family = DM_FAMILY_LOSS,
     .summary = "losses = -log softmax(logits)[target]; probs = softmax(logits)",
     A(SIZE("N", 4, 1, "rows"), SIZE("V", 16, 1, "classes")),
     T(TF("losses", OUT, "N", DM_GEN_NORMAL, ""), TF("probs", OUT, "N,V", DM_GEN_NORMAL, ""),
       TF("logits", IN, "N,V", DM_GEN_LOGITS, ""), TI("targets", IN, "N", "0:V", "")),
     .call = xent_forward_call},
    {.name = "xent_backward", .family = DM_FAMILY_LOSS, .summary = "dlogits = scale (probs - onehot(targets))",
     A(SIZE("N", 4, 1, "rows"), SIZE("V", 16, 1, "classes"), FLT("scale", 1, -1e30, 1e30, "usually 1/N")),
     T(TF("dlogits", OUT, "N,V", DM_GEN_NORMAL, ""), TF("probs", IN, "N,V", DM_GEN_POSITIVE, "from xent_forward"),
       TI("targets", IN, "N", "0:V", "")),
     .call = xent_backward_call, .prep = "xent_forward"},

    /* optimizer */
    {.name = "adamw", .family = DM_FAMILY_OPTIM, .summary = "AdamW step: params, m, v updated in place",
     A(SIZE("n", 16, 1, "elements"), FLT("lr", 1e-3, 0, 1e3, "learning rate"),
       FLT("beta1", 0.9, 0, 1, ""), FLT("beta2", 0.95, 0, 1, ""), FLT("eps", 1e-8, 0, 1, ""),
       FLT("weight_decay", 0.1, 0, 1e3, "decoupled decay"), INT("t", 1, 1, 2147483647, "1-based step")),
     T(TF("params", INOUT, "n", DM_GEN_NORMAL, ""), TF("grads", IN, "n", DM_GEN_NORMAL, ""),
       TF("m", INOUT, "n", DM_GEN_SMALL, ""), TF("v", INOUT, "n", DM_GEN_POSITIVE, "second moment, >= 0")),
     .call = adamw_call},
};

int dm_op_count(void)
{
    return COUNT(table);
}

const dm_op_def *dm_op_at(int index)
{
    return index >= 0 && index < COUNT(table) ? &table[index] : NULL;
}
