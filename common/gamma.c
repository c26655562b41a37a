/*
 * Gamma(alpha, 1) sampling by Marsaglia and Tsang ("A simple method for
 * generating gamma variables", ACM TOMS 26(3), 2000) in float, on the Philox
 * counter layout of dirmoe/philox.h, and the other Philox-derived variates.
 * Every backend draws the same attempts from the same words, so the samples
 * agree up to the ulps of logf, log1pf and cosf.
 */
#include <math.h>

#include "dirmoe/philox.h"
#include "dm_math.h"

#define DM_GAMMA_MAX_ATTEMPTS 64

float dm_normal_from_words(uint32_t w0, uint32_t w1)
{
    float u0 = dm_uniform_from_word(w0);
    float u1 = dm_uniform_from_word(w1);
    return sqrtf(-2.0f * logf(u0)) * cosf(6.28318531f * u1);
}

float dm_select_uniform(uint64_t seed, uint32_t index, uint32_t layer, uint32_t step)
{
    dm_philox_block b = dm_philox_at(seed, index, 0, layer, DM_RNG_SELECT, step);
    return dm_uniform_from_word(b.w[0]);
}

/* log1p(y) - y + y^2/2 - y^3/3. Below |y| = 0.1 the direct form cancels (at
 * large alpha it flips accept decisions in float), so the series
 * -y^4/4 + y^5/5 - ... is used there; 9 terms reach 1e-9 relative at |y| = 0.1. */
static float log1p_tail(float y)
{
    if (fabsf(y) >= 0.1f)
        return log1pf(y) - y + y * y * (0.5f - y * (1.0f / 3.0f));

    float s = 0.0f;
    for (int n = 12; n >= 4; n--)
        s = s * -y + 1.0f / (float)n;
    float y2 = y * y;
    return -(y2 * y2) * s;
}

float dm_gamma_sample_logf_attempts(float alpha, uint64_t seed, uint32_t index, uint32_t layer,
                                    uint32_t step, int max_attempts, int *fallback)
{
    /* alpha < 1 samples Gamma(alpha + 1) and multiplies by u^(1/alpha). */
    int boost = alpha < 1.0f;
    float shape = boost ? alpha + 1.0f : alpha;
    float d = shape - 1.0f / 3.0f;
    float c = 1.0f / sqrtf(9.0f * d);

    for (int attempt = 0; attempt < max_attempts; attempt++) {
        dm_philox_block b = dm_philox_at(seed, index, (uint32_t)attempt, layer, DM_RNG_GAMMA, step);
        float x = dm_normal_from_words(b.w[0], b.w[1]);
        float y = c * x;
        if (y <= -1.0f)
            continue; /* v = (1 + y)^3 <= 0: this attempt is used up */

        float u = dm_uniform_from_word(b.w[2]);
        float x2 = x * x;
        int accept = u < 1.0f - 0.0331f * (x2 * x2);
        if (!accept)
            accept = logf(u) < 3.0f * d * log1p_tail(y);
        if (!accept)
            continue;

        /* log g = log d + log v with log v = 3 log1p(y). */
        float log_g = logf(d) + 3.0f * log1pf(y);
        if (boost)
            log_g += logf(dm_uniform_from_word(b.w[3])) / alpha;
        if (fallback)
            *fallback = 0;
        return log_g;
    }

    if (fallback)
        *fallback = 1;
    return logf(alpha);
}

float dm_gamma_sample_logf(float alpha, uint64_t seed, uint32_t index, uint32_t layer, uint32_t step,
                           int *fallback)
{
    return dm_gamma_sample_logf_attempts(alpha, seed, index, layer, step, DM_GAMMA_MAX_ATTEMPTS,
                                         fallback);
}
