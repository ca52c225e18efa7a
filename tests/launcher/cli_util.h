// Helpers of the tests that run the keel program: a shell with its output, mpirun with one
// OpenMP thread a rank, a scratch directory per test, and readers of a run's metrics.jsonl and
// model.safetensors.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "runtime/store/safetensors.h"

namespace keel::test {

namespace fs = std::filesystem;

struct Result {
  int code;
  std::string out;  // stdout and stderr together
};

// Runs a shell command; its exit code and output (stdout and stderr together).
inline Result shell(const std::string& command) {
  const std::string cmd = command + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

inline Result run(const std::string& args) { return shell(std::string(KEEL_BINARY) + " " + args); }

inline bool have_mpi() { return KEEL_HAS_MPI && !std::string(KEEL_MPIRUN).empty(); }

// `mpirun -np N` (one OpenMP thread a rank) running `command`.
inline Result run_ranks(int ranks, const std::string& command) {
  return shell(std::string(KEEL_MPIRUN) +
               " --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1 -np " +
               std::to_string(ranks) + " " + command);
}

// `keel train` on `ranks` ranks (1: no mpirun, one OpenMP thread) with extra --set arguments.
inline Result train(int ranks, const std::string& cfg, const std::string& sets) {
  const std::string cmd = std::string(KEEL_BINARY) + " train " + cfg + sets;
  return ranks == 1 ? shell("OMP_NUM_THREADS=1 " + cmd) : run_ranks(ranks, cmd);
}

// Every logged step's value of `key` in a metrics.jsonl as written (9 significant digits), for
// exact comparison.
inline std::vector<std::string> metric_texts(const std::string& metrics, const std::string& key) {
  std::ifstream f(metrics);
  std::vector<std::string> out;
  std::string line;
  const std::string tag = "\"" + key + "\": ";
  while (std::getline(f, line)) {
    const size_t at = line.find(tag);
    if (at != std::string::npos) out.push_back(line.substr(at, line.find(',', at) - at));
  }
  return out;
}

inline std::string file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// A 12-step run of `sets` on `ranks` ranks, once straight and once stopped at step 6
// (training.exit_interval) and run again in dir/straight<tag> and dir/resumed<tag>: the resumed
// run repeats every loss as written and the final parameters byte for byte.
inline void expect_resume_is_bit_exact(const fs::path& dir, int ranks, const std::string& cfg,
                                       const std::string& sets, const std::string& tag,
                                       const std::string& what) {
  const std::string all = sets + " --set training.max_steps=12";
  const std::string straight = (dir / ("straight" + tag)).string();
  const std::string resumed = (dir / ("resumed" + tag)).string();
  Result r = train(ranks, cfg, all + " --set training.output_dir=" + straight);
  ASSERT_EQ(r.code, 0) << what << "\n" << r.out;
  r = train(ranks, cfg,
            all + " --set training.exit_interval=6 --set training.output_dir=" + resumed);
  ASSERT_EQ(r.code, 0) << what << "\n" << r.out;
  EXPECT_NE(r.out.find("stopping at step 6"), std::string::npos) << r.out;
  EXPECT_EQ(metric_texts(resumed + "/metrics.jsonl", "loss").size(), 6u) << what;
  r = train(ranks, cfg, all + " --set training.output_dir=" + resumed);  // resume: auto
  ASSERT_EQ(r.code, 0) << what << "\n" << r.out;
  EXPECT_NE(r.out.find("resumed from " + resumed + "/checkpoints/step_00000006 at step 6"),
            std::string::npos)
      << r.out;
  const std::vector<std::string> want = metric_texts(straight + "/metrics.jsonl", "loss");
  ASSERT_EQ(want.size(), 12u) << what;
  EXPECT_EQ(metric_texts(resumed + "/metrics.jsonl", "loss"), want) << what;
  EXPECT_TRUE(file_bytes(straight + "/model.safetensors") ==
              file_bytes(resumed + "/model.safetensors"))
      << what << ": the final parameters differ";
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("keel_cli_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name) << text;
    return (dir_ / name).string();
  }
  std::string out_dir() const { return (dir_ / "out").string(); }
  // A bad run: exit code ≠ 0, one line of error, and nothing written.
  void expect_clean_failure(const Result& r, const std::string& needle) {
    EXPECT_NE(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("keel: error: "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(needle), std::string::npos) << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
    EXPECT_FALSE(fs::exists(out_dir())) << "a failed run must write nothing";
  }
  fs::path dir_;
};

// Reads one numeric field of every line of a metrics.jsonl.
inline std::vector<double> field(const std::string& path, const std::string& key) {
  std::ifstream f(path);
  std::vector<double> out;
  std::string line;
  const std::string tag = "\"" + key + "\": ";
  while (std::getline(f, line)) {
    const size_t at = line.find(tag);
    if (at != std::string::npos) out.push_back(std::stod(line.substr(at + tag.size())));
  }
  return out;
}

inline std::vector<double> losses(const std::string& path) { return field(path, "loss"); }

// The largest difference between two safetensors files' tensors, relative to each tensor's
// largest magnitude; every name of one must be in the other.
inline double max_relative_difference(const std::string& a_path, const std::string& b_path) {
  const keel::runtime::SafeTensorsReader a(a_path), b(b_path);
  EXPECT_EQ(a.names(), b.names());
  double worst = 0.0;
  for (const std::string& name : a.names()) {
    const keel::Tensor x = a.get(name), y = b.get(name);
    EXPECT_EQ(x.numel(), y.numel()) << name;
    double diff = 0.0, scale = 0.0;
    for (int64_t i = 0; i < std::min(x.numel(), y.numel()); ++i) {
      diff = std::max(diff, std::abs(double{x.f32()[i]} - y.f32()[i]));
      scale = std::max(scale, std::abs(double{x.f32()[i]}));
    }
    worst = std::max(worst, diff / scale);
  }
  return worst;
}

// A small model whose every ZeRO shard divides evenly on 2 and 4 ranks, so the bytes each rank
// sends are exactly what theory says (no padding).
inline const char* kParallelModel = R"(
model: {vocab_size: 256, hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2,
        num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64}
data: {train: data/kjv.txt.gz, seq_length: 48}
training: {max_steps: 20, learning_rate: 3.0e-3, warmup_steps: 2, logging_steps: 1,
           weight_decay: 0.1, max_grad_norm: 0.5, per_device_train_batch_size: 4}
)";

// Two layers of width 64 for tensor parallelism: four query heads, two key/value heads, a
// vocabulary 2 and 4 do not divide.
inline const char* kTensorParallelModel = R"(
model: {vocab_size: 257, hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2,
        num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64}
data: {train: data/kjv.txt.gz, seq_length: 32}
training: {max_steps: 20, learning_rate: 3.0e-3, warmup_steps: 2, logging_steps: 1,
           weight_decay: 0.1, max_grad_norm: 0.5, per_device_train_batch_size: 4}
)";

// The same width in four layers for pipeline parallelism, four micro-batches of two sequences a
// step (8 sequences: dp ranks take 2 / dp each).
inline const char* kPipelineModel = R"(
model: {vocab_size: 257, hidden_size: 64, intermediate_size: 96, num_hidden_layers: 4,
        num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64}
data: {train: data/kjv.txt.gz, seq_length: 32}
training: {max_steps: 20, learning_rate: 3.0e-3, warmup_steps: 2, logging_steps: 1,
           weight_decay: 0.1, max_grad_norm: 0.5, per_device_train_batch_size: 2,
           gradient_accumulation_steps: 4}
)";

