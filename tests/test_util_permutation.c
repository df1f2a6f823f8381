/* test_util_permutation.c - the keyed permutation behind every shuffle (rng_permutation in
 * util/rng.h): a bijection of [0, n) for every n tried, tiny to 2^63, its inverse, its keys,
 * and that it holds no state beyond its struct. */
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "util/rng.h"

/* Every position maps into [0, n), no item twice, and invert undoes apply. */
static int is_bijection(uint64_t n, uint64_t key) {
    rng_permutation p = rng_permutation_init(n, key);
    unsigned char *seen = calloc((size_t)n, 1);
    int ok = seen != NULL;
    for (uint64_t i = 0; ok && i < n; i++) {
        uint64_t item = rng_permutation_apply(&p, i);
        ok = item < n && !seen[item] && rng_permutation_invert(&p, item) == i;
        if (ok) seen[item] = 1;
    }
    free(seen);
    return ok;
}

static void test_small_sizes(void) {
    int all = 1;
    for (uint64_t n = 1; n <= 1100; n++)
        for (uint64_t key = 0; key < 3; key++)
            all &= is_bijection(n, key * 0x9E3779B97F4A7C15ull + n);
    CHECK(all);
    /* n = 1: the only permutation. */
    rng_permutation one = rng_permutation_init(1, 42);
    CHECK(rng_permutation_apply(&one, 0) == 0);
    CHECK(rng_permutation_invert(&one, 0) == 0);
}

static void test_sizes_around_powers_of_two(void) {
    int all = 1;
    for (int bits = 11; bits <= 18; bits++) {
        uint64_t power = 1ull << bits;
        all &= is_bijection(power - 1, (uint64_t)bits);
        all &= is_bijection(power, (uint64_t)bits);
        all &= is_bijection(power + 1, (uint64_t)bits);
    }
    all &= is_bijection(1000003, 7); /* a prime */
    all &= is_bijection(60000, 1234);
    CHECK(all);
}

/* Too large to enumerate: apply stays in range and invert undoes it on many samples, and
 * distinct positions give distinct items among them. */
static void test_huge_sizes(void) {
    static const uint64_t sizes[] = {1ull << 32,       (1ull << 32) + 1,     1ull << 40,
                                     1000000000000ull, (1ull << 62) + 12345, 1ull << 63,
                                     (1ull << 63) - 1};
    enum { SAMPLES = 20000 };
    uint64_t *items = malloc(SAMPLES * sizeof *items);
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        uint64_t n = sizes[s];
        rng_permutation p = rng_permutation_init(n, 99 + s);
        int in_range = 1, inverse = 1, distinct = 1;
        for (int i = 0; i < SAMPLES; i++) {
            /* Both ends and scattered positions in between. */
            uint64_t position = i < SAMPLES / 2 ? (uint64_t)i : n - 1 - rng_splitmix64(i) % (n / 2);
            uint64_t item = rng_permutation_apply(&p, position);
            in_range &= item < n;
            inverse &= rng_permutation_invert(&p, item) == position;
            items[i] = item;
        }
        for (int i = 1; i < SAMPLES / 2; i++)
            distinct &= items[i] != items[i - 1];
        CHECK(in_range);
        CHECK(inverse);
        CHECK(distinct);
    }
    free(items);
}

/* The first items of a shuffle of a large n are spread over the whole range, and different
 * keys give different permutations; the same key the same one. */
static void test_keys_and_spread(void) {
    enum { N = 1 << 20 };
    rng_permutation a = rng_permutation_init(N, 1), b = rng_permutation_init(N, 1),
                    c = rng_permutation_init(N, 2);
    int same = 1;
    int64_t differ = 0, fixed = 0;
    int quarter[4] = {0};
    for (uint64_t i = 0; i < 4096; i++) {
        uint64_t item = rng_permutation_apply(&a, i);
        same &= item == rng_permutation_apply(&b, i);
        differ += item != rng_permutation_apply(&c, i);
        fixed += item == i;
        quarter[item / (N / 4)]++;
    }
    CHECK(same);
    CHECK(differ > 4000);
    CHECK(fixed < 10);
    for (int q = 0; q < 4; q++)
        CHECK(quarter[q] > 850 && quarter[q] < 1200); /* 1024 expected */
    /* Small n: each of the 6 orders of 3 items appears for some keys (100 expected of 600). */
    int orders[9] = {0};
    for (uint64_t key = 0; key < 600; key++) {
        rng_permutation p = rng_permutation_init(3, key);
        orders[rng_permutation_apply(&p, 0) * 3 + rng_permutation_apply(&p, 1)]++;
    }
    int all_orders = 1;
    for (int first = 0; first < 3; first++)
        for (int second = 0; second < 3; second++)
            if (first != second) all_orders &= orders[first * 3 + second] > 30;
    CHECK(all_orders);
}

/* Nothing is allocated: the permutation is its struct. */
static void test_constant_memory(void) {
    struct mallinfo2 before = mallinfo2();
    uint64_t sum = 0;
    for (int k = 0; k < 100; k++) {
        rng_permutation p = rng_permutation_init(1000000000000ull, (uint64_t)k);
        for (uint64_t i = 0; i < 1000; i++)
            sum += rng_permutation_apply(&p, i * 999999937ull);
    }
    struct mallinfo2 after = mallinfo2();
    CHECK(after.uordblks + after.hblkhd == before.uordblks + before.hblkhd);
    CHECK(sizeof(rng_permutation) <= 128);
    printf("permutation: %zu bytes of state, 10^5 lookups in 10^12 allocate nothing (%llu)\n",
           sizeof(rng_permutation), (unsigned long long)(sum % 10));
}

int main(void) {
    test_small_sizes();
    test_sizes_around_powers_of_two();
    test_huge_sizes();
    test_keys_and_spread();
    test_constant_memory();
    return check_finish();
}
