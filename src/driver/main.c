/* main.c - the ddtrain program: picks the subcommand, starts MPI, runs it on every rank and
 * ends every rank with the same exit code.
 *
 *   ddtrain train    train a model, data-parallel over the MPI ranks
 *   ddtrain eval     loss and accuracy of a saved model on a dataset
 *   ddtrain convert  IDX files, image folders, text and token files to ddtrain's HDF5 formats
 *   ddtrain synth    write a deterministic synthetic classification set of any size
 *   ddtrain info     print a dataset's geometry and check every row
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "driver/blas_setup.h"
#include "driver/commands.h"
#include "driver/crash_guard.h"
#include "driver/deadline.h"
#include "driver/job.h"
#include "driver/options.h"
#include "engine/device.h"
#include "util/failpoint.h"
#include "util/files.h"
#include "util/plugin.h"

#ifndef DDTRAIN_VERSION /* from CMake: the project version */
#define DDTRAIN_VERSION "0.1.0"
#endif

static void print_usage(FILE *out) {
    fprintf(out,
            "ddtrain %s - distributed data-parallel neural-network trainer\n\n"
            "usage: ddtrain COMMAND [options]      (under mpirun/srun for several ranks)\n\n"
            "commands:\n"
            "  train    train a model (MLP, CNN, GPT) on an HDF5 dataset, data-parallel over the "
            "ranks\n"
            "  eval     loss and accuracy of a saved model (--model-file) on --data\n"
            "  convert  IDX files, an image folder (PNG/JPEG), text or token files to HDF5\n"
            "  synth    write a synthetic, learnable classification dataset of any size\n"
            "  info     print a dataset's geometry and check every row\n"
            "  generate sample text from a saved token model (--model-file, --prompt)\n\n"
            "'ddtrain COMMAND --help' lists a command's options and their defaults.\n",
            DDTRAIN_VERSION);
}

static bool parse_command(const char *text, command *out) {
    static const command all[] = {COMMAND_TRAIN, COMMAND_EVAL, COMMAND_CONVERT, COMMAND_SYNTH,
                                  COMMAND_INFO, COMMAND_GENERATE};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (strcmp(text, command_name(all[i])) == 0) {
            *out = all[i];
            return true;
        }
    return false;
}

/* --comm-timeout as the command line gives it, read before MPI starts, for the deadline on
 * MPI's start-up; the default where the line cannot be read (the parse after MPI_Init
 * reports the problem on every rank) or the command has no such option. */
static double startup_timeout(int argc, char **argv) {
    options opts;
    command cmd;
    if (argc < 2 || !parse_command(argv[1], &cmd) ||
        options_parse(cmd, argc - 2, argv + 2, &opts) != DDT_OK)
        options_parse(COMMAND_TRAIN, 0, NULL, &opts); /* the defaults */
    ddt_error_clear();
    return opts.comm_timeout;
}

/* DDTRAIN_DEBUG_STALL's announcement, with the wall-clock time, so that a test can measure
 * from the stall to the end of the job. */
static void announce_stall(const char *point, int rank, double seconds) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    fprintf(stderr,
            "ddtrain: debug: rank %d stalls at '%s' for %g s (DDTRAIN_DEBUG_STALL), wall clock "
            "%.3f\n",
            rank, point, seconds, (double)now.tv_sec + 1e-9 * (double)now.tv_nsec);
    fflush(stderr);
}

/* Every rank must run with the same configuration: a rank started with another --lr, say,
 * would train on to the end with the others. Rank 0's canonical configuration (options.h:
 * every option, and what train takes from the environment) goes to every rank, which
 * compares it with its own and names the first difference. Collective. */
static ddt_status check_same_configuration(job *j, command cmd, const options *opts) {
    static const char *const variables[] = {"DDTRAIN_DEVICE_MEMORY", "DDTRAIN_DEVICE_MEMORY_LIMIT"};
    const char *extra[4];
    int extra_count = 0;
    for (size_t i = 0; cmd == COMMAND_TRAIN && i < sizeof variables / sizeof variables[0]; i++) {
        const char *value = getenv(variables[i]);
        extra[2 * extra_count] = variables[i];
        extra[2 * extra_count++ + 1] = value ? value : "(unset)";
    }
    char *mine = options_canonical(cmd, opts, extra, extra_count);
    char *root = NULL;
    ddt_status status = comm_broadcast_text(j->control, mine ? mine : "", &root,
                                            "set-up: the ranks' configuration");
    if (status == DDT_OK && !mine)
        status = ddt_error(DDT_ERR_MEMORY, "out of host memory for the configuration");
    if (status == DDT_OK && j->rank != 0) status = options_compare_canonical(root, mine, j->rank);
    free(root);
    free(mine);
    return status;
}

