/* rng.h - deterministic random numbers keyed by what they are for.
 *
 * ddtrain's results must not depend on the number of ranks, the micro-batch size or the order
 * in which threads run. So randomness is never drawn from a shared stream: each random value is
 * a pure function of a key (seed, purpose, indices), computed with rng_hash(). Where a sequence
 * is natural (a Fisher-Yates shuffle) an rng_stream is seeded from such a key.
 *
 * Usage:
 *     float u = rng_uniform(rng_hash4(seed, RNG_PURPOSE_DROPOUT, step, row * width + unit));
 *     rng_stream s = rng_stream_init(rng_hash4(seed, RNG_PURPOSE_SHUFFLE, epoch, 0, 0));
 *     uint64_t k = rng_stream_below(&s, n);
 */
#ifndef DDT_UTIL_RNG_H
#define DDT_UTIL_RNG_H

#include <stdint.h>

/* Separate key spaces so that, e.g., the init of layer 0 and the shuffle of epoch 0 differ. */
enum rng_purpose {
    RNG_PURPOSE_INIT = 1,
    RNG_PURPOSE_SHUFFLE_BLOCKS = 2,
    RNG_PURPOSE_SHUFFLE_WINDOW = 3,
    RNG_PURPOSE_DROPOUT = 4,
    RNG_PURPOSE_SYNTH = 5,
};

/* A well-mixed 64-bit value from the key (a, b, c, d); splitmix64 finalisers chained. */
uint64_t rng_hash4(uint64_t a, uint64_t b, uint64_t c, uint64_t d);

/* Uniform float in [0, 1) from 24 random bits of `bits`. */
static inline float rng_uniform(uint64_t bits) {
    return (float)(bits >> 40) * (1.0f / 16777216.0f);
}

/* A standard normal value from two independent keys' bits (Box-Muller). */
double rng_normal(uint64_t bits1, uint64_t bits2);

/* A small sequential generator (xoshiro256**), for shuffles. */
typedef struct rng_stream {
    uint64_t state[4];
} rng_stream;

rng_stream rng_stream_init(uint64_t seed);
uint64_t rng_stream_next(rng_stream *stream);
/* Unbiased integer in [0, bound); bound > 0. */
uint64_t rng_stream_below(rng_stream *stream, uint64_t bound);

#endif
