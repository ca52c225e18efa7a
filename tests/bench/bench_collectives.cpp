// Bus bandwidth of keel's MPI all_reduce, reduce_scatter and all_gather against the same MPI calls
// made directly, in one run: on the same persistent huge-page buffers (what keel's memory plans
// give it), and on buffers malloc'd for each call (the first-touch page faults keel avoids).
//   mpirun -np 2 build/parallel/keel_bench_collectives [--min-mib 1] [--max-mib 256] [--iters N]
//                                                      [--ring-min-bytes B] [--segment-bytes B]
// Sizes are the full buffer (all_reduce's buffer, reduce_scatter's input, all_gather's output).
// Bus bandwidth = the bytes of docs/PARALLEL.md (2n(N−1)/N, n(N−1)/N) / the median time, the
// time of a call being the slowest rank's. A benchmark, not a test: it prints and exits 0.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "kernels/memory_plan.h"
#include "parallel/mpi_communicator.h"

namespace {

using keel::HostBuffer;
using keel::parallel::MpiCommunicator;
using keel::parallel::MpiSession;

enum class Op { kAllReduce, kReduceScatter, kAllGather };
enum class Variant { kKeel, kMpi, kFresh };
constexpr int kVariants = 3;

const char* op_name(Op op) {
  switch (op) {
    case Op::kAllReduce: return "all_reduce";
    case Op::kReduceScatter: return "reduce_scatter";
    case Op::kAllGather: return "all_gather";
  }
  return "?";
}

uint64_t bus_bytes(Op op, uint64_t n, int ranks) {
  return op == Op::kAllReduce ? keel::parallel::all_reduce_bytes(n, ranks)
                              : keel::parallel::reduce_scatter_bytes(n, ranks);
}

std::string read_line(const char* path) {
  std::ifstream f(path);
  std::string s;
  std::getline(f, s);
  return s;
}

struct Buffers {
  float* a;  // max bytes: all_reduce's buffer, reduce_scatter's input, all_gather's output
  float* b;  // max bytes / ranks: reduce_scatter's output, all_gather's input
};

// One call of op on `count` floats (the full buffer) in the given variant; returns seconds.
double run_once(Op op, Variant v, size_t count, MpiCommunicator& comm, const Buffers& buf) {
  const int ranks = comm.size();
  const size_t chunk = count / static_cast<size_t>(ranks);
  const MPI_Comm mc = comm.handle();
  const int n = static_cast<int>(count), m = static_cast<int>(chunk);
  float* fresh_in = nullptr;
  float* fresh_out = nullptr;
  if (v == Variant::kFresh) {
    // As a caller that allocates per step would: the input written by its producer before the
    // call, the output untouched, both returned to malloc after.
    const size_t in_n = op == Op::kAllGather ? chunk : count;
    const size_t out_n = op == Op::kReduceScatter ? chunk : count;
    fresh_in = static_cast<float*>(std::malloc(in_n * sizeof(float)));
    fresh_out = static_cast<float*>(std::malloc(out_n * sizeof(float)));
    std::fill(fresh_in, fresh_in + in_n, 1.0f);
  }
  MPI_Barrier(mc);
  const double t0 = MPI_Wtime();
  switch (v) {
    case Variant::kKeel: {
      using keel::parallel::host_view;
      if (op == Op::kAllReduce) comm.all_reduce(host_view(buf.a, count));
      if (op == Op::kReduceScatter)
        comm.reduce_scatter(host_view(buf.b, chunk), host_view(buf.a, count));
      if (op == Op::kAllGather) comm.all_gather(host_view(buf.a, count), host_view(buf.b, chunk));
      break;
    }
    case Variant::kMpi:
      if (op == Op::kAllReduce) MPI_Allreduce(MPI_IN_PLACE, buf.a, n, MPI_FLOAT, MPI_SUM, mc);
      if (op == Op::kReduceScatter)
        MPI_Reduce_scatter_block(buf.a, buf.b, m, MPI_FLOAT, MPI_SUM, mc);
      if (op == Op::kAllGather) MPI_Allgather(buf.b, m, MPI_FLOAT, buf.a, m, MPI_FLOAT, mc);
      break;
    case Variant::kFresh:
      if (op == Op::kAllReduce) MPI_Allreduce(fresh_in, fresh_out, n, MPI_FLOAT, MPI_SUM, mc);
      if (op == Op::kReduceScatter)
        MPI_Reduce_scatter_block(fresh_in, fresh_out, m, MPI_FLOAT, MPI_SUM, mc);
      if (op == Op::kAllGather) MPI_Allgather(fresh_in, m, MPI_FLOAT, fresh_out, m, MPI_FLOAT, mc);
      break;
  }
  double dt = MPI_Wtime() - t0;
  std::free(fresh_in);
  std::free(fresh_out);
  double slowest = 0.0;
  MPI_Allreduce(&dt, &slowest, 1, MPI_DOUBLE, MPI_MAX, mc);
  return slowest;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t h = v.size() / 2;
  return v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

}  // namespace

int main(int argc, char** argv) {
  MpiSession session(&argc, &argv);
  MpiCommunicator& comm = session.world();
  size_t min_mib = 1, max_mib = 256;
  int fixed_iters = 0;
  keel::parallel::MpiTuning tuning = comm.tuning();
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--min-mib") min_mib = std::strtoull(argv[i + 1], nullptr, 10);
    if (k == "--max-mib") max_mib = std::strtoull(argv[i + 1], nullptr, 10);
    if (k == "--iters") fixed_iters = std::atoi(argv[i + 1]);
    if (k == "--ring-min-bytes") tuning.ring_min_bytes = std::strtoull(argv[i + 1], nullptr, 10);
    if (k == "--segment-bytes") tuning.segment_bytes = std::strtoull(argv[i + 1], nullptr, 10);
  }
  comm.set_tuning(tuning);
  const int ranks = comm.size();
  const size_t max_bytes = max_mib << 20;
  HostBuffer a(max_bytes), b(max_bytes / static_cast<size_t>(ranks) + 64);
  const Buffers buf{reinterpret_cast<float*>(a.data()), reinterpret_cast<float*>(b.data())};
  std::fill(buf.a, buf.a + max_bytes / sizeof(float), 0.5f);
  std::fill(buf.b, buf.b + max_bytes / sizeof(float) / static_cast<size_t>(ranks), 0.5f);

