#include "parallel/communicator.h"

#include <cstdio>
#include <cstring>
#include <exception>

#include "kernels/memory_plan.h"

namespace keel::parallel {

std::string_view reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kMax: return "max";
  }
  return "?";
}

std::string_view comm_op_name(CommOp op) {
  switch (op) {
    case CommOp::kAllReduce: return "all_reduce";
    case CommOp::kReduceScatter: return "reduce_scatter";
    case CommOp::kAllGather: return "all_gather";
    case CommOp::kBroadcast: return "broadcast";
    case CommOp::kSend: return "send";
    case CommOp::kRecv: return "recv";
    case CommOp::kAllToAll: return "all_to_all";
    case CommOp::kAllToAllV: return "all_to_all_v";
    case CommOp::kBarrier: return "barrier";
  }
  return "?";
}

uint64_t all_reduce_bytes(uint64_t n, int ranks) {
  const auto r = static_cast<uint64_t>(ranks);
  return ranks > 1 ? 2 * n * (r - 1) / r : 0;
}

uint64_t reduce_scatter_bytes(uint64_t full_bytes, int ranks) {
  const auto r = static_cast<uint64_t>(ranks);
  return ranks > 1 ? full_bytes * (r - 1) / r : 0;
}

uint64_t all_gather_bytes(uint64_t full_bytes, int ranks) {
  return reduce_scatter_bytes(full_bytes, ranks);
}

uint64_t broadcast_bytes(uint64_t n, int ranks) { return ranks > 1 ? n : 0; }

std::string format_bytes(uint64_t bytes) {
  if (bytes < 1024) return format("{} B", bytes);
  if (bytes < (uint64_t{1} << 20)) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f KiB", static_cast<double>(bytes) / 1024.0);
    return buf;
  }
  return format_mib(static_cast<size_t>(bytes));
}

std::string describe_collective(CommOp op, const char* group, uint64_t bytes) {
  return format("{} over {}, {}", comm_op_name(op), group, format_bytes(bytes));
}

// ---- CommStats ----------------------------------------------------------------------------------

void CommStats::add(CommOp op, uint64_t bytes) {
  OpCounter& c = ops_[static_cast<size_t>(op)];
  ++c.calls;
  c.bytes += bytes;
}

uint64_t CommStats::total_bytes() const {
  uint64_t b = 0;
  for (const OpCounter& c : ops_) b += c.bytes;
  return b;
}

uint64_t CommStats::total_calls() const {
  uint64_t n = 0;
  for (const OpCounter& c : ops_) n += c.calls;
  return n;
}

CommStats& CommStats::operator+=(const CommStats& o) {
  for (size_t i = 0; i < ops_.size(); ++i) {
    ops_[i].calls += o.ops_[i].calls;
    ops_[i].bytes += o.ops_[i].bytes;
  }
  return *this;
}

std::string CommStats::describe() const {
  std::string s;
  for (size_t i = 0; i < ops_.size(); ++i) {
    if (ops_[i].calls == 0) continue;
    if (!s.empty()) s += ", ";
    s += format("{} {} calls {}", comm_op_name(static_cast<CommOp>(i)), ops_[i].calls,
                format_bytes(ops_[i].bytes));
  }
  return s.empty() ? "no calls" : s;
}

// ---- Work ---------------------------------------------------------------------------------------

Work::~Work() { wait_noexcept(); }

Work::Work(Work&& o) noexcept : owner_(o.owner_), slot_(o.slot_), op_(o.op_), bytes_(o.bytes_) {
  o.owner_ = nullptr;
}

Work& Work::operator=(Work&& o) noexcept {
  if (this != &o) {
    wait_noexcept();
    owner_ = o.owner_;
    slot_ = o.slot_;
    op_ = o.op_;
    bytes_ = o.bytes_;
    o.owner_ = nullptr;
  }
  return *this;
}

void Work::wait() {
  if (!owner_) return;
  Communicator* c = owner_;
  owner_ = nullptr;  // the backend releases the slot whether or not the wait succeeds
  const Activity::Scope busy(c->activity_, op_, c->name_, bytes_);
  c->work_wait(slot_);
}

bool Work::test() {
  if (!owner_) return true;
  bool done = false;
  try {
    done = owner_->work_test(slot_);
  } catch (...) {
    owner_ = nullptr;
    throw;
  }
  if (done) owner_ = nullptr;
  return done;
}

