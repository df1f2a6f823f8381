/* rng.c - splitmix64 hashing and xoshiro256** streams behind rng.h. */
#include "util/rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

uint64_t rng_hash4(uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
    uint64_t h = splitmix64(a);
    h = splitmix64(h ^ b);
    h = splitmix64(h ^ c);
    return splitmix64(h ^ d);
}

double rng_normal(uint64_t bits1, uint64_t bits2) {
    /* 53-bit uniforms; u1 in (0, 1] so the log is finite. */
    double u1 = ((double)(bits1 >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(bits2 >> 11) * (1.0 / 9007199254740992.0);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

rng_stream rng_stream_init(uint64_t seed) {
    rng_stream stream;
    for (int i = 0; i < 4; i++) {
        seed = splitmix64(seed);
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
