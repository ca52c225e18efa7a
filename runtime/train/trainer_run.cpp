// The Trainer's loop (runtime/train/trainer.h): steps to training.max_steps with the divergence
// guard's verdicts acted on (trainer_guard.cpp), progress lines, metrics.jsonl and TensorBoard,
// evaluation and checkpoints at their intervals, and the run's closing files and line.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

#include "parallel/activity.h"
#include "parallel/agree.h"
#include "runtime/data/tokenizer_json.h"
#include "runtime/train/loss_curve.h"
#include "runtime/train/stop_signal.h"
#include "runtime/train/tensorboard.h"
#include "runtime/train/trainer.h"

namespace keel::runtime {

using Clock = std::chrono::steady_clock;

// What the ranks agreed at a step boundary, never inside a step: the stop signal some rank
// received (max over ranks: 0 when none did) and rank 0's command (the others send 0), in one
// all-reduce of two ints over the world.
Trainer::Order Trainer::agreed_order(bool paused) {
  int32_t order[2] = {
      StopSignals::received(),
      control_ ? static_cast<int32_t>(control_->next_command(paused ? 0.1 : 0.0)) : 0};
  parallel::Communicator& world = grid_.world();
  if (world.size() > 1) {
    const Tensor t = parallel::host_view(order, 2);
    if (!paused) {
      world.all_reduce(t, parallel::ReduceOp::kMax);
    } else {
      // MPI's blocking collectives poll: a paused rank waiting 0.1 s for rank 0 would spin a core.
      parallel::Work w = world.all_reduce_async(t, parallel::ReduceOp::kMax);
      while (!w.test()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  return {order[0], static_cast<RunCommand>(order[1])};
}

// The checkpoint of the current step: the one written or resumed from at this step, else a new one.
std::string Trainer::checkpoint_here(std::ostream& rank_log) {
  if (saved_step_ == step_ && !saved_dir_.empty()) return saved_dir_;
  const std::string dir = save_checkpoint();
  rank_log << "keel: checkpoint " << dir << "\n" << std::flush;
  return dir;
}

std::string Trainer::take_orders(std::ostream& rank_log) {
  const auto state = [&](RunState s) {
    if (control_) control_->set_state(s);
  };
  const auto done = [&](RunCommand c, const std::string& dir) {
    if (control_) control_->command_done(c, step_, dir);
  };
  bool paused = false;
  // While paused, a step that does not advance is no hang (parallel/heartbeat.h); the flag is
  // cleared however this boundary ends.
  parallel::Activity* const activity = grid_.world().activity();
  const std::unique_ptr<parallel::Activity, void (*)(parallel::Activity*)> clear_pause(
      activity, [](parallel::Activity* a) { a->set_paused(false); });
  for (;;) {
    const Order o = agreed_order(paused);
    if (o.signal != 0) {
      // Nothing trained yet: no checkpoint to write (a resumed run's is this state already).
      state(RunState::kStopping);
      const std::string dir = step_ > 0 ? checkpoint_here(rank_log) : "";
      return std::string(StopSignals::name(o.signal)) + " received: stopping at step " +
             std::to_string(step_) + (dir.empty() ? "" : " after a checkpoint");
    }
    switch (o.command) {
      case RunCommand::kNone:
        if (!paused) return "";
        break;
      case RunCommand::kPause:
        paused = true;
        if (activity) activity->set_paused(true);
        state(RunState::kPaused);
        done(o.command, "");
        console_ << "keel: paused at step " << step_ << " (keel resume continues)\n" << std::flush;
        break;
      case RunCommand::kResume:
        state(RunState::kRunning);
        done(o.command, "");
        console_ << "keel: resumed at step " << step_ << "\n" << std::flush;
        return "";
      case RunCommand::kCheckpoint: {
        state(RunState::kCheckpointing);
        // A save every rank failed alike (a full disk, a quota) is the caller's answer, not the
        // end of a run that may have days in it; `latest` stays on the last good checkpoint.
        std::string dir, failure;
        try {
          dir = checkpoint_here(rank_log);
        } catch (const parallel::AgreedError& e) {
          // Only the rank that failed first may carry the message.
          failure = *e.what()
                        ? e.what()
                        : "rank " + std::to_string(e.reporter()) + " failed (its log says why)";
        }
        state(paused ? RunState::kPaused : RunState::kRunning);
        if (failure.empty()) {
          done(o.command, dir);
        } else {
          console_ << "keel: the checkpoint asked for at step " << step_ << " failed: " << failure
                   << "; training goes on\n"
                   << std::flush;
          rank_log << "keel: checkpoint failed: " << failure << "\n" << std::flush;
          if (control_) control_->command_failed(o.command, step_, failure);
        }
        if (!paused) return "";
        break;
      }
      case RunCommand::kStop:
      case RunCommand::kStopNoCheckpoint: {
        state(RunState::kStopping);
        const bool save = o.command == RunCommand::kStop && step_ > 0;
        const std::string dir = save ? checkpoint_here(rank_log) : "";
        done(o.command, dir);
        return "stop requested: stopping at step " + std::to_string(step_) +
               (dir.empty() ? " without a checkpoint" : " after a checkpoint");
      }
    }
  }
}

void Trainer::run() {
  const TrainingConfig& t = config_.training;
  std::optional<StopSignals> signals;  // training.save_on_signal: a notice becomes a checkpoint
  if (t.save_on_signal) signals.emplace();
  const bool writer = grid_.rank() == 0;
  // Every rank logs to its own file: the plan, each logged step with this rank's own numbers,
  // and the error that ended the run, if one did.
  const std::string log_path = t.output_dir + "/logs/rank_" + std::to_string(grid_.rank()) + ".log";
  std::filesystem::create_directories(t.output_dir + "/logs");
  // A resumed run continues its logs: the rank logs grow, and metrics.jsonl keeps the steps up
  // to the checkpoint (a crash may have logged later ones, which are trained again).
  const bool resumed = !resumed_from_.empty();
  // Appended to, always (O_APPEND): the heartbeat thread appends a hang report to the same file
  // (parallel/heartbeat.h), which a stream writing at its own offset would overwrite.
  if (!resumed) std::ofstream(log_path, std::ios::trunc).close();
  std::ofstream rank_log(log_path, std::ios::app);
  KEEL_CHECK(rank_log.good(), "cannot write '{}'", log_path);
  rank_log << "rank " << grid_.rank() << " of " << grid_.world().size() << ", data-parallel rank "
           << grid_.dp().rank() << " of " << grid_.dp().size();
  if (grid_.pp().size() > 1)
    rank_log << ", pipeline stage " << grid_.pp().rank() << " of " << grid_.pp().size() << " ("
             << pipeline_.describe_stage(grid_.pp().rank()) << ")";
  rank_log << "\n" << plan_text_ << std::flush;
  std::unique_ptr<MetricsLog> log;
  if (writer) {
    const std::string path = t.output_dir + "/config.yaml";
    std::ofstream f(path);
    f << config_to_yaml(config_);
    KEEL_CHECK(f.good(), "cannot write '{}'", path);
    // The run's tokenizer beside its checkpoints, for keel export, generate and eval.
    write_tokenizer_json(tokenizer_->tokenizer, t.output_dir + "/tokenizer.json");
    std::string tensorboard_dir;
    if (t.report_to == "tensorboard" && tensorboard_available())
      tensorboard_dir = t.logging_dir.empty() ? t.output_dir + "/tensorboard" : t.logging_dir;
    else if (t.report_to == "tensorboard")
      console_ << "keel: this keel was built without Protobuf, so it writes no TensorBoard event "
                  "files (install protobuf-compiler and libprotobuf-dev and rebuild; "
                  "training.report_to: none says nothing)\n";
    log = std::make_unique<MetricsLog>(t.output_dir, resumed ? step_ : 0, tensorboard_dir);
  }
  try {
    if (step_ >= t.max_steps)
      console_ << "keel: nothing to train: the run is at step " << step_
               << " and training.max_steps is " << t.max_steps << "\n";
    double seconds = 0.0;
    const int64_t first = step_;
    int64_t trained = 0;  // steps run in this process (a rollback trains some twice)
    const int64_t global =
        t.per_device_train_batch_size * t.gradient_accumulation_steps * grid_.dp().size();
    if (control_) control_->set_state(RunState::kRunning);
    while (step_ < t.max_steps) {
      if (const std::string why = take_orders(rank_log); !why.empty()) {
        console_ << "keel: " << why << "; run again to resume\n" << std::flush;
        rank_log << "keel: " << why << "\n" << std::flush;
        break;
      }
      // What the heartbeat reports as this rank's step (parallel/activity.h).
      if (parallel::Activity* activity = grid_.world().activity()) activity->set_step(step_ + 1);
      if (before_step_) before_step_(step_ + 1);
      const StepStats s = step();
      seconds += s.seconds;
      ++trained;
      if (!s.rejected.empty()) {
        handle_rejected(s, samples_ - global, true, log.get());
        continue;
      }
      const bool exit = t.exit_interval > 0 && s.step % t.exit_interval == 0;
      const bool save =
          exit || (t.save_steps > 0 && (s.step % t.save_steps == 0 || s.step == t.max_steps));
      const bool eval = t.eval_steps > 0 && (s.step % t.eval_steps == 0 || s.step == t.max_steps);
      // A finite loss and gradient can still take the weights past the float range (a huge
      // learning rate): they are checked before anything is evaluated, saved or written from them.
      if (save || eval || s.step == t.max_steps) {
        const auto check_start = Clock::now();
        const std::string bad = first_nonfinite_weight();
        weight_check_seconds_ += std::chrono::duration<double>(Clock::now() - check_start).count();
        if (!bad.empty()) {
          StepStats r = s;
          r.rejected = "the update made the weights non-finite (first: " + bad + ")";
          handle_rejected(r, samples_ - global, false, log.get());
          continue;
        }
      }
      const double eta =
          seconds / static_cast<double>(trained) * static_cast<double>(t.max_steps - s.step);
      if (control_) {
        RunProgress p{s.step,          t.max_steps, s.loss,
                      s.learning_rate, s.grad_norm, s.tokens_per_second,
                      s.mfu,           eta,         s.seconds};
        if (s.moe.present()) {
          p.aux_loss = s.moe.aux_loss, p.load_imbalance = s.moe.max_imbalance();
          p.dropped_fraction = s.moe.dropped_fraction;
          for (size_t l = 0; l < s.moe.layers.size(); ++l)
            p.expert_load.push_back({s.moe.layers[l], s.moe.expert_share[l]});
        }
        control_->on_step(p);
      }
      if (s.step % t.logging_steps == 0 || s.step == t.max_steps || s.step == first + 1) {
        if (log) log->write(s);
        const std::string line = progress_line(s, t.max_steps, eta);
        console_ << line << "\n" << std::flush;
        rank_log << line << " | sent " << format_mib(s.comm_bytes) << " | blocked "
                 << s.comm_wait_seconds << " s";
        if (grid_.pp().size() > 1)
          rank_log << " | pipeline wait " << s.pipeline_wait_seconds << " s of " << s.seconds;
        rank_log << "\n" << std::flush;
      }
      if (eval) {
        const EvalResult r = evaluate();
        if (log) log->write_eval(s.step, r.loss, r.tokens);
        std::ostringstream line;
        line << "eval step " << s.step << " | loss " << r.loss << " | perplexity " << r.perplexity()
             << " | " << r.sequences << " sequences";
        console_ << line.str() << "\n" << std::flush;
        rank_log << line.str() << "\n" << std::flush;
      }
      if (save) rank_log << "keel: checkpoint " << write_checkpoint() << "\n" << std::flush;
      if (exit && s.step < t.max_steps) {
        console_ << "keel: stopping at step " << s.step << " (training.exit_interval "
                 << t.exit_interval << "); run again to resume\n";
        break;
      }
    }
    write_parameters(t.output_dir + "/model.safetensors");
    std::ostringstream done;
    done << "keel: done, " << trained << " steps in " << seconds << " s (reading data "
         << data_seconds_ << " s, " << (seconds > 0 ? 100.0 * data_seconds_ / seconds : 0.0)
         << " %; checking the weights finite " << weight_check_seconds_ << " s); peak RSS "
         << format_mib(peak_rss_bytes()) << " against a memory plan of "
         << format_mib(planned_bytes_) << "\n";
    if (log) {
      const std::string curve = t.output_dir + "/loss.svg";
      log.reset();  // metrics.jsonl and the event file complete
      write_loss_curve_svg(t.output_dir + "/metrics.jsonl", curve);
      done << "keel: loss curve in " << curve << "\n";
    }
    console_ << done.str();
    rank_log << done.str();
    if (control_) control_->set_state(RunState::kDone);
  } catch (const std::exception& e) {
    rank_log << "keel: error: " << e.what() << "\n" << std::flush;
    throw;
  }
}

}  // namespace keel::runtime