void Work::wait_noexcept() noexcept {
  try {
    wait();
  } catch (const std::exception& e) {
    std::fprintf(stderr,
                 "keel: warning: an asynchronous collective failed while its handle was "
                 "dropped: %s\n",
                 e.what());
  }
}

// ---- Communicator: validation and counting ------------------------------------------------------

namespace {

const char* bytes_of(const Tensor& t) { return static_cast<const char*>(t.data()); }

bool overlaps(const Tensor& a, const Tensor& b) {
  if (a.nbytes() == 0 || b.nbytes() == 0) return false;
  return bytes_of(a) < bytes_of(b) + b.nbytes() && bytes_of(b) < bytes_of(a) + a.nbytes();
}

// True when part is exactly chunk `index` of whole (whole = size equal chunks of part's size).
bool is_chunk(const Tensor& part, const Tensor& whole, int index) {
  return bytes_of(part) == bytes_of(whole) + static_cast<size_t>(index) * part.nbytes();
}

}  // namespace

template <class Start>
Work Communicator::issue(CommOp op, uint64_t bytes, bool async, Start start) {
  Work w;
  {
    const Activity::Scope busy(async ? nullptr : activity_, op, name_, bytes);
    w = start();
  }
  w.op_ = op;
  w.bytes_ = bytes;
  return w;
}

Communicator::Communicator(int rank, int size) : rank_(rank), size_(size) {
  KEEL_CHECK(size >= 1 && 0 <= rank && rank < size, "communicator rank {} of size {} is invalid",
             rank, size);
}

void Communicator::check_buffer(const Tensor& t, const char* what, const char* op) const {
  KEEL_CHECK(t.defined(), "{}: the {} buffer has no memory", op, what);
  KEEL_CHECK(t.device() == device(),
             "{}: the {} buffer is on {}, but a {} communicator works on {}", op, what,
             t.device().str(), backend(), device().str());
}

void Communicator::check_reducible(const Tensor& t, const char* op) const {
  const DType d = t.dtype();
  KEEL_CHECK(
      d == DType::F32 || d == DType::BF16 || d == DType::F64 || d == DType::I32 || d == DType::I64,
      "{} cannot reduce {} buffers; reductions take F32, BF16, F64, I32 or I64", op, dtype_name(d));
}

void Communicator::check_peer(int peer, const char* what, const char* op) const {
  KEEL_CHECK(0 <= peer && peer < size_, "{}: {} rank {} is outside the group of {} ranks", op, what,
             peer, size_);
}

void Communicator::all_reduce(Tensor x, ReduceOp op) { checked_all_reduce(x, op, false).wait(); }

Work Communicator::all_reduce_async(Tensor x, ReduceOp op) {
  return checked_all_reduce(x, op, true);
}

Work Communicator::checked_all_reduce(Tensor x, ReduceOp op, bool async) {
  check_buffer(x, "in-out", "all_reduce");
  check_reducible(x, "all_reduce");
  Work w =
      issue(CommOp::kAllReduce, x.nbytes(), async, [&] { return do_all_reduce(x, op, async); });
  stats_.add(CommOp::kAllReduce, all_reduce_bytes(x.nbytes(), size_));
  return w;
}

void Communicator::reduce_scatter(Tensor out, Tensor in, ReduceOp op) {
  checked_reduce_scatter(out, in, op, false).wait();
}

Work Communicator::reduce_scatter_async(Tensor out, Tensor in, ReduceOp op) {
  return checked_reduce_scatter(out, in, op, true);
}

Work Communicator::checked_reduce_scatter(Tensor out, Tensor in, ReduceOp op, bool async) {
  const char* name = "reduce_scatter";
  check_buffer(out, "output", name);
  check_buffer(in, "input", name);
  KEEL_CHECK(out.dtype() == in.dtype(), "reduce_scatter: output is {} but input is {}",
             dtype_name(out.dtype()), dtype_name(in.dtype()));
  check_reducible(in, name);
  KEEL_CHECK(in.numel() == out.numel() * size_,
             "reduce_scatter: the input must hold {} chunks of the output's {} elements ({}), "
             "but holds {}",
             size_, out.numel(), out.numel() * size_, in.numel());
  KEEL_CHECK(!overlaps(out, in) || is_chunk(out, in, rank_),
             "reduce_scatter: the output overlaps the input without being its chunk {} (this "
             "rank's); use separate buffers or exactly that chunk",
             rank_);
  Work w = issue(CommOp::kReduceScatter, in.nbytes(), async,
                 [&] { return do_reduce_scatter(out, in, op, async); });
  stats_.add(CommOp::kReduceScatter, reduce_scatter_bytes(in.nbytes(), size_));
  return w;
}

