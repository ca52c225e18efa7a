#include "parallel/heartbeat.h"

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <thread>
#include <type_traits>

#include "kernels/error.h"
#include "kernels/memory_plan.h"
#if KEEL_HAS_MPI
#include "parallel/mpi_communicator.h"
#endif

namespace keel::parallel {

#if KEEL_HAS_MPI

namespace {

using Clock = LivenessTable::Clock;

static_assert(std::is_trivially_copyable_v<Beat>, "beats travel as bytes");

// One write with O_APPEND, so that the line lands whole at the end of the log even while the
// trainer holds the file open.
void append_line(const std::string& path, const std::string& line) {
  std::error_code ignored;  // a hang before the trainer made logs/: the report still goes out
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ignored);
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return;  // the report still goes to stderr and on_hang
  const std::string text = line + "\n";
  const ssize_t written = ::write(fd, text.data(), text.size());
  (void)written;
  ::close(fd);
}

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// The tag of beats, on the heartbeat's own communicator (nothing else is sent there).
constexpr int kBeatTag = 1;

// Whom a rank beats to and watches: rank 0 every other rank, the others rank 0.
std::vector<int> peers_of(int rank, int size) {
  std::vector<int> peers;
  if (rank != 0) return {0};
  for (int r = 1; r < size; ++r) peers.push_back(r);
  return peers;
}

}  // namespace

struct Heartbeat::Impl {
  Impl(MpiCommunicator& world, const Activity& activity, HeartbeatOptions options);
  ~Impl();
  void run();
  bool step(Clock::time_point now, bool finishing);
  void report(const std::string& text);
  void release_requests();

  const Activity& activity;
  HeartbeatOptions options;
  int rank = 0, size = 0;
  double interval = 1.0;
  MPI_Comm comm = MPI_COMM_NULL;
  std::vector<int> peers;  // rank 0: every other rank; the others: rank 0

  std::mutex mu;  // guards stopping and finishing; the thread waits on cv between polls
  std::condition_variable cv;
  bool stopping = false, finishing = false;

  mutable std::mutex table_mu;
  LivenessTable table;

  // The thread's own: the beat it sends, one send slot per peer, the receive posted.
  Beat own;
  uint64_t last_sequence = ~uint64_t{0};
  Clock::time_point sequence_seen{}, next_beat{};
  std::vector<Beat> sent;  // by peer index: untouched while its send is pending
  std::vector<MPI_Request> sends;
  std::vector<char> done_sent;
  Beat received;
  MPI_Request receive = MPI_REQUEST_NULL;

  std::thread thread;
};

Heartbeat::Impl::Impl(MpiCommunicator& world, const Activity& a, HeartbeatOptions o)
    : activity(a),
      options(std::move(o)),
      rank(world.rank()),
      size(world.size()),
      peers(peers_of(world.rank(), world.size())),
      table(world.size(), world.rank(), peers, Clock::now()) {
  KEEL_CHECK(options.hang_timeout > 0, "control.hang_timeout is {}; heartbeats need it > 0",
             options.hang_timeout);
  int level = 0;
  KEEL_MPI(MPI_Query_thread(&level));
  KEEL_CHECK(level == MPI_THREAD_MULTIPLE,
             "hang detection needs MPI opened with MPI_THREAD_MULTIPLE (its thread talks while the "
             "trainer is inside a collective); set control.hang_timeout: 0 to run without it");
  interval = options.interval > 0 ? options.interval : std::min(1.0, options.hang_timeout / 4);
  sequence_seen = next_beat = Clock::now();
  sent.resize(peers.size());
  sends.assign(peers.size(), MPI_REQUEST_NULL);
  done_sent.assign(peers.size(), 0);
  own.rank = rank;
  std::strncpy(own.host, host_name().c_str(), sizeof own.host - 1);

  // Its own communicator: a beat can never match a message of the trainer's, whatever its tag.
  KEEL_MPI(MPI_Comm_dup(world.handle(), &comm));
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  const int rc = MPI_Irecv(&received, sizeof received, MPI_BYTE, rank == 0 ? MPI_ANY_SOURCE : 0,
                           kBeatTag, comm, &receive);
  if (rc != MPI_SUCCESS) {
    MPI_Comm_free(&comm);
    KEEL_MPI(rc);
  }
  thread = std::thread([this] { run(); });
}

Heartbeat::Impl::~Impl() {
  {
    const std::lock_guard<std::mutex> lock(mu);
    stopping = true;
  }
  cv.notify_all();
  if (thread.joinable()) thread.join();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  release_requests();
  MPI_Comm_free(&comm);
}

void Heartbeat::Impl::release_requests() {
  if (receive != MPI_REQUEST_NULL) {
    MPI_Cancel(&receive);
    MPI_Wait(&receive, MPI_STATUS_IGNORE);  // a cancelled receive completes at once
  }
  // A send to a peer that stopped may never complete; freed, MPI finishes or drops it.
  for (MPI_Request& s : sends)
    if (s != MPI_REQUEST_NULL) MPI_Request_free(&s);
}

