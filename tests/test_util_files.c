/* test_util_files.c - file identity under every spelling, the outputs-against-inputs rule,
 * durable publication, space reservation, regular-file inputs, and the temporary files a
 * signal removes. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
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

/* Inputs: a regular file (or a link to one) is opened; a FIFO, a device, a directory, a
 * dangling link and a link loop are refused by name, and nothing blocks (a FIFO without a
 * writer would block open() forever). */
static void check_regular_inputs(const char *dir) {
    char regular[600], fifo[600], to_regular[600], to_device[600], dangling[600], loop_a[600],
        loop_b[600];
    snprintf(regular, sizeof regular, "%s/regular.txt", dir);
    snprintf(fifo, sizeof fifo, "%s/fifo.png", dir);
    snprintf(to_regular, sizeof to_regular, "%s/to-regular", dir);
    snprintf(to_device, sizeof to_device, "%s/to-zero.png", dir);
    snprintf(dangling, sizeof dangling, "%s/dangling.png", dir);
    snprintf(loop_a, sizeof loop_a, "%s/loop-a", dir);
    snprintf(loop_b, sizeof loop_b, "%s/loop-b", dir);
    const char *made[] = {fifo, to_regular, to_device, dangling, loop_a, loop_b};
    for (size_t i = 0; i < sizeof made / sizeof *made; i++)
        unlink(made[i]);
    touch(regular, "text");
    CHECK(mkfifo(fifo, 0600) == 0);
    CHECK(symlink(regular, to_regular) == 0);
    CHECK(symlink("/dev/zero", to_device) == 0);
    CHECK(symlink("no-such-file", dangling) == 0);
    CHECK(symlink("loop-b", loop_a) == 0);
    CHECK(symlink("loop-a", loop_b) == 0);

    CHECK_OK(file_check_regular_input(regular, NULL));
    CHECK_OK(file_check_regular_input(to_regular, NULL));
    int fd = -1;
    CHECK_OK(file_open_regular_input(to_regular, NULL, &fd));
    char text[8] = "";
    CHECK(fd >= 0 && read(fd, text, sizeof text) == 4 && memcmp(text, "text", 4) == 0);
    CHECK(fd >= 0 && (fcntl(fd, F_GETFL) & O_NONBLOCK) == 0); /* blocking reads restored */
    if (fd >= 0) close(fd);

    struct {
        const char *path;
        ddt_status code;
        const char *words;
    } refused[] = {
        {fifo, DDT_ERR_USAGE, "not a regular file but a FIFO (named pipe)"},
        {to_device, DDT_ERR_USAGE, "not a regular file but a character device"},
        {"/dev/null", DDT_ERR_USAGE, "not a regular file but a character device"},
        {dir, DDT_ERR_IO, "cannot open: Is a directory"},
        {dangling, DDT_ERR_IO, "cannot open: No such file or directory"},
        {loop_a, DDT_ERR_IO, "cannot open: Too many levels of symbolic links"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        char expected[800];
        snprintf(expected, sizeof expected, "%s: %s", refused[i].path, refused[i].words);
        CHECK(file_check_regular_input(refused[i].path, NULL) == refused[i].code);
        CHECK(strstr(ddt_error_message(), expected) != NULL);
        fd = -1;
        CHECK(file_open_regular_input(refused[i].path, NULL, &fd) == refused[i].code);
        CHECK(strstr(ddt_error_message(), expected) != NULL);
        CHECK(fd == -1);
        FILE *stream = NULL;
        CHECK(file_fopen_regular_input(refused[i].path, "--model @x", &stream) == refused[i].code);
        CHECK(strstr(ddt_error_message(), "--model @x: ") == ddt_error_message());
        CHECK(stream == NULL);
    }
    for (size_t i = 0; i < sizeof made / sizeof *made; i++)
        unlink(made[i]);
    unlink(regular);
}

/* In a child: registers `count` temporary files under `dir` (more than one chunk of the
 * registry), creates them, forgets the first (it must survive), removes the second, publishes
 * the third, installs the clean-up and raises `signal_number`. The parent checks the child
 * died of that signal and only the forgotten file and the published one are left. */
static void check_signal_cleanup(const char *dir, int signal_number, int count) {
    char path[80][640], published[640];
    for (int i = 0; i < count; i++)
        snprintf(path[i], sizeof path[i], "%s/out-%d.h5.tmp-test", dir, i);
    snprintf(published, sizeof published, "%s/published.h5", dir);
    unlink(published);
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        for (int i = 0; i < count; i++) {
            if (file_temp_register(path[i]) != DDT_OK) _exit(3);
            touch(path[i], "partial");
        }
        file_temp_forget(path[0]);
        file_temp_remove(path[1]);
        if (file_publish(path[2], published) != DDT_OK) _exit(4);
        file_temp_cleanup_on_signals();
        raise(signal_number);
        _exit(5); /* not reached: the signal ends the process */
    }
    int wait_status = 0;
    CHECK(child > 0 && waitpid(child, &wait_status, 0) == child);
    CHECK(WIFSIGNALED(wait_status) && WTERMSIG(wait_status) == signal_number);
    if (!WIFSIGNALED(wait_status))
        fprintf(stderr, "child exited %d instead of dying of signal %d\n", WEXITSTATUS(wait_status),
                signal_number);
    CHECK(access(path[0], F_OK) == 0); /* forgotten: not the registry's any more */
    CHECK(access(published, F_OK) == 0);
    int left = 0;
    for (int i = 1; i < count; i++)
        left += access(path[i], F_OK) == 0;
    CHECK(left == 0);
    unlink(path[0]);
    unlink(published);
}

/* A signal ignored when the handlers are installed (nohup's SIGHUP) stays ignored. */
static void check_ignored_signal_kept(void) {
    pid_t child = fork();
    if (child == 0) {
        signal(SIGHUP, SIG_IGN);
        file_temp_cleanup_on_signals();
        raise(SIGHUP);
        _exit(0);
    }
    int wait_status = 0;
    CHECK(child > 0 && waitpid(child, &wait_status, 0) == child);
    CHECK(WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0);
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

    check_regular_inputs(dir);
    check_signal_cleanup(dir, SIGTERM, 40);
    check_signal_cleanup(dir, SIGINT, 3);
    check_signal_cleanup(dir, SIGHUP, 20);
    check_ignored_signal_kept();
    return check_finish();
}
