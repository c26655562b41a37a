/*
 * dirmoe: Philox4x32-10 counter-based generator (Salmon, Moraes, Dror and Shaw,
 * "Parallel random numbers: as easy as 1, 2, 3", SC'11) and the project's
 * counter layout. Header-only so that the core, every backend and third-party
 * plugins produce the same 32-bit words for the same (key, counter).
 *
 * Counter layout (changing it is an ABI change):
 *   key    = { seed low 32 bits, seed high 32 bits }
 *   ctr[0] = element index (router: global_token * E + expert; init: flat
 *            parameter offset; data: sequence index in the global batch)
 *   ctr[1] = attempt number for rejection samplers, else 0
 *   ctr[2] = (layer << 8) | purpose
 *   ctr[3] = training step (0 for initialisation)
 */
#ifndef DIRMOE_PHILOX_H
#define DIRMOE_PHILOX_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum dm_rng_purpose {
    DM_RNG_DATA = 1,      /* data sampling: sequence offsets */
    DM_RNG_SELECT = 2,    /* DirMoE selection noise u */
    DM_RNG_GAMMA = 3,     /* Gamma noise (Marsaglia-Tsang attempts) */
    DM_RNG_INIT = 4,      /* parameter initialisation */
    DM_RNG_TEXT = 5       /* text sampling in `dirmoe sample` */
};

typedef struct dm_philox_block {
    uint32_t w[4];
} dm_philox_block;

static inline void dm_philox_mulhilo(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo)
{
    uint64_t product = (uint64_t)a * (uint64_t)b;
    *hi = (uint32_t)(product >> 32);
    *lo = (uint32_t)product;
}

/* Returns Philox4x32-10 of counter `ctr` under key `key` (10 rounds, key bumped between rounds). */
static inline dm_philox_block dm_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];

    for (int round = 0; round < 10; round++) {
        uint32_t hi0, lo0, hi1, lo1;
        dm_philox_mulhilo(0xD2511F53u, c0, &hi0, &lo0);
        dm_philox_mulhilo(0xCD9E8D57u, c2, &hi1, &lo1);
        uint32_t n0 = hi1 ^ c1 ^ k0;
        uint32_t n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
        k0 += 0x9E3779B9u; /* Weyl key schedule: golden ratio and sqrt(3) - 1 */
        k1 += 0xBB67AE85u;
    }

    dm_philox_block out = {{c0, c1, c2, c3}};
    return out;
}

/* Returns the block for the project's counter layout. */
static inline dm_philox_block dm_philox_at(uint64_t seed, uint32_t index, uint32_t attempt,
                                           uint32_t layer, uint32_t purpose, uint32_t step)
{
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t ctr[4] = {index, attempt, (layer << 8) | purpose, step};
    return dm_philox4x32_10(ctr, key);
}

/* Converts a 32-bit word to a float uniform strictly inside (0, 1): ((w >> 9) + 0.5) * 2^-23. */
static inline float dm_uniform_from_word(uint32_t w)
{
    return ((float)(w >> 9) + 0.5f) * 0x1p-23f;
}

#ifdef __cplusplus
}
#endif
#endif
