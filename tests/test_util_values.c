/* test_util_values.c - the value checks: every non-finite float found wherever it sits (the
 * vectorised loop's body and its tail), finite extremes and negative zero accepted; ids
 * below the bound accepted, negatives and the bound itself refused. */
#include <math.h>
#include <string.h>

#include "check.h"
#include "util/values.h"

int main(void) {
    enum { N = 1031 }; /* not a multiple of any vector width */
    static float x[N];
    for (int i = 0; i < N; i++)
        x[i] = (float)(i - 500) * 1e-3f;
    x[3] = 3.4028235e38f;  /* FLT_MAX */
    x[4] = -3.4028235e38f;
    x[5] = 1e-45f; /* denormal */
    x[6] = -0.0f;
    CHECK(values_all_finite(x, N));
    CHECK(values_all_finite(x, 0));
    const float bad[] = {NAN, INFINITY, -INFINITY, -NAN};
    for (int k = 0; k < 4; k++)
        for (int at = 0; at < N; at += 97) {
            float keep = x[at];
            x[at] = bad[k];
            CHECK(!values_all_finite(x, N));
            CHECK(at == 0 || values_all_finite(x, (size_t)at)); /* only the prefix before it */
            x[at] = keep;
        }
    x[N - 1] = NAN; /* the very last value, in the tail */
    CHECK(!values_all_finite(x, N));

    static int32_t ids[N];
    for (int i = 0; i < N; i++)
        ids[i] = i % 256;
    CHECK(values_all_below(ids, N, 256));
    CHECK(!values_all_below(ids, N, 255));
    ids[N - 1] = -1;
    CHECK(!values_all_below(ids, N, 256));
    ids[N - 1] = 256;
    CHECK(!values_all_below(ids, N, 256));
    ids[N - 1] = 0;
    CHECK(values_all_below(ids, N, 256));
    CHECK(values_all_below(ids, 0, 0));
    return check_finish();
}
