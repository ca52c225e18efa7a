// The control plane's state machine alone (launcher/control/control_state.h), with a thread in the
// trainer's place: commands wait for a step boundary, a request id acts once however often it is
// sent, a command the state does not allow is refused with the reason, and a run that ends
// answers every waiting call.
#include <gtest/gtest.h>

#include <future>
#include <thread>

#include "launcher/control/control_state.h"

namespace keel::launcher {
namespace {

using runtime::RunCommand;
using runtime::RunState;
using Code = CommandOutcome::Code;
using namespace std::chrono_literals;

ControlState::Clock::time_point in(std::chrono::milliseconds ms) {
  return ControlState::Clock::now() + ms;
}

// Submits from another thread (a gRPC handler's), returning its future outcome.
std::future<CommandOutcome> submit_async(ControlState& s, RunCommand c, const std::string& id,
                                         std::chrono::milliseconds wait = 5000ms) {
  return std::async(std::launch::async,
                    [&s, c, id, wait] { return s.submit(c, id, in(wait), [] { return false; }); });
}

// Waits until n commands are queued (a submit on another thread has reached the queue).
void wait_queued(const ControlState& s, size_t n) {
  const auto deadline = ControlState::Clock::now() + 10s;
  while (s.queued() < n && ControlState::Clock::now() < deadline) std::this_thread::sleep_for(1ms);
  ASSERT_GE(s.queued(), n) << "the submit never reached the queue";
}

// The trainer's side of one boundary: takes the next command (waiting up to 2 s) and carries it
// out as Trainer::take_orders does.
RunCommand boundary(ControlState& s, int64_t step) {
  const RunCommand c = s.next_command(2.0);
  if (c == RunCommand::kPause) s.set_state(RunState::kPaused);
  if (c == RunCommand::kResume) s.set_state(RunState::kRunning);
  if (c == RunCommand::kStop) s.set_state(RunState::kStopping);
  const std::string dir = c == RunCommand::kCheckpoint || c == RunCommand::kStop
                              ? "ckpt/step_" + std::to_string(step)
                              : "";
  if (c != RunCommand::kNone) s.command_done(c, step, dir);
  return c;
}

TEST(ControlState, ACommandAnswersOnceItTookEffectAtABoundary) {
  ControlState s(100);
  s.set_state(RunState::kRunning);
  std::future<CommandOutcome> pause = submit_async(s, RunCommand::kPause, "p1");
  EXPECT_EQ(pause.wait_for(50ms), std::future_status::timeout);  // no boundary yet
  EXPECT_EQ(boundary(s, 7), RunCommand::kPause);
  const CommandOutcome o = pause.get();
  EXPECT_EQ(o.code, Code::kOk);
  EXPECT_EQ(o.state, RunState::kPaused);
  EXPECT_EQ(o.step, 7);

  std::future<CommandOutcome> ckpt = submit_async(s, RunCommand::kCheckpoint, "c1");
  EXPECT_EQ(boundary(s, 7), RunCommand::kCheckpoint);
  EXPECT_EQ(ckpt.get().checkpoint, "ckpt/step_7");
}

TEST(ControlState, TheSameRequestIdActsOnce) {
  ControlState s(100);
  s.set_state(RunState::kRunning);
  std::future<CommandOutcome> first = submit_async(s, RunCommand::kCheckpoint, "same");
  wait_queued(s, 1);
  std::future<CommandOutcome> retry = submit_async(s, RunCommand::kCheckpoint, "same");
  std::this_thread::sleep_for(20ms);  // the retry finds the first; nothing to wait for in the queue
  EXPECT_EQ(boundary(s, 3), RunCommand::kCheckpoint);
  EXPECT_EQ(s.next_command(0.05), RunCommand::kNone) << "the retry queued a second checkpoint";
  EXPECT_EQ(first.get().checkpoint, "ckpt/step_3");
  EXPECT_EQ(retry.get().checkpoint, "ckpt/step_3");
  // Long after, the same id answers as before and queues nothing.
  const CommandOutcome again = s.submit(RunCommand::kCheckpoint, "same", in(100ms), nullptr);
  EXPECT_EQ(again.code, Code::kOk);
  EXPECT_EQ(again.checkpoint, "ckpt/step_3");
  EXPECT_EQ(s.next_command(0), RunCommand::kNone);
  // An id reused for another command is the caller's mistake.
  const CommandOutcome other = s.submit(RunCommand::kPause, "same", in(100ms), nullptr);
  EXPECT_EQ(other.code, Code::kInvalidArgument);
  EXPECT_EQ(other.message, "request_id 'same' was used for a checkpoint command; choose a new id");
  EXPECT_EQ(s.submit(RunCommand::kPause, "", in(100ms), nullptr).code, Code::kInvalidArgument);
}

TEST(ControlState, ACommandTheStateDoesNotAllowIsRefusedWithTheReason) {
  ControlState s(100);
  s.set_state(RunState::kRunning);
  CommandOutcome o = s.submit(RunCommand::kResume, "r0", in(100ms), nullptr);
  EXPECT_EQ(o.code, Code::kFailedPrecondition);
  EXPECT_EQ(o.message, "cannot resume: the run is not paused");
  // A queued pause counts: a second one is refused before the first takes effect.
  std::future<CommandOutcome> pause = submit_async(s, RunCommand::kPause, "p1");
  wait_queued(s, 1);
  o = s.submit(RunCommand::kPause, "p2", in(100ms), nullptr);
  EXPECT_EQ(o.message, "cannot pause: the run is already paused (keel resume continues it)");
  boundary(s, 4);
  EXPECT_EQ(pause.get().code, Code::kOk);
  // Once a stop is queued, nothing but the same stop's retry is taken.
  std::future<CommandOutcome> stop = submit_async(s, RunCommand::kStop, "s1");
  wait_queued(s, 1);
  o = s.submit(RunCommand::kCheckpoint, "c1", in(100ms), nullptr);
  EXPECT_EQ(o.code, Code::kFailedPrecondition);
  EXPECT_EQ(o.message, "cannot checkpoint: the run is stopping");
  boundary(s, 4);
  EXPECT_EQ(stop.get().checkpoint, "ckpt/step_4");
  s.set_state(RunState::kDone);
  o = s.submit(RunCommand::kPause, "p3", in(100ms), nullptr);
  EXPECT_EQ(o.message, "cannot pause: the run has ended (done)");
}

TEST(ControlState, ARunThatEndsAnswersEveryWaitingCall) {
  ControlState s(100);
  s.set_state(RunState::kRunning);
  std::future<CommandOutcome> pause = submit_async(s, RunCommand::kPause, "p1");
  wait_queued(s, 1);
  runtime::RunProgress p;
  p.step = 100;
  s.on_step(p);
  s.set_state(RunState::kDone);  // max_steps reached before the boundary came
  const CommandOutcome o = pause.get();
  EXPECT_EQ(o.code, Code::kFailedPrecondition);
  EXPECT_EQ(o.message, "the run ended at step 100 before the command took effect");

  // A stop the run made anyway (a signal at the same boundary) is answered as done.
  ControlState g(100);
  g.set_state(RunState::kRunning);
  std::future<CommandOutcome> stop = submit_async(g, RunCommand::kStop, "s1");
  wait_queued(g, 1);
  g.on_checkpoint(7, "ckpt/step_7");
  g.set_state(RunState::kStopping);
  g.set_state(RunState::kDone);
  const CommandOutcome stopped = stop.get();
  EXPECT_EQ(stopped.code, Code::kOk) << stopped.message;
  EXPECT_EQ(stopped.checkpoint, "ckpt/step_7");

  ControlState f(10);
  std::future<CommandOutcome> ckpt = submit_async(f, RunCommand::kCheckpoint, "c1");
  wait_queued(f, 1);
  f.fail("rank 1 on host x stopped answering");
  EXPECT_EQ(ckpt.get().message, "the run failed: rank 1 on host x stopped answering");
  EXPECT_EQ(f.snapshot().state, RunState::kFailed);
  EXPECT_EQ(f.snapshot().failure, "rank 1 on host x stopped answering");
}

TEST(ControlState, ACallPastItsDeadlineLeavesTheCommandQueued) {
  ControlState s(100);
  const CommandOutcome o = s.submit(RunCommand::kCheckpoint, "c1", in(50ms), nullptr);
  EXPECT_EQ(o.code, Code::kDeadlineExceeded);
  std::future<CommandOutcome> retry = submit_async(s, RunCommand::kCheckpoint, "c1");
  EXPECT_EQ(boundary(s, 2), RunCommand::kCheckpoint);
  EXPECT_EQ(retry.get().checkpoint, "ckpt/step_2");
  EXPECT_EQ(s.next_command(0), RunCommand::kNone);
}

TEST(ControlState, WatchersWakeOnEveryStepAndAtShutdown) {
  ControlState s(100);
  const uint64_t seen = s.snapshot().version;
  std::future<RunSnapshot> next =
      std::async(std::launch::async, [&] { return s.wait_newer(seen, in(5000ms)); });
  runtime::RunProgress p;
  p.step = 1;
  p.loss = 5.5;
  s.on_step(p);
  const RunSnapshot r = next.get();
  EXPECT_GT(r.version, seen);
  EXPECT_EQ(r.progress.loss, 5.5);
  std::future<RunSnapshot> parked = std::async(
      std::launch::async, [&] { return s.wait_newer(s.snapshot().version, in(60000ms)); });
  s.stop_watchers();
  EXPECT_EQ(parked.wait_for(2000ms), std::future_status::ready);
}

// A command handed to the trainer and not yet done counts first: a pause in flight makes a second
// pause wrong and a resume right.
TEST(ControlState, ACommandInFlightCountsBeforeTheQueue) {
  ControlState s(100);
  s.set_state(RunState::kRunning);
  std::future<CommandOutcome> pause = submit_async(s, RunCommand::kPause, "p1");
  wait_queued(s, 1);
  ASSERT_EQ(s.next_command(0), RunCommand::kPause);  // taken, not done
  EXPECT_EQ(s.submit(RunCommand::kPause, "p2", in(50ms), nullptr).code, Code::kFailedPrecondition);
  std::future<CommandOutcome> resume = submit_async(s, RunCommand::kResume, "r1");
  wait_queued(s, 1);
  s.set_state(RunState::kPaused);
  s.command_done(RunCommand::kPause, 5, "");
  EXPECT_EQ(pause.get().code, Code::kOk);
  EXPECT_EQ(boundary(s, 5), RunCommand::kResume);
  EXPECT_EQ(resume.get().code, Code::kOk);
}

// Checkpoints asked for while one waits are that one; the queue and the remembered ids are
// bounded; a checkpoint that failed answers ABORTED with why, and the run goes on.
TEST(ControlState, CheckpointsCoalesceTheQueueIsBoundedAndAFailedSaveIsAnswered) {
  ControlState s(100);
  s.set_state(RunState::kRunning);
  std::future<CommandOutcome> a = submit_async(s, RunCommand::kCheckpoint, "a");
  wait_queued(s, 1);
  std::future<CommandOutcome> b = submit_async(s, RunCommand::kCheckpoint, "b");
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(s.queued(), 1u) << "a second checkpoint was queued beside the first";
  ASSERT_EQ(s.next_command(0), RunCommand::kCheckpoint);
  s.command_failed(RunCommand::kCheckpoint, 9, "no space left on device");
  for (std::future<CommandOutcome>* f : {&a, &b}) {
    const CommandOutcome o = f->get();
    EXPECT_EQ(o.code, Code::kAborted);
    EXPECT_EQ(o.message, "no space left on device");
    EXPECT_EQ(o.step, 9);
  }
  EXPECT_EQ(s.snapshot().state, RunState::kRunning);

  // Pause and resume alternately: the queue holds kMaxQueued, the next is refused.
  std::vector<std::future<CommandOutcome>> waiting;
  for (size_t i = 0; i < ControlState::kMaxQueued; ++i) {
    std::string id = "q";  // not "q" + to_string: GCC 12's false -Wrestrict
    id += std::to_string(i);
    waiting.push_back(
        submit_async(s, i % 2 ? RunCommand::kResume : RunCommand::kPause, id, 20000ms));
    wait_queued(s, i + 1);
  }
  const CommandOutcome full = s.submit(RunCommand::kPause, "one-more", in(50ms), nullptr);
  EXPECT_EQ(full.code, Code::kResourceExhausted);
  EXPECT_EQ(full.message, "cannot pause: 16 commands already wait for the next step boundary");
  s.set_state(RunState::kDone);  // answers them all
  for (std::future<CommandOutcome>& f : waiting) EXPECT_EQ(f.get().code, Code::kFailedPrecondition);
}

}  // namespace
}  // namespace keel::launcher
