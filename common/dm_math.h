/*
 * Special functions and Gamma sampling shared by the core and the host-side
 * backends (reference, cpu). They are the project's own implementations,
 * because library lgamma/digamma differ between platforms and backends must
 * agree. The OpenCL kernels carry the same algorithms in OpenCL C.
 */
#ifndef DM_MATH_H
#define DM_MATH_H

#include <stdint.h>

#include "dirmoe/backend.h"

/* log |Gamma(x)| for x > 0. */
double dm_lgamma(double x);
/* Digamma psi(x) and trigamma psi'(x) for x > 0. */
double dm_digamma(double x);
double dm_trigamma(double x);
/* Float versions (computed so that the error stays below 2e-7 * max(1, |value|)). */
float dm_digammaf(float x);
float dm_trigammaf(float x);
float dm_lgammaf(float x);

/* Stirling-series error stirlerr(a) = lgamma(a + 1) - ((a + 1/2) log a - a + log(2 pi)/2)
 * ... written as lgamma(a) - ((a - 1/2) log a - a + log(2 pi)/2) for a > 0. */
double dm_stirlerr(double a);

/* log of the regularised lower incomplete gamma function P(alpha, g), from log g. */
double dm_log_gamma_p(double alpha, double log_g);

/* Implicit reparameterisation gradient d log g / d alpha of g ~ Gamma(alpha, 1),
 * -(dF/dalpha)(g; alpha) / (g f(g; alpha)), evaluated from log g. Finite for
 * every (alpha, log g) the sampler can emit, alpha in [1e-3, 1e4]. */
double dm_gamma_dlogg_dalpha(double alpha, double log_g);

/* Float-only form for devices without fp64 (mirrors the OpenCL fallback). */
float dm_gamma_dlogg_dalphaf(float alpha, float log_g);

/* One Marsaglia-Tsang draw of log g, g ~ Gamma(alpha, 1), in float, with the
 * counter layout of dirmoe/philox.h: element `index`, purpose DM_RNG_GAMMA.
 * Sets *fallback (when not NULL) to 1 when 64 attempts were all rejected (then
 * returns log alpha), else to 0. */
float dm_gamma_sample_logf(float alpha, uint64_t seed, uint32_t index, uint32_t layer,
                           uint32_t step, int *fallback);
/* The same draw with at most `max_attempts` attempts (the sampler uses 64); for tests
 * of the fallback path. */
float dm_gamma_sample_logf_attempts(float alpha, uint64_t seed, uint32_t index, uint32_t layer,
                                    uint32_t step, int max_attempts, int *fallback);

/* Selection uniform of the DirMoE gate: word 0 of the block (index, 0, layer, DM_RNG_SELECT, step). */
float dm_select_uniform(uint64_t seed, uint32_t index, uint32_t layer, uint32_t step);

/* Box-Muller normal from words 0 and 1 of a block: sqrt(-2 log u0) cos(2 pi u1), in float. */
float dm_normal_from_words(uint32_t w0, uint32_t w1);

/* Bernoulli prior p0 solving E p0 + (1 - p0)^E = k, clamped to [1e-6, 1 - 1e-6], in double. */
double dm_solve_p0(int n_expert, double k);

/* log(1 + exp(x)) without overflow, and the logistic sigmoid, in double and float. */
double dm_softplus(double x);
float dm_softplusf(float x);
double dm_sigmoid(double x);
float dm_sigmoidf(float x);

#endif
