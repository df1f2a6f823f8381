/* test_util_checked.c - overflow is detected at the exact boundary, never wrapped. */
#include <stdint.h>

#include "check.h"
#include "util/checked.h"

int main(void) {
    int64_t v = 7;
    CHECK(checked_multiply_int64(2097152, 2097152, &v) && v == (int64_t)1 << 42);
    v = 7;
    /* 2097152^3 = 2^63: one more than INT64_MAX (the --model 2097152x2097152x2097152 case). */
    CHECK(!checked_multiply_int64((int64_t)1 << 42, 2097152, &v) && v == 7);
    CHECK(checked_multiply_int64(INT64_MAX, 1, &v) && v == INT64_MAX);
    CHECK(!checked_multiply_int64(INT64_MIN, -1, &v));
    CHECK(checked_add_int64(INT64_MAX - 1, 1, &v) && v == INT64_MAX);
    CHECK(!checked_add_int64(INT64_MAX, 1, &v));

    size_t s = 3;
    CHECK(checked_multiply_size(SIZE_MAX / 2, 2, &s) && s == SIZE_MAX - 1);
    CHECK(!checked_multiply_size(SIZE_MAX / 2 + 1, 2, &s) && s == SIZE_MAX - 1);
    CHECK(checked_add_size(SIZE_MAX - 5, 5, &s) && s == SIZE_MAX);
    CHECK(!checked_add_size(SIZE_MAX, 1, &s));

    int ok_dims[3] = {3, 32, 32}, big_dims[3] = {2097152, 2097152, 2097152}, negative[2] = {4, -1};
    CHECK(checked_product_int64(ok_dims, 3, &v) && v == 3072);
    CHECK(checked_product_int64(ok_dims, 0, &v) && v == 1);
    v = 9;
    CHECK(!checked_product_int64(big_dims, 3, &v) && v == 9);
    CHECK(!checked_product_int64(negative, 2, &v));

    /* synth --rows 9e18 --shards 2 computed rows * 2 / 2: signed overflow */
    int64_t rows = 9000000000000000000;
    CHECK(checked_part_start(rows, 0, 2) == 0 && checked_part_start(rows, 1, 2) == rows / 2 &&
          checked_part_start(rows, 2, 2) == rows);
    CHECK(checked_part_start(INT64_MAX, 99999, 100000) ==
          (int64_t)((__int128)INT64_MAX * 99999 / 100000)); /* the exact quotient */
    for (int64_t count = 0; count < 50; count++)
        for (int64_t parts = 1; parts < 9; parts++)
            for (int64_t k = 0; k <= parts; k++)
                CHECK(checked_part_start(count, k, parts) == count * k / parts);

    CHECK(saturated_multiply_size(1 << 20, 1 << 20) == (size_t)1 << 40);
    CHECK(saturated_multiply_size((size_t)1 << 40, (size_t)1 << 40) == SIZE_MAX);
    CHECK(saturated_add_size(SIZE_MAX, 0) == SIZE_MAX);
    CHECK(saturated_add_size(SIZE_MAX - 1, 2) == SIZE_MAX);
    CHECK(saturated_multiply_size(SIZE_MAX, 0) == 0);
    return check_finish();
}
