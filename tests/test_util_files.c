/* test_util_files.c - file identity under every spelling, the outputs-against-inputs rule,
 * durable publication, and space reservation. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "util/files.h"

static void touch(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

int main(void) {
    char dir[512], a[600], dot[600], detour[600], link_path[600], hard[600], sub[600], b[600];
    snprintf(dir, sizeof dir, "%s", check_temp_dir());
    snprintf(a, sizeof a, "%s/a.h5", dir);
    snprintf(dot, sizeof dot, "%s/./a.h5", dir);
    snprintf(sub, sizeof sub, "%s/sub", dir);
    snprintf(detour, sizeof detour, "%s/sub/../a.h5", dir);
    snprintf(link_path, sizeof link_path, "%s/link.h5", dir);
    snprintf(hard, sizeof hard, "%s/hard.h5", dir);
    snprintf(b, sizeof b, "%s/sub/b.h5", dir);
    mkdir(sub, 0755);
    touch(a, "input");
    touch(b, "other");
    unlink(link_path);
    unlink(hard);
    CHECK(symlink(a, link_path) == 0);
    CHECK(link(a, hard) == 0);
    file_identity ia = file_identity_of(a);
    CHECK(ia.exists);
    const char *spellings[] = {dot, detour, link_path, hard};
    for (int i = 0; i < 4; i++) CHECK(file_identity_equal(ia, file_identity_of(spellings[i])));
    CHECK(!file_identity_equal(ia, file_identity_of(b)));
    char missing[600];
    snprintf(missing, sizeof missing, "%s/missing.h5", dir);
    CHECK(!file_identity_of(missing).exists);
    CHECK(!file_identity_equal(file_identity_of(missing), file_identity_of(missing)));

    file_role inputs[] = {{"--data", a, false}, {"--eval-data", b, false}};
    for (int i = 0; i < 4; i++) {
        file_role out = {"--save", spellings[i], false};
        CHECK(files_check_outputs(&out, 1, inputs, 2) == DDT_ERR_USAGE);
        CHECK(strstr(ddt_error_message(), "is the same file as the input --data"));
    }
    file_role fine[] = {{"--save", missing, false}, {"--metrics", NULL, false}};
    CHECK_OK(files_check_outputs(fine, 2, inputs, 2));
    file_role holds = {"--checkpoint-dir", sub, true};
    CHECK(files_check_outputs(&holds, 1, inputs, 2) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "holds the input --eval-data"));
    file_role not_holding = {"--checkpoint-dir", sub, true};
    CHECK_OK(files_check_outputs(&not_holding, 1, inputs, 1)); /* only a.h5, outside sub */
    file_role twins[] = {{"--save", missing, false}, {"--trace", missing, false}};
    CHECK(files_check_outputs(twins, 2, inputs, 2) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "both name"));

    /* Publication: the new content replaces the old whole; no temporary is left. */
    char temp[700];
    file_temp_path(a, temp, sizeof temp);
    CHECK(strstr(temp, "a.h5.tmp-") != NULL);
    touch(temp, "new content");
    CHECK_OK(file_publish(temp, a));
    CHECK(access(temp, F_OK) != 0);
    char text[32] = "";
    FILE *f = fopen(a, "r");
    if (f) {
        CHECK(fgets(text, sizeof text, f) != NULL);
        fclose(f);
    }
    CHECK(strcmp(text, "new content") == 0);
    CHECK(file_publish(temp, a) == DDT_ERR_IO); /* nothing to publish */

    /* Reservation: room the file system has is granted; an impossible size is refused naming
     * the file (a full disk's message, with the free bytes, is checked on a small tmpfs by
     * tests/e2e/outputs.sh). */
    int fd = open(b, O_RDWR);
    CHECK(fd >= 0);
    CHECK_OK(file_reserve(fd, b, 1 << 20));
    ddt_status huge = file_reserve(fd, b, (uint64_t)1 << 62);
    CHECK(huge == DDT_ERR_IO || huge == DDT_OK); /* OK where reserving is not supported */
    if (huge == DDT_ERR_IO) CHECK(strstr(ddt_error_message(), b) != NULL);
    close(fd);
    unlink(link_path);
    unlink(hard);
    return check_finish();
}
