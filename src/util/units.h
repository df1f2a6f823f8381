/* units.h - one rule for sizes and durations written by people, and one way to print them.
 *
 * Sizes: a number (decimals allowed) and an optional unit, case-insensitive, no space needed:
 *     B; K KiB, M MiB, G GiB, T TiB (binary: 1024^n); kB MB GB TB (decimal: 1000^n).
 * A bare number is bytes. "1.5GiB" = 1610612736, "64M" = 67108864, "2GB" = 2000000000.
 * Every option that takes a size (--bucket-size, --host-staging-limit, --device-memory-limit,
 * the bench tools' sizes) goes through units_parse_size(), so the same text means the same
 * bytes everywhere.
 *
 * Durations: a number and a unit: ms, s (sec), min, h. "90s", "10min", "1.5h".
 *
 * Usage:
 *     uint64_t bytes;
 *     DDT_CHECK(units_parse_size("--bucket-size", "256KiB", &bytes));
 *     char text[32];
 *     printf("%s\n", units_format_bytes(bytes, text, sizeof text));   // "256.0 KiB"
 */
#ifndef DDT_UTIL_UNITS_H
#define DDT_UTIL_UNITS_H

#include <stddef.h>
#include <stdint.h>

#include "util/status.h"

/* DDT_ERR_USAGE naming `what` (an option name) and the text, for anything else: no number, an
 * unknown unit, a negative value, or more than 2^63 bytes. */
ddt_status units_parse_size(const char *what, const char *text, uint64_t *bytes);
/* DDT_ERR_USAGE naming `what` for a missing or unknown unit, a negative or non-finite value. */
ddt_status units_parse_duration(const char *what, const char *text, double *seconds);

/* "812 bytes", "1.5 KiB", "256.0 MiB", "1.25 GiB"; returns buffer. */
const char *units_format_bytes(uint64_t bytes, char *buffer, size_t size);
/* "0:42", "12:05", "1:02:03" (h:mm:ss once past an hour); returns buffer. */
const char *units_format_duration(double seconds, char *buffer, size_t size);

#endif
