/* test_train_generate.c - the prompt of `ddtrain generate`: bytes for byte-level models; for
 * others, decimal token ids separated by one comma or by spaces, and a clear refusal of
 * everything else (an empty id between commas or at either end, a sign, other characters, an
 * id at or beyond the vocabulary however long). */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "engine/model_spec.h"
#include "train/generate.h"

/* Parses `text` for `spec`; true if accepted with exactly the `expected` ids. */
static bool parses_to(const model_spec *spec, const char *text, const int32_t *expected,
                      int expected_count) {
    int32_t *ids = NULL;
    int count = 0;
    ddt_status status = generate_parse_prompt(spec, text, &ids, &count);
    bool same = status == DDT_OK && count == expected_count &&
                memcmp(ids, expected, (size_t)count * sizeof *ids) == 0;
    free(ids);
    return same;
}

/* Refused as a usage error whose message contains `text_in_message`. */
static bool refused(const model_spec *spec, const char *text, const char *text_in_message) {
    int32_t *ids = NULL;
    int count = 0;
    ddt_status status = generate_parse_prompt(spec, text, &ids, &count);
    free(ids);
    return status == DDT_ERR_USAGE && ids == NULL && strstr(ddt_error_message(), text_in_message);
}

int main(void) {
    model_spec *spec = malloc(sizeof *spec);
    CHECK_OK(model_spec_parse("gpt(layers=1,heads=2,width=16,context=16,vocab=1000)", spec));
    const int32_t abc[] = {1, 2, 3};
    CHECK(parses_to(spec, "1,2,3", abc, 3));
    CHECK(parses_to(spec, "1 2 3", abc, 3));
    CHECK(parses_to(spec, "  1 ,  2,3  ", abc, 3));
    CHECK(parses_to(spec, "1\t2\n3", abc, 3));
    CHECK(parses_to(spec, "01, 002, 3", abc, 3));
    const int32_t edge[] = {0, 999};
    CHECK(parses_to(spec, "0 999", edge, 2));
    /* Empty ids. */
    CHECK(refused(spec, "1,,2", "two commas in a row"));
    CHECK(refused(spec, "1, ,2", "two commas in a row"));
    CHECK(refused(spec, ",1,2", "a comma at the start"));
    CHECK(refused(spec, " , 1", "a comma at the start"));
    CHECK(refused(spec, "1,2,", "a comma at the end"));
    CHECK(refused(spec, "1,2 , ", "a comma at the end"));
    CHECK(refused(spec, ",", "a comma at the start"));
    CHECK(refused(spec, "", "empty"));
    CHECK(refused(spec, "   ", "empty"));
    /* Signs and other characters. */
    CHECK(refused(spec, "-1", "has a sign"));
    CHECK(refused(spec, "1 -2", "has a sign"));
    CHECK(refused(spec, "1,-0", "has a sign"));
    CHECK(refused(spec, "+5", "has a sign"));
    CHECK(refused(spec, "1;2", "is not a token id"));
    CHECK(refused(spec, "12abc", "is not a token id"));
    CHECK(refused(spec, "0x10", "is not a token id"));
    CHECK(refused(spec, "1.5", "is not a token id"));
    CHECK(refused(spec, "hello", "is not a token id"));
    CHECK(refused(spec, "1 - 2", "is not a token id"));
    /* Beyond the vocabulary, however many digits. */
    CHECK(refused(spec, "5 1000", "give token ids below 1000"));
    CHECK(refused(spec, "99999999999999999999999999999999", "not below the vocabulary of 1000"));
    CHECK(refused(spec, "4294967297", "not below the vocabulary"));
    /* The message says where. */
    CHECK(refused(spec, "1,,2", "character 3"));
    /* Byte-level models take the text's bytes, commas and all. */
    CHECK_OK(model_spec_parse("gpt(layers=1,heads=2,width=16,context=16,vocab=256)", spec));
    const int32_t bytes[] = {'1', ',', ',', '2'};
    CHECK(parses_to(spec, "1,,2", bytes, 4));
    free(spec);
    return check_finish();
}