void Heartbeat::Impl::run() {
  pthread_setname_np(pthread_self(), "keel-heartbeat");
  for (;;) {
    bool done = false;
    {
      std::unique_lock<std::mutex> lock(mu);
      if (stopping) return;
      done = finishing;
    }
    try {
      if (!step(Clock::now(), done)) return;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "keel: warning: rank %d stopped heartbeating: %s\n", rank, e.what());
      return;
    }
    std::unique_lock<std::mutex> lock(mu);
    // Polls often enough that a finishing rank leaves within ~10 ms of the last one, and beats
    // are taken in within a tenth of a second: a blocked sender never waits on a full queue.
    const auto poll = std::chrono::milliseconds(done ? 10 : 50);
    cv.wait_for(lock, poll, [&] { return stopping || finishing != done; });
  }
}

// One poll: sample this rank, take in every beat that came, send a beat when one is due, judge.
// False when the thread is to end (the handshake is over, or a hang was reported).
bool Heartbeat::Impl::step(Clock::time_point now, bool finishing_now) {
  const Activity::Snapshot a = activity.snapshot();
  if (a.sequence != last_sequence) last_sequence = a.sequence, sequence_seen = now;
  const bool beat_due = now >= next_beat;
  {
    Beat b = beat_of(a);
    b.rank = rank;
    std::memcpy(b.host, own.host, sizeof b.host);
    b.done = finishing_now;
    b.seconds = seconds_between(sequence_seen, now);
    b.rss_bytes = beat_due ? rss_bytes() : own.rss_bytes;
    b.peak_rss_bytes = beat_due ? peak_rss_bytes() : own.peak_rss_bytes;
    own = b;
  }
  {
    const std::lock_guard<std::mutex> lock(table_mu);
    table.record(own, now);
    for (;;) {
      int arrived = 0;
      KEEL_MPI(MPI_Test(&receive, &arrived, MPI_STATUS_IGNORE));
      if (!arrived) break;
      table.record(received, now);
      KEEL_MPI(MPI_Irecv(&received, sizeof received, MPI_BYTE, rank == 0 ? MPI_ANY_SOURCE : 0,
                         kBeatTag, comm, &receive));
    }
  }

  // A peer whose last beat is still in flight gets none this time (a stopped peer must not pile
  // up sends); the done beat waits for its slot and is sent exactly once.
  bool all_sent = true;
  for (size_t i = 0; i < peers.size(); ++i) {
    int free = 0;
    KEEL_MPI(MPI_Test(&sends[i], &free, MPI_STATUS_IGNORE));
    if (free && (finishing_now ? !done_sent[i] : beat_due)) {
      sent[i] = own;
      KEEL_MPI(MPI_Isend(&sent[i], sizeof sent[i], MPI_BYTE, peers[i], kBeatTag, comm, &sends[i]));
      if (finishing_now) done_sent[i] = 1;
      free = 0;  // tested again at the next poll: this thread never blocks in MPI
    }
    all_sent = all_sent && done_sent[i] && free;
  }
  if (beat_due)
    next_beat =
        now + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(interval));

  std::optional<std::string> hang;
  bool over = false;
  {
    const std::lock_guard<std::mutex> lock(table_mu);
    hang = table.find_hang(now, options.hang_timeout, rank == 0);
    over = finishing_now && table.watched_done();
  }
  if (hang) {
    report(*hang);
    return false;
  }
  return !(over && all_sent);  // the last done beats have left: the communicator may go
}

void Heartbeat::Impl::report(const std::string& text) {
  const std::string line = "hang: " + text;
  if (!options.log_path.empty())
    append_line(options.log_path,
                format("keel: rank {} of {}: {}; the job is ended", rank, size, line));
  if (options.on_hang) options.on_hang(line);
  if (options.end_job)
    options.end_job(line);
  else
    MpiSession::abort(1, line);
}

Heartbeat::Heartbeat(Communicator& world, const Activity& activity, HeartbeatOptions options) {
  auto* mpi = dynamic_cast<MpiCommunicator*>(&world);
  KEEL_CHECK(mpi && world.size() > 1,
             "heartbeats run over the MPI world communicator of a job of several ranks, not a {} "
             "communicator of {}; set control.hang_timeout: 0",
             world.backend(), world.size());
  impl_ = std::make_unique<Impl>(*mpi, activity, std::move(options));
}

void Heartbeat::finish() {
  {
    const std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->finishing = true;
  }
  impl_->cv.notify_all();
  if (impl_->thread.joinable()) impl_->thread.join();
}

std::vector<RankLiveness> Heartbeat::ranks() const {
  const std::lock_guard<std::mutex> lock(impl_->table_mu);
  return impl_->table.ranks(Clock::now());
}

#else  // no MPI: a job is one rank, which has no one to beat to

struct Heartbeat::Impl {};

Heartbeat::Heartbeat(Communicator& world, const Activity&, HeartbeatOptions) {
  KEEL_FAIL(
      "this keel was built without MPI, so a {} communicator of {} has no heartbeats; set "
      "control.hang_timeout: 0",
      world.backend(), world.size());
}

void Heartbeat::finish() {}

std::vector<RankLiveness> Heartbeat::ranks() const { return {}; }

#endif

Heartbeat::~Heartbeat() = default;

}  // namespace keel::parallel
