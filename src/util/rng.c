/* rng.c - Box-Muller normals and xoshiro256** streams behind rng.h (the splitmix64 hash is
 * inline in rng.h, shared with CUDA kernels). */
#include "util/rng.h"

#include <math.h>

double rng_normal(uint64_t bits1, uint64_t bits2) {
    /* 53-bit uniforms; u1 in (0, 1] so the log is finite. */
    double u1 = ((double)(bits1 >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(bits2 >> 11) * (1.0 / 9007199254740992.0);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

rng_stream rng_stream_init(uint64_t seed) {
    rng_stream stream;
    for (int i = 0; i < 4; i++) {
        seed = rng_splitmix64(seed);
        stream.state[i] = seed;
    }
    return stream;
}

static uint64_t rotate_left(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

uint64_t rng_stream_next(rng_stream *stream) {
    uint64_t *s = stream->state;
    uint64_t result = rotate_left(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotate_left(s[3], 45);
    return result;
}

uint64_t rng_stream_below(rng_stream *stream, uint64_t bound) {
    /* Rejection sampling on the top of the range keeps the result unbiased. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
    uint64_t x;
    do {
        x = rng_stream_next(stream);
    } while (x >= limit);
    return x % bound;
}