int main(int argc, char **argv) {
    blas_setup_kernel(argv); /* may re-execute ddtrain; must come before MPI starts */

    /* Usage questions are answered without starting MPI. */
    if (argc < 2) {
        print_usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        print_usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("ddtrain %s\nblas: %s\n", DDTRAIN_VERSION, blas_describe());
        if (device_kind_available(DEVICE_KIND_CUDA)) {
            printf("cuda: built (cuBLAS, NCCL); %d GPU(s) visible\n",
                   device_count(DEVICE_KIND_CUDA));
            /* Loaded here even without a GPU, to show that it loads (training ranks load it
             * only when they use a GPU). */
            const char *problem = plugin_problem();
            if (problem)
                printf("cuda plugin: %s\n", problem);
            else
                printf("cuda plugin: %s (loaded)\n", plugin_path());
        } else {
            printf("cuda: not built (CPU ranks only)\n");
        }
        return 0;
    }

    /* MPI's start-up, the control communicator and the agreement on the options wait for
     * every rank with no timeout of their own: a deadline of --comm-timeout bounds them. */
    failpoint_set_observer(announce_stall);
    int launcher_rank = 0;
    job_launcher_rank(&launcher_rank, NULL);
    failpoint_stall("init", launcher_rank); /* before the deadline: as a stopped process */
    double startup = startup_timeout(argc, argv);
    deadline_start(startup, "MPI start-up (MPI_Init)",
                   "a rank is stalled (stopped, or waiting on a hung file system) or lost before "
                   "MPI was up, or the launcher did not start every rank; MPI does not say which",
                   NULL);
    job j;
    ddt_status status = job_init(&j, &argc, &argv, startup);
    if (status != DDT_OK) return job_end(&j, status);
    /* SIGTERM, SIGINT and SIGHUP remove the temporary files of unfinished outputs before
     * ending the process (train later makes SIGTERM a stop at the next step instead). */
    file_temp_cleanup_on_signals();
    deadline_phase("set-up: the agreement on the command and the options",
                   "a rank is stalled (stopped, or waiting on a hung file system) or lost", &j);
    command cmd;
    if (!parse_command(argv[1], &cmd)) {
        status = comm_agree(j.control,
                            ddt_error(DDT_ERR_USAGE,
                                      "unknown command '%s' (expected train, eval, convert, "
                                      "synth, info or generate; see ddtrain --help)",
                                      argv[1]),
                            "the command");
        return job_end(&j, status);
    }
    options opts;
    status = comm_agree(j.control, options_parse(cmd, argc - 2, argv + 2, &opts), "the options");
    if (status != DDT_OK) return job_end(&j, status);
    if (opts.help) {
        if (j.rank == 0) options_print_help(cmd, stdout);
        return job_end(&j, DDT_OK);
    }
    if ((cmd == COMMAND_TRAIN || cmd == COMMAND_EVAL || cmd == COMMAND_GENERATE) &&
        opts.positional_count > 0) {
        status = comm_agree(j.control,
                            ddt_error(DDT_ERR_USAGE, "ddtrain %s: unexpected argument '%s'",
                                      command_name(cmd), opts.positional[0]),
                            "the options");
        return job_end(&j, status);
    }
    /* Every wait between ranks from here on is bounded, and watched. (Commands without
     * --comm-timeout keep its default.) */
    double timeout = opts.comm_timeout;
    status = job_set_timeout(&j, timeout);
    if (status != DDT_OK) return job_end(&j, status);
    deadline_stop();
    /* From here on files given by the user are read: HDF5 crashing on a damaged one, or not
     * returning within the same bound, ends this rank with a message naming the file. */
    crash_guard_install(&j, timeout);
    status = comm_agree(j.control, check_same_configuration(&j, cmd, &opts),
                        "set-up: the ranks' configuration");
    if (status != DDT_OK) return job_end(&j, status);
    switch (cmd) {
    case COMMAND_TRAIN: status = train_command(&j, &opts); break;
    case COMMAND_EVAL: status = eval_command(&j, &opts); break;
    case COMMAND_CONVERT: status = convert_command(&j, &opts); break;
    case COMMAND_SYNTH: status = synth_command(&j, &opts); break;
    case COMMAND_GENERATE: status = generate_command(&j, &opts); break;
    case COMMAND_INFO: status = info_command(&j, &opts); break;
    }
    return job_end(&j, status);
}
