/* units.c - sizes and durations, parsed and printed (see units.h). */
#include "util/units.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

typedef struct unit {
    const char *name;
    double scale;
} unit;

/* Reads "<number><unit>" with the unit one of `units` (case-insensitive; "" for none). */
static int parse_number_and_unit(const char *text, const unit *units, size_t count,
                                 double *value, double *scale) {
    if (!text) return 0;
    while (isspace((unsigned char)*text))
        text++;
    if (!isdigit((unsigned char)text[0]) && text[0] != '.') return 0;
    errno = 0;
    char *end = NULL;
    *value = strtod(text, &end);
    if (end == text || errno != 0 || !isfinite(*value) || *value < 0) return 0;
    while (isspace((unsigned char)*end))
        end++;
    for (size_t i = 0; i < count; i++)
        if (strcasecmp(end, units[i].name) == 0) {
            *scale = units[i].scale;
            return 1;
        }
    return -1; /* a number, but an unknown unit */
}

ddt_status units_parse_size(const char *what, const char *text, uint64_t *bytes) {
    static const unit units[] = {
        {"", 1},         {"b", 1},        {"k", 0x1p10},   {"kib", 0x1p10}, {"m", 0x1p20},
        {"mib", 0x1p20}, {"g", 0x1p30},   {"gib", 0x1p30}, {"t", 0x1p40},   {"tib", 0x1p40},
        {"kb", 1e3},     {"mb", 1e6},     {"gb", 1e9},     {"tb", 1e12},
    };
    double value = 0, scale = 1;
    int parsed = parse_number_and_unit(text, units, sizeof units / sizeof units[0], &value, &scale);
    if (parsed == -1)
        return ddt_error(DDT_ERR_USAGE,
                         "%s: '%s' has an unknown unit (use B, KiB, MiB, GiB, TiB, or kB, MB, GB, "
                         "TB)",
                         what, text);
    if (parsed == 0)
        return ddt_error(DDT_ERR_USAGE, "%s: '%s' is not a size (e.g. 512MiB, 2GiB, 1000000)",
                         what, text ? text : "");
    double result = floor(value * scale);
    if (result >= 0x1p63) return ddt_error(DDT_ERR_USAGE, "%s: '%s' is too large", what, text);
    *bytes = (uint64_t)result;
    return DDT_OK;
}

ddt_status units_parse_duration(const char *what, const char *text, double *seconds) {
    static const unit units[] = {
        {"ms", 1e-3}, {"s", 1}, {"sec", 1}, {"min", 60}, {"h", 3600},
    };
    double value = 0, scale = 1;
    int parsed = parse_number_and_unit(text, units, sizeof units / sizeof units[0], &value, &scale);
    if (parsed != 1)
        return ddt_error(DDT_ERR_USAGE, "%s: '%s' is not a duration (e.g. 90s, 10min, 2h)", what,
                         text ? text : "");
    *seconds = value * scale;
    return DDT_OK;
}

const char *units_format_bytes(uint64_t bytes, char *buffer, size_t size) {
    const double kib = 1024.0, mib = kib * 1024.0, gib = mib * 1024.0;
    if (bytes < 1024)
        snprintf(buffer, size, "%llu bytes", (unsigned long long)bytes);
    else if (bytes < (uint64_t)1 << 20)
        snprintf(buffer, size, "%.1f KiB", (double)bytes / kib);
    else if (bytes < (uint64_t)1 << 30)
        snprintf(buffer, size, "%.1f MiB", (double)bytes / mib);
    else
        snprintf(buffer, size, "%.2f GiB", (double)bytes / gib);
    return buffer;
}

const char *units_format_duration(double seconds, char *buffer, size_t size) {
    long s = seconds > 0 ? (long)(seconds + 0.5) : 0;
    if (s >= 3600)
        snprintf(buffer, size, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(buffer, size, "%ld:%02ld", s / 60, s % 60);
    return buffer;
}
