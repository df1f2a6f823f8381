/* test_util_units.c - the one rule for sizes and durations, and the formats. */
#include <string.h>

#include "check.h"
#include "util/units.h"

static uint64_t size_of(const char *text) {
    uint64_t bytes = 12345;
    return units_parse_size("--x", text, &bytes) == DDT_OK ? bytes : (uint64_t)-1;
}

int main(void) {
    CHECK(size_of("4096") == 4096 && size_of("4096B") == 4096 && size_of("0") == 0);
    CHECK(size_of("256KiB") == 256 << 10 && size_of("256K") == 256 << 10 &&
          size_of("256kib") == 256 << 10);
    CHECK(size_of("64MiB") == 64 << 20 && size_of("64M") == 64 << 20);
    CHECK(size_of("1.5GiB") == (uint64_t)3 << 29 && size_of("2 GiB") == (uint64_t)2 << 30);
    CHECK(size_of("1TiB") == (uint64_t)1 << 40);
    CHECK(size_of("2GB") == 2000000000ull && size_of("3kB") == 3000 && size_of("5MB") == 5000000);
    CHECK(size_of("") == (uint64_t)-1 && size_of("GiB") == (uint64_t)-1);
    CHECK(size_of("-1MiB") == (uint64_t)-1 && size_of("nan") == (uint64_t)-1);
    CHECK(size_of("10 parsecs") == (uint64_t)-1);
    CHECK(strstr(ddt_error_message(), "--x: '10 parsecs' has an unknown unit") != NULL);
    CHECK(size_of("9EiB") == (uint64_t)-1 && size_of("16777216TiB") == (uint64_t)-1);
    double s = 0;
    CHECK_OK(units_parse_duration("--d", "90s", &s));
    CHECK(s == 90);
    CHECK_OK(units_parse_duration("--d", "10min", &s));
    CHECK(s == 600);
    CHECK_OK(units_parse_duration("--d", "1.5h", &s));
    CHECK(s == 5400);
    CHECK_OK(units_parse_duration("--d", "250ms", &s));
    CHECK(s == 0.25);
    CHECK(units_parse_duration("--d", "90", &s) == DDT_ERR_USAGE); /* a unit is required */
    CHECK(units_parse_duration("--d", "soon", &s) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "--d: 'soon' is not a duration") != NULL);
    char text[32];
    CHECK(strcmp(units_format_bytes(812, text, sizeof text), "812 bytes") == 0);
    CHECK(strcmp(units_format_bytes(1536, text, sizeof text), "1.5 KiB") == 0);
    CHECK(strcmp(units_format_bytes((uint64_t)256 << 20, text, sizeof text), "256.0 MiB") == 0);
    CHECK(strcmp(units_format_bytes((uint64_t)5 << 28, text, sizeof text), "1.25 GiB") == 0);
    CHECK(strcmp(units_format_duration(42, text, sizeof text), "0:42") == 0);
    CHECK(strcmp(units_format_duration(725, text, sizeof text), "12:05") == 0);
    CHECK(strcmp(units_format_duration(3723, text, sizeof text), "1:02:03") == 0);
    return check_finish();
}
