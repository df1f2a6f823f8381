/* step.c - one optimizer step on every rank. train_step() reads top to bottom:
 *
 *   1. this rank's micro-batches: forward, loss, backward, accumulating gradients; the last
 *      backward starts each gradient bucket's all-reduce as its layers finish;
 *   2. finish the all-reduce, check the reduced gradients, and agree on a few control values
 *      (a rank failed, gradients overflowed or are not finite, stop, checkpoint by time);
 *   3. update the weights, or skip an fp16 overflow;
 *   4. read the loss on steps that report.
 *
 * Every rank takes part in the same collectives in the same order, even after a local
 * failure (it is carried in the control values), so a failure reaches every rank at the
 * agreement instead of stranding some in a collective. A collective that fails (a rank died
 * or stalled past --comm-timeout) leaves the communicator dead: that DDT_ERR_COMM is returned
 * unagreed, and the driver ends the job on every rank.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine/loss.h"
#include "train/trainer.h"
#include "util/clock.h"

/* Values every rank contributes to the step's agreement (summed). */
enum {
    CONTROL_LOCAL_FAILURE, /* a rank failed (bad data, I/O...) */
    CONTROL_OVERFLOW,      /* fp16: non-finite gradients, skip the step */
    CONTROL_NON_FINITE,    /* fp32: non-finite gradients, stop */
    CONTROL_STOP,          /* a rank got SIGTERM/SIGUSR1 */
    CONTROL_CHECKPOINT,    /* rank 0: --checkpoint-every's duration has passed */
    CONTROL_COUNT,
};

static double data_wait(const trainer *t) {
    return feed_get_stats(t->data.feed).data_wait_seconds;
}

/* Forward, loss and backward of one micro-batch. The loss is scaled by 1/global batch (and
 * the fp16 loss scale), so gradients come out normalised by the global batch; the last
 * micro-batch of a step reports finished layers to the gradient buckets. */
static ddt_status forward_backward(trainer *t, const feed_batch *b, bool last, float loss_scale) {
    run_engine *e = &t->engine;
    model_pass pass = {
        .training = true, .step = b->global_step, .seed = t->config->seed, .row_ids = b->row_ids};
    const float *logits;
    double started = clock_now();
    model_input input = {.features = b->features, .tokens = b->tokens};
    DDT_CHECK(model_forward(e->model, input, b->rows, &pass, &logits));
    /* the mean over the global batch's predictions: one per row, or one per token position */
    int positions = t->shape.spec.positions;
    loss_apply(e->dev, t->config->loss, b->rows * positions, t->shape.spec.output_width, logits,
               b->labels, b->targets,
               loss_scale / ((float)t->shape.global_batch * (float)positions),
               &e->scalars[TRAIN_SCALAR_LOSS], model_output_gradient(e->model));
    double forward_done = clock_now();
    ddt_status status = model_backward(e->model, b->rows, &pass,
                                       last ? gradient_buckets_ready_callback : NULL,
                                       last ? e->buckets : NULL);
    trace_event(t->trace, TRACE_THREAD_MAIN, "forward", "compute", t->current_step, started,
                forward_done);
    trace_event(t->trace, TRACE_THREAD_MAIN, last ? "backward (buckets start)" : "backward",
                "compute", t->current_step, forward_done, clock_now());
    return status;
}

/* This rank's micro-batches of one step; the gradients are left un-reduced. */
static ddt_status run_micro_batches(trainer *t, float loss_scale) {
    int count = t->shape.micro_batches_per_step;
    for (int m = 0; m < count; m++) {
        feed_batch batch;
        DDT_CHECK(feed_next(t->data.feed, &batch));
        ddt_status status = forward_backward(t, &batch, m == count - 1, loss_scale);
        ddt_status released = feed_release(t->data.feed);
        DDT_CHECK(status);
        DDT_CHECK(released);
    }
    return DDT_OK;
}

/* A collective failed: the communicator is dead. Rank 0 names the ranks that never came. */
static ddt_status communication_failed(trainer *t, int64_t done) {
    char message[1024], lagging[256];
    snprintf(message, sizeof message, "%s", ddt_error_message());
    comm_lagging_ranks(t->control, lagging, sizeof lagging);
    return ddt_error(DDT_ERR_COMM, "step %" PRId64 ": %s%s%s", done, message,
                     lagging[0] ? "; ranks that never reached this step: " : "", lagging);
}

/* Every rank, after a non-finite gradient: which layer, and which ranks' own loss was not
 * finite. */
