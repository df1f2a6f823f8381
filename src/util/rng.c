/* rng.c - Box-Muller normals and keyed Feistel permutations behind rng.h (the splitmix64 hash
 * is inline in rng.h, shared with CUDA kernels). */
#include "util/rng.h"

#include <math.h>

double rng_normal(uint64_t bits1, uint64_t bits2) {
    /* 53-bit uniforms; u1 in (0, 1] so the log is finite. */
    double u1 = ((double)(bits1 >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(bits2 >> 11) * (1.0 / 9007199254740992.0);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

rng_permutation rng_permutation_init(uint64_t count, uint64_t key) {
    rng_permutation permutation = {.count = count ? count : 1};
    /* Bits to write count - 1, split into two equal halves of at least one bit. */
    int bits = 0;
    for (uint64_t rest = permutation.count - 1; rest; rest >>= 1)
        bits++;
    permutation.half_bits = bits < 2 ? 1 : (bits + 1) / 2;
    permutation.half_mask = (1ull << permutation.half_bits) - 1;
    for (int r = 0; r < RNG_PERMUTATION_ROUNDS; r++) {
        key = rng_splitmix64(key);
        permutation.round_keys[r] = key;
    }
    return permutation;
}

/* One pass of the network over the 2h-bit domain: (L, R) -> (R, L ^ F(R)) per round. */
static uint64_t feistel_forward(const rng_permutation *p, uint64_t value) {
    uint64_t left = value >> p->half_bits, right = value & p->half_mask;
    for (int r = 0; r < RNG_PERMUTATION_ROUNDS; r++) {
        uint64_t mixed = left ^ (rng_splitmix64(p->round_keys[r] ^ right) & p->half_mask);
        left = right;
        right = mixed;
    }
    return (left << p->half_bits) | right;
}

static uint64_t feistel_backward(const rng_permutation *p, uint64_t value) {
    uint64_t left = value >> p->half_bits, right = value & p->half_mask;
    for (int r = RNG_PERMUTATION_ROUNDS - 1; r >= 0; r--) {
        uint64_t previous = right ^ (rng_splitmix64(p->round_keys[r] ^ left) & p->half_mask);
        right = left;
        left = previous;
    }
    return (left << p->half_bits) | right;
}

uint64_t rng_permutation_apply(const rng_permutation *permutation, uint64_t position) {
    uint64_t value = feistel_forward(permutation, position);
    while (value >= permutation->count)
        value = feistel_forward(permutation, value);
    return value;
}

uint64_t rng_permutation_invert(const rng_permutation *permutation, uint64_t item) {
    uint64_t value = feistel_backward(permutation, item);
    while (value >= permutation->count)
        value = feistel_backward(permutation, value);
    return value;
}
