/* test_io_fuzz_replay.c - the fuzz target's regression corpus, replayed without libFuzzer:
 * every seed in tests/fuzz/corpus goes through the dataset and model-file readers
 * (tests/fuzz/fuzz_readers.c) cleanly, and every file in tests/fuzz/crashers -- damaged files
 * on which HDF5 1.10.8 itself crashes or loops forever -- ends with the crash guard's message
 * naming the file and exit status 1 (or is refused cleanly, with a fixed HDF5), never with a
 * signal or a hang. Each file runs in a child process with the driver's crash guard installed
 * (stall limit 2 s), as in ddtrain.
 *
 *     test_io_fuzz_replay              the corpus and the crashers
 *     test_io_fuzz_replay FILE...      just these (tests/fuzz/run.sh sorts new findings so)
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "driver/crash_guard.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Longest a file may take before the guard must have ended it (stall limit 2 s). */
#define REPLAY_SECONDS 30

typedef enum outcome {
    OUTCOME_READ,    /* exit 0: read or refused with an error status */
    OUTCOME_GUARDED, /* exit 1 with the guard's message naming the file */
    OUTCOME_SIGNAL,  /* killed by a signal: a crash the guard did not claim */
    OUTCOME_HANG,    /* still running after REPLAY_SECONDS */
    OUTCOME_OTHER,   /* anything else (unreadable file, odd exit) */
} outcome;

static const char *outcome_name(outcome o) {
    static const char *names[] = {"read or refused", "ended by the crash guard",
                                  "killed by a signal", "hung", "failed otherwise"};
    return names[o];
}

static uint8_t *read_whole(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long length = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *data = length > 0 ? malloc((size_t)length) : NULL;
    if (data && fread(data, 1, (size_t)length, f) != (size_t)length) {
        free(data);
        data = NULL;
    }
    fclose(f);
    *size = (size_t)length;
    return data;
}

/* Runs the readers over `path` in a guarded child; `message` gets its standard error. */
static outcome replay(const char *path, char *message, size_t message_size) {
    message[0] = '\0';
    size_t size = 0;
    uint8_t *data = read_whole(path, &size);
    if (!data) return OUTCOME_OTHER;
    int pipe_ends[2];
    if (pipe(pipe_ends) != 0) {
        free(data);
        return OUTCOME_OTHER;
    }
    pid_t child = fork();
    if (child == 0) {
        close(pipe_ends[0]);
        dup2(pipe_ends[1], STDERR_FILENO);
        job j = {.rank = 0, .world_size = 1, .host = "replay"};
        crash_guard_install(&j, 2.0);
        LLVMFuzzerTestOneInput(data, size);
        _exit(0);
    }
    close(pipe_ends[1]);
    free(data);
    int status = 0;
    outcome result = OUTCOME_HANG;
    struct timespec tick = {0, 20 * 1000 * 1000};
    for (int waited = 0; waited < REPLAY_SECONDS * 50; waited++) {
        pid_t done = waitpid(child, &status, WNOHANG);
        if (done == child) {
            if (WIFSIGNALED(status))
                result = OUTCOME_SIGNAL;
            else if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
                result = OUTCOME_READ;
            else if (WIFEXITED(status) && WEXITSTATUS(status) == 1)
                result = OUTCOME_GUARDED;
            else
                result = OUTCOME_OTHER;
            break;
        }
        nanosleep(&tick, NULL);
    }
    if (result == OUTCOME_HANG) {
        kill(child, SIGKILL);
        waitpid(child, &status, 0);
    }
    ssize_t n = read(pipe_ends[0], message, message_size - 1);
    message[n > 0 ? n : 0] = '\0';
    close(pipe_ends[0]);
    /* The guard names the file the readers were given (their in-memory names). */
    if (result == OUTCOME_GUARDED && !strstr(message, "while reading fuzz-"))
        result = OUTCOME_OTHER;
    return result;
}

/* Replays every regular file in `directory`; `expect_read` for seeds, else for crashers. */
static void replay_directory(const char *directory, int expect_read) {
    DIR *listing = opendir(directory);
    CHECK(listing != NULL);
    if (!listing) return;
    int files = 0;
    for (struct dirent *entry; (entry = readdir(listing));) {
        if (entry->d_name[0] == '.') continue;
        char path[4096], message[8192];
        snprintf(path, sizeof path, "%s/%s", directory, entry->d_name);
        outcome o = replay(path, message, sizeof message);
        int ok = expect_read ? o == OUTCOME_READ : (o == OUTCOME_READ || o == OUTCOME_GUARDED);
        CHECK(ok);
        printf("%s: %s\n", entry->d_name, outcome_name(o));
        if (!ok || (o == OUTCOME_GUARDED && !expect_read)) printf("  %s", message);
        files++;
    }
    closedir(listing);
    CHECK(files > 0);
}

int main(int argc, char **argv) {
    if (argc > 1) {
        int unhandled = 0;
        for (int i = 1; i < argc; i++) {
            char message[8192];
            outcome o = replay(argv[i], message, sizeof message);
            printf("%s: %s\n", argv[i], outcome_name(o));
            if (o != OUTCOME_READ && o != OUTCOME_GUARDED) {
                unhandled++;
                printf("%s", message);
            }
        }
        return unhandled ? 1 : 0;
    }
    replay_directory(DDTRAIN_TEST_SOURCE_DIR "/fuzz/corpus", 1);
    replay_directory(DDTRAIN_TEST_SOURCE_DIR "/fuzz/crashers", 0);
    return check_finish();
}
