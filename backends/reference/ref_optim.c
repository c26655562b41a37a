/*
 * Reference AdamW: Adam moments with bias correction, and decoupled weight
 * decay, which shrinks the parameter directly instead of adding to the gradient.
 */
#include <math.h>

#include "ref_ops.h"

/* For each element, with g = grads[i] and step t >= 1 (the plugin checks it):
 *   m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2,
 *   mhat = m / (1 - beta1^t),      vhat = v / (1 - beta2^t),
 *   params -= lr * (mhat / (sqrt(vhat) + eps) + weight_decay * params).
 * The decay uses the parameter value from before this step. */
void REF(adamw)(size_t n, const dm_adamw_params *p, ref_real *params, const ref_real *grads,
                ref_real *m, ref_real *v)
{
    double beta1 = p->beta1;
    double beta2 = p->beta2;
    double correction1 = 1.0 - pow(beta1, p->t);
    double correction2 = 1.0 - pow(beta2, p->t);

    for (size_t i = 0; i < n; i++) {
        double g = grads[i];
        double m_new = beta1 * m[i] + (1.0 - beta1) * g;
        double v_new = beta2 * v[i] + (1.0 - beta2) * g * g;

        double m_hat = m_new / correction1;
        double v_hat = v_new / correction2;
        double update = m_hat / (sqrt(v_hat) + p->eps) + (double)p->weight_decay * params[i];

        m[i] = (ref_real)m_new;
        v[i] = (ref_real)v_new;
        params[i] = (ref_real)(params[i] - (double)p->lr * update);
    }
}