  if (comm.rank() == 0) {
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    char version[MPI_MAX_LIBRARY_VERSION_STRING] = {};
    int len = 0;
    MPI_Get_library_version(version, &len);
    std::string v(version);
    v = v.substr(0, v.find_first_of(",\n"));
    std::printf("keel bench_collectives: %d ranks on %s, %ld cores online, %s\n", ranks, host,
                sysconf(_SC_NPROCESSORS_ONLN), v.c_str());
    std::printf("transparent huge pages: %s\n",
                read_line("/sys/kernel/mm/transparent_hugepage/enabled").c_str());
    std::printf("load average at start: %s\n", read_line("/proc/loadavg").c_str());
    std::printf("keel tuning: ring from %zu bytes, %zu-byte segments\n", tuning.ring_min_bytes,
                tuning.segment_bytes);
    std::printf(
        "bus GB/s (1e9 B/s) from the median of the slowest rank's time per call; keel and "
        "mpi share persistent huge-page buffers, fresh mallocs per call\n\n");
    std::printf("%-15s %8s %6s %10s %10s %10s %9s %10s\n", "op", "size", "iters", "keel", "mpi",
                "fresh", "keel/mpi", "keel/fresh");
  }
  for (Op op : {Op::kAllReduce, Op::kReduceScatter, Op::kAllGather}) {
    for (size_t mib = min_mib; mib <= max_mib; mib *= 2) {
      const size_t count = (mib << 20) / sizeof(float);
      const int iters =
          fixed_iters > 0 ? fixed_iters : static_cast<int>(std::clamp<size_t>(512 / mib, 5, 40));
      std::vector<double> times[kVariants];
      for (int v = 0; v < kVariants; ++v) run_once(op, static_cast<Variant>(v), count, comm, buf);
      // keel and mpi interleaved, in alternating order, so that a change in the machine's load
      // hits both alike and neither always runs first. fresh runs in a block of its own after
      // them: its mallocs, fills and frees leave the caches cold for whichever call comes next.
      for (int it = 0; it < iters; ++it)
        for (int k = 0; k < 2; ++k) {
          const int v = (it + k) % 2;
          times[v].push_back(run_once(op, static_cast<Variant>(v), count, comm, buf));
        }
      for (int it = 0; it < iters; ++it)
        times[2].push_back(run_once(op, Variant::kFresh, count, comm, buf));
      if (comm.rank() != 0) continue;
      const double bytes = static_cast<double>(bus_bytes(op, mib << 20, ranks));
      double gbs[kVariants];
      for (int v = 0; v < kVariants; ++v) gbs[v] = bytes / median(times[v]) / 1e9;
      std::printf("%-15s %4zu MiB %6d %10.2f %10.2f %10.2f %9.2f %10.2f\n", op_name(op), mib, iters,
                  gbs[0], gbs[1], gbs[2], gbs[0] / gbs[1], gbs[0] / gbs[2]);
      std::fflush(stdout);
    }
  }
  if (comm.rank() == 0)
    std::printf("\nload average at end: %s\n", read_line("/proc/loadavg").c_str());
  return 0;
}