// A run's checkpoint of `step` (checkpoints/step_%08d) and its meta.json.
inline std::string step_dir(const std::string& run_dir, int step) {
  char name[40];
  std::snprintf(name, sizeof name, "/checkpoints/step_%08d", step);
  return run_dir + name;
}
inline nlohmann::json meta(const std::string& ckpt) {
  std::ifstream f(ckpt + "/meta.json");
  return nlohmann::json::parse(f);
}

// The (name, rectangle)s of a checkpoint, each in one file only; returns the names.
inline std::set<std::string> names_stored_once(const std::string& ckpt) {
  std::map<std::string, std::string> where;
  std::set<std::string> names;
  for (const std::string& file : meta(ckpt)["files"].get<std::vector<std::string>>()) {
    const keel::runtime::SafeTensorsReader f(ckpt + "/" + file);
    for (const std::string& name : f.names()) {
      names.insert(name);
      const auto [at, added] = where.emplace(name + " " + f.metadata().at(name), file);
      EXPECT_TRUE(added) << name << " is in both " << at->second << " and " << file;
    }
  }
  return names;
}

// The expert-parallel tests' model: the pipeline tests' with 4 experts in every layer, top-2. Its
// weights start 5 times wider than Hugging Face's 0.02 so that the router is decisive: layouts
// sum gradients in other orders, which moves a router probability by ~1e-8, and a token whose
// k-th and (k+1)-th experts are that close would go elsewhere on one layout than on another (a
// different, equally right run; docs/MOE.md). With a router of 0.02 this run meets a 1.5e-8 gap
// by step 14; with 0.1 its closest is 8e-6, three orders above the rounding.
inline const char* kMoeModel = R"(
model: {vocab_size: 257, hidden_size: 64, intermediate_size: 96, num_hidden_layers: 4,
        num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64,
        initializer_range: 0.1, num_local_experts: 4, num_experts_per_tok: 2,
        output_router_logits: true, router_aux_loss_coef: 0.02, router_z_loss_coef: 0.001}