void Communicator::all_gather(Tensor out, Tensor in) { checked_all_gather(out, in, false).wait(); }

Work Communicator::all_gather_async(Tensor out, Tensor in) {
  return checked_all_gather(out, in, true);
}

Work Communicator::checked_all_gather(Tensor out, Tensor in, bool async) {
  const char* name = "all_gather";
  check_buffer(out, "output", name);
  check_buffer(in, "input", name);
  KEEL_CHECK(out.dtype() == in.dtype(), "all_gather: output is {} but input is {}",
             dtype_name(out.dtype()), dtype_name(in.dtype()));
  KEEL_CHECK(out.numel() == in.numel() * size_,
             "all_gather: the output must hold {} chunks of the input's {} elements ({}), but "
             "holds {}",
             size_, in.numel(), in.numel() * size_, out.numel());
  KEEL_CHECK(!overlaps(out, in) || is_chunk(in, out, rank_),
             "all_gather: the input overlaps the output without being its chunk {} (this "
             "rank's); use separate buffers or exactly that chunk",
             rank_);
  Work w =
      issue(CommOp::kAllGather, out.nbytes(), async, [&] { return do_all_gather(out, in, async); });
  stats_.add(CommOp::kAllGather, all_gather_bytes(out.nbytes(), size_));
  return w;
}

void Communicator::broadcast(Tensor x, int root) { checked_broadcast(x, root, false).wait(); }

Work Communicator::broadcast_async(Tensor x, int root) { return checked_broadcast(x, root, true); }

Work Communicator::checked_broadcast(Tensor x, int root, bool async) {
  check_buffer(x, "in-out", "broadcast");
  check_peer(root, "root", "broadcast");
  Work w =
      issue(CommOp::kBroadcast, x.nbytes(), async, [&] { return do_broadcast(x, root, async); });
  stats_.add(CommOp::kBroadcast, broadcast_bytes(x.nbytes(), size_));
  return w;
}

void Communicator::send(Tensor x, int dst, int tag) { checked_send(x, dst, tag, false).wait(); }

Work Communicator::send_async(Tensor x, int dst, int tag) {
  return checked_send(x, dst, tag, true);
}

Work Communicator::checked_send(Tensor x, int dst, int tag, bool async) {
  check_buffer(x, "input", "send");
  check_peer(dst, "destination", "send");
  KEEL_CHECK(dst != rank_, "send: rank {} cannot send to itself", rank_);
  KEEL_CHECK(0 <= tag && tag <= kMaxTag, "send: tag {} is outside [0, {}]", tag, kMaxTag);
  Work w = issue(CommOp::kSend, x.nbytes(), async, [&] { return do_send(x, dst, tag, async); });
  stats_.add(CommOp::kSend, x.nbytes());
  return w;
}

void Communicator::recv(Tensor x, int src, int tag) { checked_recv(x, src, tag, false).wait(); }

Work Communicator::recv_async(Tensor x, int src, int tag) {
  return checked_recv(x, src, tag, true);
}

Work Communicator::checked_recv(Tensor x, int src, int tag, bool async) {
  check_buffer(x, "output", "recv");
  check_peer(src, "source", "recv");
  KEEL_CHECK(src != rank_, "recv: rank {} cannot receive from itself", rank_);
  KEEL_CHECK(0 <= tag && tag <= kMaxTag, "recv: tag {} is outside [0, {}]", tag, kMaxTag);
  Work w = issue(CommOp::kRecv, x.nbytes(), async, [&] { return do_recv(x, src, tag, async); });
  stats_.add(CommOp::kRecv, x.nbytes());
  return w;
}

void Communicator::all_to_all(Tensor out, Tensor in) { checked_all_to_all(out, in, false).wait(); }

Work Communicator::all_to_all_async(Tensor out, Tensor in) {
  return checked_all_to_all(out, in, true);
}

Work Communicator::checked_all_to_all(Tensor out, Tensor in, bool async) {
  const char* name = "all_to_all";
  check_buffer(out, "output", name);
  check_buffer(in, "input", name);
  KEEL_CHECK(out.dtype() == in.dtype(), "all_to_all: output is {} but input is {}",
             dtype_name(out.dtype()), dtype_name(in.dtype()));
  KEEL_CHECK(in.numel() == out.numel() && in.numel() % size_ == 0,
             "all_to_all: input and output must hold the same number of elements, a multiple of "
             "the {} ranks; they hold {} and {}",
             size_, in.numel(), out.numel());
  KEEL_CHECK(!overlaps(out, in), "all_to_all: the output overlaps the input");
  Work w =
      issue(CommOp::kAllToAll, in.nbytes(), async, [&] { return do_all_to_all(out, in, async); });
  stats_.add(CommOp::kAllToAll, reduce_scatter_bytes(in.nbytes(), size_));
  return w;
}