static ddt_status report_non_finite(trainer *t, int64_t done) {
    run_engine *e = &t->engine;
    device *dev = e->dev;
    const float *gradients = model_gradients(e->model);
    char layer[MODEL_TENSOR_MAX_NAME] = "some layer";
    const model_spec *spec = &t->shape.spec;
    for (int i = 0; i < spec->tensor_count; i++) {
        const model_tensor *tensor = &spec->tensors[i];
        if (tensor->is_buffer) continue;
        bool finite = true;
        device_check_finite(dev, tensor->count, gradients + tensor->offset, &finite);
        if (!finite) {
            snprintf(layer, sizeof layer, "%s", tensor->name);
            break;
        }
    }
    float local_loss = 0;
    device_copy_device_to_host(dev, &local_loss, &e->scalars[TRAIN_SCALAR_LOSS],
                                  sizeof local_loss);
    int mine = !isfinite(local_loss);
    int *all = t->rank == 0 ? calloc((size_t)t->world_size, sizeof(int)) : NULL;
    DDT_CHECK(comm_gather_bytes(t->control, &mine, sizeof mine, all, 0,
                                "which ranks' loss was not finite"));
    char ranks[256] = "";
    size_t used = 0;
    for (int r = 0; all && r < t->world_size && used + 16 < sizeof ranks; r++)
        if (all[r])
            used += (size_t)snprintf(ranks + used, sizeof ranks - used, "%s%d", used ? ", " : "", r);
    free(all);
    return ddt_error(DDT_ERR_DATA,
                     "step %" PRId64 " (epoch %" PRId64 "): the gradient of %s is not finite "
                     "(NaN or Inf) after the all-reduce; ranks whose own loss was not finite: %s; "
                     "try a lower --lr",
                     done, (done - 1) / t->shape.steps_per_epoch + 1, layer,
                     ranks[0] ? ranks : "none");
}

/* Collective: the loss summed over all ranks since it was last read (read and reset on the
 * device: the one host synchronisation of a step that reports). */
static ddt_status read_loss(trainer *t, double *sum) {
    device *dev = t->engine.dev;
    float *scalar = &t->engine.scalars[TRAIN_SCALAR_LOSS];
    float local = 0;
    ddt_status status = device_copy_device_to_host(dev, &local, scalar, sizeof local);
    device_fill_zero(dev, scalar, sizeof(float));
    double values[2] = {local, status != DDT_OK ? 1.0 : 0.0};
    DDT_CHECK(comm_allreduce_doubles(t->control, values, 2, COMM_REDUCE_SUM));
    if (values[1] > 0) return comm_agree(t->control, status, "reading the loss");
    *sum = values[0];
    return DDT_OK;
}

/* Step 2: the reduced gradients checked, this rank's view added to the control values, and
 * the values agreed. Only a dead communicator returns an error here. */
static ddt_status reduce_and_agree(trainer *t, ddt_status local, bool reporting,
                                   double control[CONTROL_COUNT], step_outcome *o) {
    run_engine *e = &t->engine;
    const train_config *cfg = t->config;
    char label[48];
    snprintf(label, sizeof label, "step %" PRId64, o->done);
    comm_arrive(t->control, label);
    if (gradient_buckets_finish(e->buckets) != DDT_OK) return communication_failed(t, o->done);
    /* Gradients are identical on all ranks now. CPU ranks check them every step (cheap);
     * GPUs when they report and under fp16, keeping the step free of host synchronisation. */
    bool finite = true, fp16 = cfg->precision == PRECISION_FP16;
    size_t count = model_parameter_count(e->model);
    if (local == DDT_OK && (fp16 || t->shape.device == DEVICE_KIND_CPU || reporting))
        local = device_check_finite(e->dev, count, model_gradients(e->model), &finite);
    /* The norm: for records, on rank 0 alone; for --clip-grad-norm, every rank (the same
     * everywhere, so every rank scales by the same factor). */
    double squares = NAN;
    bool clipping = cfg->clip_grad_norm > 0;
    if (local == DDT_OK && ((report_due_record(t, o->done) && t->rank == 0) || clipping))
        local = device_sum_of_squares(e->dev, count, model_gradients(e->model), &squares);
    o->grad_norm = sqrt(squares) / t->scaler.scale;
    control[CONTROL_LOCAL_FAILURE] = local != DDT_OK;
    control[fp16 ? CONTROL_OVERFLOW : CONTROL_NON_FINITE] = !finite;
    control[CONTROL_STOP] = cfg->stop_requested && cfg->stop_requested();
    control[CONTROL_CHECKPOINT] =
        t->rank == 0 && checkpointing_due_by_time(&t->checkpoints, clock_now());
    if (comm_allreduce_doubles(t->control, control, CONTROL_COUNT, COMM_REDUCE_SUM) != DDT_OK)
        return communication_failed(t, o->done);
    o->stop_requested = control[CONTROL_STOP] > 0;
    o->checkpoint_by_time = control[CONTROL_CHECKPOINT] > 0;
    return DDT_OK;
}

