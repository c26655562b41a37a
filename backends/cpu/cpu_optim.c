/* cpu backend: the AdamW update, one pass over parameters, gradients and moments. */
#include "config.h"

#include <math.h>

#include "cpu_ops.h"

dm_status cpu_adamw(void *ctx, size_t n, const dm_adamw_params *p, dm_tensor params,
                    dm_tensor grads, dm_tensor m, dm_tensor v)
{
    cpu_ctx *cx = ctx;

    if (p->t < 1)
        return cpu_fail(cx, DM_ERR_INVALID, "adamw: step t=%d must be at least 1", p->t);

    float *pp = f32(params), *mp = f32(m), *vp = f32(v);
    const float *gp = f32(grads);
    float b1 = p->beta1, b2 = p->beta2, lr = p->lr, eps = p->eps, wd = p->weight_decay;
    /* Bias corrections 1 - beta^t, in double so beta2 = 0.999 keeps its digits at small t. */
    float bc1 = (float)(1.0 - pow(b1, p->t));
    float bc2 = (float)(1.0 - pow(b2, p->t));

#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (n >= 16384)
    for (size_t i = 0; i < n; i++) {
        float g = gp[i];
        float mi = b1 * mp[i] + (1.0f - b1) * g;
        float vi = b2 * vp[i] + (1.0f - b2) * g * g;
        float mhat = mi / bc1;
        float vhat = vi / bc2;
        mp[i] = mi;
        vp[i] = vi;
        pp[i] -= lr * (mhat / (sqrtf(vhat) + eps) + wd * pp[i]);
    }
    return DM_OK;
}