data: {train: data/kjv.txt.gz, seq_length: 32}
training: {max_steps: 20, learning_rate: 3.0e-3, warmup_steps: 2, logging_steps: 1,
           weight_decay: 0.1, max_grad_norm: 0.5, gradient_accumulation_steps: 2}
)";

// One leg of a run carried across layouts: its ranks, its layout's flags, and how the next leg's
// resume line names the checkpoint's writers ("written by ...").
struct CarriedLeg {
  int ranks;
  std::string sets;
  std::string written_by;
};

// What a leg's checkpoint stores: its tensors' names and its meta.json.
struct CarriedCheckpoint {
  std::set<std::string> names;
  nlohmann::json meta;
};

// Trains the legs in turn into out, each saving and stopping every 4 steps and resuming the
// leg before's checkpoint (which its resume line must name); each checkpoint must verify and
// hold each (name, rectangle) in one file.
inline std::vector<CarriedCheckpoint> run_carried_legs(const std::string& cfg,
                                                       const std::string& sets,
                                                       const std::vector<CarriedLeg>& legs,
                                                       const std::string& out) {
  std::vector<CarriedCheckpoint> stored;
  for (size_t i = 0; i < legs.size(); ++i) {
    const Result r = train(legs[i].ranks, cfg,
                           sets + legs[i].sets +
                               " --set training.save_steps=4 --set training.exit_interval=4"
                               " --set training.save_total_limit=1 --set training.output_dir=" +
                               out);
    EXPECT_EQ(r.code, 0) << "leg " << i << "\n" << r.out;
    if (r.code != 0) break;
    if (i > 0) {
      EXPECT_NE(r.out.find("at step " + std::to_string(4 * i) + " in "), std::string::npos)
          << r.out;
      EXPECT_NE(r.out.find("(written by " + legs[i - 1].written_by + ")"), std::string::npos)
          << r.out;
    }
    const std::string ckpt = step_dir(out, 4 * static_cast<int>(i + 1));
    stored.push_back({names_stored_once(ckpt), meta(ckpt)});
    const Result v = run("verify " + ckpt);
    EXPECT_EQ(v.code, 0) << v.out;
  }
  return stored;
}

// An optimizer's settings for a run carried across layouts, and how close the carried run must
// stay to the uninterrupted one: each loss (relative) and the final weights.
struct Carried {
  const char* name;
  std::string sets;
  double tol = 1e-5;
  double params = 1e-5;
};

// AdamW, 8-bit AdamW, Adafactor and GaLore: every optimizer's state crosses the layouts.
inline std::vector<Carried> carried_optimizers() {
  return {
      Carried{"adamw", ""},
      // 8-bit blocks are cut from each rank's shard: another layout rounds otherwise (a small
      // weight by up to 3 %, as under TP).
      Carried{"adamw_8bit", " --set optimizer.type=adamw_8bit --set optimizer.min_8bit_size=1024",
              0.02, 0.1},
      Carried{"adafactor", " --set optimizer.type=adafactor --set optimizer.adafactor_beta1=0.9"},
      Carried{"galore", " --set optimizer.galore.rank=8 --set optimizer.galore.update_proj_gap=5"}};
}

// The carried run in `out` against the uninterrupted one in `one`: 20 losses within c.tol and
// the final weights within c.params.
inline void expect_carried_like_one(const std::string& one, const std::string& out,
                                    const Carried& c) {
  const std::vector<double> want = losses(one + "/metrics.jsonl"),
                            got = losses(out + "/metrics.jsonl");
  ASSERT_EQ(want.size(), 20u);
  ASSERT_EQ(got.size(), 20u);
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_NEAR(got[i], want[i], c.tol * want[i]) << "step " << i + 1;
  EXPECT_LE(max_relative_difference(one + "/model.safetensors", out + "/model.safetensors"),
            c.params);
}

}  // namespace keel::test
