/* test_util_status.c - error messages: a message may quote the previous one (context added
 * on the way up, as ddt_error(code, "%s: %s", what, ddt_error_message()) does), without the
 * garbling of formatting a buffer into itself; trails, names and exit codes.
 */
#include <string.h>

#include "check.h"
#include "util/status.h"

int main(void) {
    ddt_error(DDT_ERR_USAGE, "'%s' is not a size", "nana");
    CHECK(ddt_error(DDT_ERR_USAGE, "--device-memory-limit: %s", ddt_error_message()) ==
          DDT_ERR_USAGE);
    CHECK(strcmp(ddt_error_message(), "--device-memory-limit: 'nana' is not a size") == 0);
    /* Twice more, with the message at the start of the format's arguments and alone. */
    ddt_error(DDT_ERR_IO, "%s (while saving)", ddt_error_message());
    CHECK(strcmp(ddt_error_message(),
                 "--device-memory-limit: 'nana' is not a size (while saving)") == 0);
    ddt_error(DDT_ERR_IO, "%s", ddt_error_message());
    CHECK(strcmp(ddt_error_message(),
                 "--device-memory-limit: 'nana' is not a size (while saving)") == 0);
    /* A long message is cut, not overrun. */
    char long_text[3000];
    memset(long_text, 'x', sizeof long_text - 1);
    long_text[sizeof long_text - 1] = '\0';
    ddt_error(DDT_ERR_DATA, "%s", long_text);
    CHECK(strlen(ddt_error_message()) < sizeof long_text - 1);
    ddt_error(DDT_ERR_DATA, "%s%s", ddt_error_message(), ddt_error_message());
    CHECK(ddt_error_message()[0] == 'x');
    /* Trails and names. */
    ddt_error(DDT_ERR_IO, "x");
    ddt_error_trace("a.c", 1);
    ddt_error_trace("b.c", 2);
    CHECK(strcmp(ddt_error_trail(), "a.c:1 <- b.c:2") == 0);
    ddt_error_clear();
    CHECK(ddt_error_message()[0] == '\0' && ddt_error_trail()[0] == '\0');
    CHECK(ddt_status_exit_code(DDT_OK) == 0 && ddt_status_exit_code(DDT_ERR_USAGE) == 2 &&
          ddt_status_exit_code(DDT_ERR_IO) == 1);
    return check_finish();
}