/* Whether step `step` reads the loss back from the device: reports, epoch ends, the run's last
 * step (the summary's final loss) and --stop-after's. Between them it stays on the device. */
static bool step_reads_loss(const trainer *t, int64_t step) {
    int64_t done = step + 1;
    int64_t stop_after = t->config->stop_after;
    return report_due_progress(t, done) || report_due_record(t, done) ||
           done % t->shape.steps_per_epoch == 0 || done == t->shape.total_steps ||
           (stop_after > 0 && done - t->start_step == stop_after);
}

/* Unscales fp16's loss scale and clips in one pass (PyTorch's clip_grad_norm_ factor
 * max / (norm + 1e-6), applied when below 1), then steps the optimizer; an fp16 overflow
 * skips the step on every rank. */
static void update_parameters(trainer *t, int64_t step, float loss_scale, bool overflow,
                              step_outcome *o) {
    run_engine *e = &t->engine;
    o->lr = lr_schedule_at(&t->shape.schedule, step);
    o->skipped = !loss_scaler_step(&t->scaler, overflow);
    if (o->skipped) {
        if (t->rank == 0) {
            fprintf(t->config->out,
                    "step %" PRId64 ": fp16 gradient overflow; step skipped on every rank, loss "
                    "scale %g -> %g\n",
                    o->done, loss_scale, t->scaler.scale);
            fflush(t->config->out);
        }
        return;
    }
    float factor = 1.0f / loss_scale;
    float clip = t->config->clip_grad_norm;
    if (clip > 0 && isfinite(o->grad_norm) && clip / (o->grad_norm + 1e-6) < 1.0)
        factor = (float)((double)factor * (clip / (o->grad_norm + 1e-6)));
    if (factor != 1.0f)
        device_scale(e->dev, model_parameter_count(e->model), factor, model_gradients(e->model));
    optimizer_step(e->opt, model_parameters(e->model), model_gradients(e->model), o->lr);
}

/* Reads the step's loss (summed since the last read) and stops the run on a non-finite one. */
static ddt_status read_step_loss(trainer *t, int64_t step, float loss_scale, step_outcome *o) {
    DDT_CHECK(read_loss(t, &o->loss_sum));
    o->loss_sum /= loss_scale;
    o->loss_read = true;
    if (isfinite(o->loss_sum)) return DDT_OK;
    return comm_agree(t->control,
                      ddt_error(DDT_ERR_DATA,
                                "the training loss became %s by step %" PRId64 " (epoch %" PRId64
                                "); try a lower --lr",
                                isnan(o->loss_sum) ? "NaN" : "infinite", o->done,
                                step / t->shape.steps_per_epoch + 1),
                      "a non-finite loss");
}

ddt_status train_step(trainer *t, int64_t step, step_outcome *o) {
    run_engine *e = &t->engine;
    bool reporting = step_reads_loss(t, step);
    *o = (step_outcome){.done = step + 1, .grad_norm = NAN};
    t->current_step = o->done;
    float loss_scale = t->scaler.scale;

    /* 1. this rank's micro-batches: forward, backward, buckets started as layers finish */
    ddt_status local = step_timer_begin(&t->timer, step, data_wait(t));
    model_zero_gradients(e->model);
    gradient_buckets_begin(e->buckets);
    if (local == DDT_OK) local = run_micro_batches(t, loss_scale);
    step_timer_mark(&t->timer, step, STEP_MARK_BACKWARD_DONE);

    /* 2. the all-reduce and the agreement */
    double control[CONTROL_COUNT] = {0};
    DDT_CHECK(reduce_and_agree(t, local, reporting, control, o));
    step_timer_mark(&t->timer, step, STEP_MARK_REDUCED);
    if (control[CONTROL_LOCAL_FAILURE] > 0) return comm_agree(t->control, local, "a step failed");
    if (control[CONTROL_NON_FINITE] > 0)
        return comm_agree(t->control, report_non_finite(t, o->done), "non-finite gradients");

    /* 3. the update */
    double update_started = clock_now();
    update_parameters(t, step, loss_scale, control[CONTROL_OVERFLOW] > 0, o);
    step_timer_end(&t->timer, step, data_wait(t));
    trace_event(t->trace, TRACE_THREAD_MAIN, "optimizer", "compute", o->done, update_started,
                clock_now());

    /* 4. the loss, read only when reported (no host synchronisation per step), and every step
     * under fp16, where the scale can change from one step to the next */
    if (reporting || t->scaler.enabled) DDT_CHECK(read_step_loss(t, step, loss_scale, o));
    return DDT_OK;
}
