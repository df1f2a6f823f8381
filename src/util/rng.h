/* rng.h - deterministic random numbers keyed by what they are for.
 *
 * ddtrain's results must not depend on the number of ranks, the micro-batch size or the order
 * in which threads run. So randomness is never drawn from a shared stream: each random value is
 * a pure function of a key (seed, purpose, indices), computed with rng_hash(). Shuffles are
 * keyed permutations (rng_permutation): position i of a shuffle of n items is computed on its
 * own, in constant time and memory, so shuffling 10^12 rows needs no table of 10^12 entries.
 *
 * The hash and rng_uniform() are defined here, inline and marked DDT_HOST_DEVICE, so CUDA
 * kernels (src/engine/cuda/kernels.cu) compile the very same code: dropout masks drawn on a
 * GPU are bit-identical to those drawn on the CPU. Integer arithmetic and one exact float
 * product leave no room for the compilers to differ.
 *
 * Usage:
 *     float u = rng_uniform(rng_hash4(seed, RNG_PURPOSE_DROPOUT, step, row * width + unit));
 *     rng_permutation p = rng_permutation_init(n, rng_hash4(seed, RNG_PURPOSE_SHUFFLE_BLOCKS,
 *                                                           epoch, 0));
 *     uint64_t item = rng_permutation_apply(&p, position);      // position < n
 *     uint64_t back = rng_permutation_invert(&p, item);         // == position
 */
#ifndef DDT_UTIL_RNG_H
#define DDT_UTIL_RNG_H

#include <stdint.h>

/* Functions both host and device code call: __host__ __device__ under nvcc, plain C else. */
#ifdef __CUDACC__
#define DDT_HOST_DEVICE __host__ __device__
#else
#define DDT_HOST_DEVICE
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Separate key spaces so that, e.g., the init of layer 0 and the shuffle of epoch 0 differ. */
enum rng_purpose {
    RNG_PURPOSE_INIT = 1,
    RNG_PURPOSE_SHUFFLE_BLOCKS = 2,
    RNG_PURPOSE_SHUFFLE_WINDOW = 3,
    RNG_PURPOSE_DROPOUT = 4,
    RNG_PURPOSE_SYNTH = 5,
    RNG_PURPOSE_CONVERT = 6, /* the order of `ddtrain convert images` */
    RNG_PURPOSE_SAMPLE = 7, /* generating text: the draw of each new token */
};

/* The splitmix64 finaliser: a bijection of 64-bit values that mixes every bit into every bit. */
static inline DDT_HOST_DEVICE uint64_t rng_splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* A well-mixed 64-bit value from the key (a, b, c, d); splitmix64 finalisers chained. */
static inline DDT_HOST_DEVICE uint64_t rng_hash4(uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
    uint64_t h = rng_splitmix64(a);
    h = rng_splitmix64(h ^ b);
    h = rng_splitmix64(h ^ c);
    return rng_splitmix64(h ^ d);
}

/* Uniform float in [0, 1) from 24 random bits of `bits`: an integer below 2^24 (exact as a
 * float) times 2^-24 (exact), so every compiler and device rounds it the same way. */
static inline DDT_HOST_DEVICE float rng_uniform(uint64_t bits) {
    return (float)(bits >> 40) * (1.0f / 16777216.0f);
}

/* A standard normal value from two independent keys' bits (Box-Muller). */
double rng_normal(uint64_t bits1, uint64_t bits2);

/* A keyed pseudo-random permutation of [0, n), computed one element at a time: a balanced
 * Feistel network of RNG_PERMUTATION_ROUNDS rounds over the smallest domain of 2^(2h) >= n
 * values (h >= 1 bits per half), with splitmix64 of (round key ^ half) as the round function,
 * and cycle walking (apply again while the result is >= n) to stay inside [0, n). A Feistel
 * network is a bijection of its domain whatever the round function, and cycle walking keeps
 * a bijection of [0, n) because every cycle through a value below n returns to it; the
 * domain is less than 4n, so a value takes fewer than 4 applications on average. Memory is
 * the struct; apply and invert cost O(rounds) expected. n may be anything from 1 to 2^63. */
#define RNG_PERMUTATION_ROUNDS 8

typedef struct rng_permutation {
    uint64_t count;     /* n */
    int half_bits;      /* h */
    uint64_t half_mask; /* 2^h - 1 */
    uint64_t round_keys[RNG_PERMUTATION_ROUNDS];
} rng_permutation;

/* The permutation of [0, count) keyed by `key` (count >= 1). */
rng_permutation rng_permutation_init(uint64_t count, uint64_t key);
/* The item at position `position` (< count). */
uint64_t rng_permutation_apply(const rng_permutation *permutation, uint64_t position);
/* The position of `item` (< count): rng_permutation_apply's inverse. */
uint64_t rng_permutation_invert(const rng_permutation *permutation, uint64_t item);

#ifdef __cplusplus
}
#endif

#endif
