/* test_util_files.c - file identity under every spelling, the outputs-against-inputs rule,
 * durable publication, space reservation, outputs that are not regular files (device
 * nodes of our own, made with mknod when run as root, FIFOs, sockets, symbolic links),
 * regular-file inputs, and the temporary files a signal removes. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
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

static bool is_character_device(const char *path, unsigned major_number, unsigned minor_number) {
    struct stat info;
    return lstat(path, &info) == 0 && S_ISCHR(info.st_mode) &&
           major(info.st_rdev) == major_number && minor(info.st_rdev) == minor_number;
}

static bool is_fifo(const char *path) {
    struct stat info;
    return lstat(path, &info) == 0 && S_ISFIFO(info.st_mode);
}

/* Bytes a forked reader got from the FIFO `fifo`, into `into` (a regular file). The reader is
 * started first and killed after `seconds` if the writer never comes. */
static pid_t start_reader(const char *fifo, const char *into, int keep_bytes, int seconds) {
    pid_t child = fork();
    if (child != 0) return child;
    alarm((unsigned)seconds);
    int in = open(fifo, O_RDONLY), out = open(into, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    char buffer[4096];
    ssize_t got;
    int total = 0;
    while (in >= 0 && out >= 0 && (got = read(in, buffer, sizeof buffer)) > 0) {
        if (keep_bytes >= 0 && total + got > keep_bytes) got = keep_bytes - total;
        if (write(out, buffer, (size_t)got) != got) _exit(1);
        total += (int)got;
        if (keep_bytes >= 0 && total >= keep_bytes) _exit(0); /* leaves early: a broken pipe */
    }
    _exit(in >= 0 && out >= 0 ? 0 : 1);
}

static long file_size(const char *path) {
    struct stat info;
    return stat(path, &info) == 0 ? (long)info.st_size : -1;
}

/* Outputs that are not regular files: written through in place or refused, never replaced. */
static void check_special_outputs(const char *dir) {
    char null_node[600], full_node[600], fifo[600], got[600], temp[PATH_MAX + 64], text[64];
    char block[600], socket_path[108], directory[600], regular[600], link_path[600];
    snprintf(null_node, sizeof null_node, "%s/null", dir);
    snprintf(full_node, sizeof full_node, "%s/full", dir);
    snprintf(fifo, sizeof fifo, "%s/fifo", dir);
    snprintf(got, sizeof got, "%s/got", dir);
    snprintf(block, sizeof block, "%s/block", dir);
    snprintf(directory, sizeof directory, "%s/sub", dir);
    snprintf(regular, sizeof regular, "%s/regular.txt", dir);
    snprintf(link_path, sizeof link_path, "%s/to-regular", dir);
    unlink(fifo);
    CHECK(mkfifo(fifo, 0600) == 0);
    CHECK_OK(file_output_prepare("--save", NULL, FILE_OUTPUT_WHOLE));

    /* Devices of our own (the real /dev/null is never put at risk): root only. */
    bool root = geteuid() == 0;
    unlink(null_node);
    unlink(full_node);
    unlink(block);
    if (root) {
        CHECK(mknod(null_node, S_IFCHR | 0666, makedev(1, 3)) == 0);
        CHECK(mknod(full_node, S_IFCHR | 0666, makedev(1, 7)) == 0);
        CHECK(mknod(block, S_IFBLK | 0600, makedev(7, 0)) == 0);
        int probe = open(null_node, O_WRONLY);
        if (probe < 0) { /* a file system mounted nodev */
            printf("device nodes cannot be opened in %s (%s): the device checks are skipped\n", dir,
                   strerror(errno));
            root = false;
        } else {
            close(probe);
        }
    } else {
        printf("not root: the device-node checks are skipped (mknod needs root)\n");
    }
    if (root) {
        CHECK(strcmp(file_kind_name(S_IFCHR), "a character device") == 0);
        CHECK(file_output_is_stream(null_node));
        CHECK(!file_output_is_stream(regular));
        CHECK_OK(file_output_prepare("--save", null_node, FILE_OUTPUT_WHOLE));
        CHECK_OK(file_output_prepare("--metrics", null_node, FILE_OUTPUT_APPENDED));
        /* /dev/full refuses every write: found at set-up, named. */
        CHECK(file_output_prepare("--save", full_node, FILE_OUTPUT_WHOLE) == DDT_ERR_IO);
        CHECK(strstr(ddt_error_message(), "--save") && strstr(ddt_error_message(), full_node) &&
              strstr(ddt_error_message(), "No space left on device"));
        CHECK(file_output_prepare("--save", block, FILE_OUTPUT_WHOLE) == DDT_ERR_IO);
        CHECK(strstr(ddt_error_message(), "is a block device"));
        CHECK(file_output_prepare("--checkpoint-dir", null_node, FILE_OUTPUT_DIRECTORY) ==
              DDT_ERR_IO);
        CHECK(strstr(ddt_error_message(), "is not a directory but a character device"));

        /* A whole file published onto the device: written through, the node kept, no
         * temporary left beside it or in $TMPDIR. */
        file_temp_path(null_node, temp, sizeof temp);
        CHECK(strncmp(temp, dir, strlen(dir)) != 0); /* not beside it (in /dev) */
        touch(temp, "a model");
        CHECK_OK(file_publish(temp, null_node));
        CHECK(is_character_device(null_node, 1, 3));
        CHECK(access(temp, F_OK) != 0);
        file_temp_path(full_node, temp, sizeof temp);
        touch(temp, "a model");
        CHECK(file_publish(temp, full_node) == DDT_ERR_IO);
        CHECK(strstr(ddt_error_message(), full_node) &&
              strstr(ddt_error_message(), "No space left on device"));
        CHECK(is_character_device(full_node, 1, 7));
        CHECK(access(temp, F_OK) != 0);
        /* A block device is never renamed over. */
        snprintf(temp, sizeof temp, "%s/block.tmp", dir);
        touch(temp, "a model");
        CHECK(file_publish(temp, block) == DDT_ERR_IO);
        CHECK(strstr(ddt_error_message(), "is a block device"));
        struct stat info;
        CHECK(lstat(block, &info) == 0 && S_ISBLK(info.st_mode));
        CHECK(access(temp, F_OK) != 0);

        /* Records: appended to the device; /dev/full's failure reaches the writer. */
        FILE *f = NULL;
        CHECK_OK(file_output_append("--metrics", null_node, &f));
        if (f) {
            CHECK(fprintf(f, "{\"step\":1}\n") > 0 && fflush(f) == 0);
            fclose(f);
        }
        CHECK(is_character_device(null_node, 1, 3));

        /* Several outputs may share one character device; one FIFO may not be shared. */
        file_role both[] = {{"--save", null_node, false}, {"--metrics", null_node, false}};
        CHECK_OK(files_check_outputs(both, 2, NULL, 0));
    }
    file_role fifo_twice[] = {{"--save", fifo, false}, {"--trace", fifo, false}};
    CHECK(files_check_outputs(fifo_twice, 2, NULL, 0) == DDT_ERR_USAGE);

    /* A directory where a file goes, a regular file where a directory goes, a socket. */
    mkdir(directory, 0755);
    touch(regular, "kept");
    CHECK(file_output_prepare("--trace", directory, FILE_OUTPUT_WHOLE) == DDT_ERR_IO);
    CHECK(strstr(ddt_error_message(), "is a directory"));
    CHECK(file_output_prepare("--tensorboard", regular, FILE_OUTPUT_DIRECTORY) == DDT_ERR_IO);
    CHECK(strstr(ddt_error_message(), "is not a directory but a regular file"));
    CHECK_OK(file_output_prepare("--save", regular, FILE_OUTPUT_WHOLE));
    snprintf(socket_path, sizeof socket_path, "/tmp/ddtrain-test-socket-%ld", (long)getpid());
    int listener = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    snprintf(address.sun_path, sizeof address.sun_path, "%s", socket_path);
    unlink(socket_path);
    CHECK(listener >= 0 && bind(listener, (struct sockaddr *)&address, sizeof address) == 0);
    CHECK(file_output_prepare("--save", socket_path, FILE_OUTPUT_WHOLE) == DDT_ERR_IO);
    CHECK(strstr(ddt_error_message(), "is a socket"));
    close(listener);
    unlink(socket_path);

    /* A FIFO without a reader: refused (after a short wait), never a wait without end. */
    CHECK(file_output_prepare("--metrics", fifo, FILE_OUTPUT_APPENDED) == DDT_ERR_IO);
    CHECK(strstr(ddt_error_message(), "--metrics") && strstr(ddt_error_message(), fifo) &&
          strstr(ddt_error_message(), "no reader"));
    file_temp_path(fifo, temp, sizeof temp);
    touch(temp, "a model");
    CHECK(file_publish(temp, fifo) == DDT_ERR_IO); /* not prepared: tried once, not waited for */
    CHECK(strstr(ddt_error_message(), "no reader"));
    CHECK(is_fifo(fifo) && access(temp, F_OK) != 0);

    /* With a reader: opened at set-up and held, so the reader stays until the file comes. */
    pid_t reader = start_reader(fifo, got, -1, 60);
    CHECK_OK(file_output_prepare("--save", fifo, FILE_OUTPUT_WHOLE));
    file_temp_path(fifo, temp, sizeof temp);
    touch(temp, "the whole model");
    CHECK_OK(file_publish(temp, fifo));
    int code = -1;
    CHECK(waitpid(reader, &code, 0) == reader && WIFEXITED(code) && WEXITSTATUS(code) == 0);
    text[0] = '\0';
    FILE *g = fopen(got, "r");
    if (g) {
        CHECK(fgets(text, sizeof text, g) != NULL);
        fclose(g);
    }
    CHECK(strcmp(text, "the whole model") == 0);
    CHECK(is_fifo(fifo) && access(temp, F_OK) != 0);

    /* A reader that leaves early: "Broken pipe", and this process lives on (no SIGPIPE). */
    reader = start_reader(fifo, got, 10, 60);
    CHECK_OK(file_output_prepare("--save", fifo, FILE_OUTPUT_WHOLE));
    file_temp_path(fifo, temp, sizeof temp);
    FILE *big = fopen(temp, "w");
    for (int i = 0; big && i < 1 << 16; i++) /* 1 MiB, more than a pipe holds */
        fputs("0123456789abcdef", big);
    if (big) fclose(big);
    CHECK(file_publish(temp, fifo) == DDT_ERR_IO);
    CHECK(strstr(ddt_error_message(), "Broken pipe"));
    CHECK(waitpid(reader, &code, 0) == reader);
    CHECK(access(temp, F_OK) != 0);
    reader = start_reader(fifo, got, 10, 60);
    FILE *records = NULL;
    CHECK_OK(file_output_prepare("--metrics", fifo, FILE_OUTPUT_APPENDED));
    CHECK_OK(file_output_append("--metrics", fifo, &records));
    if (records) {
        fputs("the first record\n", records); /* the reader takes 10 bytes of it and leaves */
        CHECK(fflush(records) == 0);
        CHECK(waitpid(reader, &code, 0) == reader);
        fputs("the second record\n", records);
        CHECK(fflush(records) != 0 && errno == EPIPE);
        fclose(records);
    }
    CHECK(file_size(got) == 10);

    /* A symbolic link to a regular file: the file is replaced, the link stays (as a link to
     * /proc/self/fd/1, /dev/stdout, must). */
    unlink(link_path);
    CHECK(symlink(regular, link_path) == 0);
    file_temp_path(link_path, temp, sizeof temp);
    CHECK(strncmp(temp, regular, strlen(regular)) == 0); /* beside the file linked to */
    touch(temp, "replaced");
    CHECK_OK(file_publish(temp, link_path));
    struct stat link_info;
    CHECK(lstat(link_path, &link_info) == 0 && S_ISLNK(link_info.st_mode));
    g = fopen(regular, "r");
    text[0] = '\0';
    if (g) {
        CHECK(fgets(text, sizeof text, g) != NULL);
        fclose(g);
    }
    CHECK(strcmp(text, "replaced") == 0);
    unlink(link_path);
    unlink(null_node);
    unlink(full_node);
    unlink(block);
    unlink(fifo);
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

static void *idle_thread(void *unused) {
    (void)unused;
    for (;;) pause();
    return NULL;
}

/* The same signal delivered again while the first handler is still removing files, to another
 * thread (`timeout` sends its signal to the child and to the child's process group): the
 * second delivery must not end the process halfway through the list. Many files make the
 * first handler's work long enough for the repeats to land during it. */
static void check_signal_twice(const char *dir) {
    enum { FILES = 3000 };
    int ready[2];
    CHECK(pipe(ready) == 0);
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        char path[640];
        for (int i = 0; i < FILES; i++) {
            snprintf(path, sizeof path, "%s/twice-%d.tmp-test", dir, i);
            if (file_temp_register(path) != DDT_OK) _exit(3);
            touch(path, "");
        }
        file_temp_cleanup_on_signals();
        pthread_t threads[3];
        for (int i = 0; i < 3; i++)
            if (pthread_create(&threads[i], NULL, idle_thread, NULL) != 0) _exit(4);
        if (write(ready[1], "r", 1) != 1) _exit(5);
        for (;;) pause();
    }
    close(ready[1]);
    char byte;
    CHECK(read(ready[0], &byte, 1) == 1);
    close(ready[0]);
    for (int i = 0; i < 40 && kill(child, SIGTERM) == 0; i++)
        usleep(100);
    int wait_status = 0;
    CHECK(child > 0 && waitpid(child, &wait_status, 0) == child);
    CHECK(WIFSIGNALED(wait_status) && WTERMSIG(wait_status) == SIGTERM);
    int left = 0;
    char path[640];
    for (int i = 0; i < FILES; i++) {
        snprintf(path, sizeof path, "%s/twice-%d.tmp-test", dir, i);
        if (unlink(path) == 0) left++;
    }
    if (left) fprintf(stderr, "a repeated SIGTERM left %d of %d temporary files\n", left, FILES);
    CHECK(left == 0);
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

    check_special_outputs(dir);
    check_regular_inputs(dir);
    check_signal_cleanup(dir, SIGTERM, 40);
    check_signal_cleanup(dir, SIGINT, 3);
    check_signal_cleanup(dir, SIGHUP, 20);
    check_signal_twice(dir);
    check_ignored_signal_kept();
    return check_finish();
}