void Communicator::all_to_all_v(Tensor out, std::span<const int64_t> recv_counts, Tensor in,
                                std::span<const int64_t> send_counts) {
  checked_all_to_all_v(out, recv_counts, in, send_counts, false).wait();
}

Work Communicator::all_to_all_v_async(Tensor out, std::span<const int64_t> recv_counts, Tensor in,
                                      std::span<const int64_t> send_counts) {
  return checked_all_to_all_v(out, recv_counts, in, send_counts, true);
}

Work Communicator::checked_all_to_all_v(Tensor out, std::span<const int64_t> recv_counts, Tensor in,
                                        std::span<const int64_t> send_counts, bool async) {
  const char* name = "all_to_all_v";
  check_buffer(out, "output", name);
  check_buffer(in, "input", name);
  KEEL_CHECK(out.dtype() == in.dtype(), "all_to_all_v: output is {} but input is {}",
             dtype_name(out.dtype()), dtype_name(in.dtype()));
  const auto n = static_cast<size_t>(size_);
  KEEL_CHECK(send_counts.size() == n && recv_counts.size() == n,
             "all_to_all_v: needs one send and one receive count per rank ({}), got {} and {}", n,
             send_counts.size(), recv_counts.size());
  int64_t sent = 0, received = 0, leaving = 0;
  for (size_t j = 0; j < n; ++j) {
    KEEL_CHECK(send_counts[j] >= 0 && recv_counts[j] >= 0,
               "all_to_all_v: negative count for rank {}", j);
    sent += send_counts[j];
    received += recv_counts[j];
    if (j != static_cast<size_t>(rank_)) leaving += send_counts[j];
  }
  KEEL_CHECK(sent <= in.numel(),
             "all_to_all_v: the send counts add up to {} elements but the "
             "input holds {}",
             sent, in.numel());
  KEEL_CHECK(received <= out.numel(),
             "all_to_all_v: the receive counts add up to {} elements "
             "but the output holds {}",
             received, out.numel());
  KEEL_CHECK(!overlaps(out, in), "all_to_all_v: the output overlaps the input");
  Work w = issue(CommOp::kAllToAllV, in.nbytes(), async,
                 [&] { return do_all_to_all_v(out, recv_counts, in, send_counts, async); });
  stats_.add(CommOp::kAllToAllV, static_cast<uint64_t>(leaving) * dtype_size(in.dtype()));
  return w;
}

void Communicator::barrier() {
  {
    const Activity::Scope busy(activity_, CommOp::kBarrier, name_, 0);
    do_barrier();
  }
  stats_.add(CommOp::kBarrier, 0);
}

std::unique_ptr<Communicator> Communicator::split(int color, int key) {
  KEEL_CHECK(color >= 0 || color == kNoColor,
             "split: color {} is negative; use Communicator::kNoColor to take no part", color);
  std::unique_ptr<Communicator> child = do_split(color, key);
  if (child) {
    child->activity_ = activity_;
    child->name_ = name_;
  }
  return child;
}

int Communicator::do_ranks_on_host() {
  KEEL_FAIL(
      "the {} communicator cannot tell which ranks share a host; ask the host communicator it "
      "was made over (MPI) instead",
      backend());
}

std::vector<std::string> all_gather_text(Communicator& comm, const std::string& text) {
  if (comm.size() == 1) return {text};
  std::vector<int64_t> longest = {static_cast<int64_t>(text.size())};
  comm.all_reduce(host_view(longest), ReduceOp::kMax);
  const size_t width = static_cast<size_t>(longest[0]);
  std::vector<uint8_t> in(width, 0), all(width * static_cast<size_t>(comm.size()));
  std::copy(text.begin(), text.end(), in.begin());
  if (width > 0) comm.all_gather(host_view(all), host_view(in));
  std::vector<std::string> out;
  for (int r = 0; r < comm.size(); ++r) {
    const char* at = reinterpret_cast<const char*>(all.data()) + static_cast<size_t>(r) * width;
    out.emplace_back(at, strnlen(at, width));
  }
  return out;
}

}  // namespace keel::parallel
