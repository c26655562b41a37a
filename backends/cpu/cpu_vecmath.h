/*
 * cpu backend: exp written without library calls or branches, so
 * that loops calling it vectorise. Measured relative error is below 1e-7
 * (about one float ulp) on [-87, 88], well inside the conformance
 * tolerance (NMSE 1e-7 against the reference).
 */
#ifndef DM_CPU_VECMATH_H
#define DM_CPU_VECMATH_H

#include <stdint.h>
#include <string.h>

/* e^x for x in [-87.3, 88.3]; inputs outside are clamped, so -inf gives about 1e-38
 * instead of 0 and +inf about 2e38 instead of inf. */
static inline float cpu_expf(float x)
{
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693359375f;      /* exact in 10 bits, so n * ln2_hi is exact */
    const float ln2_lo = -2.12194440e-4f;   /* ln 2 - ln2_hi */
    const float round_magic = 12582912.0f;  /* 1.5 * 2^23: adding it rounds to an integer */

    x = x < -87.3f ? -87.3f : x;
    x = x > 88.3f ? 88.3f : x;

    /* x = n ln 2 + r with |r| <= ln2 / 2 and n in [-126, 127]. */
    float n = (x * log2e + round_magic) - round_magic;
    float r = (x - n * ln2_hi) - n * ln2_lo;

    /* e^r by its Taylor series to degree 7 (relative error < 3e-9 on |r| <= 0.35). */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;

    /* 2^n built in the exponent field: n + 127 lies in [1, 254], a normal float. */
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

#endif
