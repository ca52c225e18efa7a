// keel verify and the checksums end to end: a run's checkpoints verify; one flipped bit in a
// tensor, a state file's header or meta.json is named by keel verify (exit 1, with the newest
// good checkpoint) and refused by a resume and by keel export; a checkpoint written before
// checksums still resumes, with a note; under ZeRO each rank's file is covered.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "launcher/cli_util.h"
#include "runtime/store/safetensors.h"

namespace {

using namespace keel::test;  // NOLINT: the helpers of every CLI test
namespace fs = std::filesystem;

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

// One flipped bit of byte `at` of tensor `name` of a state file.
void flip_tensor_bit(const std::string& path, const std::string& name, size_t at) {
  const size_t offset = keel::runtime::SafeTensorsReader(path).file_offset(name) + at;
  std::string bytes = file_bytes(path);
  bytes[offset] = static_cast<char>(bytes[offset] ^ 0x20);
  write_bytes(path, bytes);
}

// Each `from` replaced by its `to` at once (so that two names can trade places).
void swap_texts(const std::string& path,
                const std::vector<std::pair<std::string, std::string>>& r) {
  std::string bytes = file_bytes(path);
  std::vector<std::pair<size_t, size_t>> at;  // (offset, index in r)
  for (size_t i = 0; i < r.size(); ++i) {
    const size_t pos = bytes.find(r[i].first);
    ASSERT_NE(pos, std::string::npos) << r[i].first;
    at.emplace_back(pos, i);
  }
  for (const auto& [pos, i] : at) {
    ASSERT_EQ(r[i].first.size(), r[i].second.size());
    bytes.replace(pos, r[i].first.size(), r[i].second);
  }
  write_bytes(path, bytes);
}

class Verify : public Cli {
 protected:
  // A 1-rank run of kParallelModel with checkpoints at steps 2 and 4, in dir/run.
  std::string trained_run(const std::string& extra = "", int ranks = 1) {
    const std::string cfg = write("m.yaml", kParallelModel);
    const std::string run_dir = (dir_ / "run").string();
    const Result r = train(ranks, cfg,
                           " --set training.max_steps=4 --set training.save_steps=2" + extra +
                               " --set training.output_dir=" + run_dir);
    EXPECT_EQ(r.code, 0) << r.out;
    return run_dir;
  }
  // `keel train` resuming the run in `run_dir` (auto) for two more steps.
  Result resume(const std::string& run_dir, int ranks = 1, const std::string& extra = "") {
    return train(ranks, (dir_ / "m.yaml").string(),
                 " --set training.max_steps=6 --set training.save_steps=2" + extra +
                     " --set training.output_dir=" + run_dir);
  }
};

TEST_F(Verify, GoodCheckpointsVerify) {
  const std::string run_dir = trained_run();
  const std::string ckpt = run_dir + "/checkpoints/step_00000004";
  for (const std::string& spec : {run_dir, run_dir + "/checkpoints", ckpt}) {
    const Result r = run("verify " + spec);
    EXPECT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("keel: verifying " + ckpt + "\n"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("  meta.json               ok: step 4, 1 state file, "), std::string::npos)
        << r.out;
    EXPECT_NE(r.out.find("  rank_00000.safetensors  ok: "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("keel: " + ckpt + " is good"), std::string::npos) << r.out;
  }
  const Result all = run("verify --all " + run_dir);
  EXPECT_EQ(all.code, 0) << all.out;
  EXPECT_NE(all.out.find("2 checkpoints in " + run_dir + "/checkpoints: 2 good, 0 damaged"),
            std::string::npos)
      << all.out;
  EXPECT_EQ(run("verify --help").code, 0);
  EXPECT_NE(run("--help").out.find("verify CKPT [--all]"), std::string::npos);
  const Result nowhere = run("verify " + (dir_ / "nowhere").string());
  EXPECT_EQ(nowhere.code, 1);
  EXPECT_NE(nowhere.out.find("holds no checkpoint"), std::string::npos) << nowhere.out;
}

// Each damage in the newest checkpoint: keel verify names it and the checkpoint to use instead,
// a resume stops on it, keel export refuses it.
TEST_F(Verify, OneFlippedBitIsFoundByVerifyResumeAndExport) {
  const std::string good = trained_run();
  const std::string state = "/checkpoints/step_00000004/rank_00000.safetensors";
  const std::string meta = "/checkpoints/step_00000004/meta.json";
  struct Damage {
    std::string name, problem;
    std::function<void(const std::string& run_dir)> apply;
  };
  const std::vector<Damage> damages = {
      {"data", "tensor 'model.layers.1.mlp.up_proj.weight' does not match its checksum",
       [&](const std::string& d) {
         flip_tensor_bit(d + state, "model.layers.1.mlp.up_proj.weight", 999);
       }},
      // The two layers' query weights trade names: still a valid file, of wrong weights.
      {"header", "rank_00000.safetensors: its header",
       [&](const std::string& d) {
         swap_texts(d + state, {{R"("model.layers.0.self_attn.q_proj.weight":{)",
                                 R"("model.layers.1.self_attn.q_proj.weight":{)"},
                                {R"("model.layers.1.self_attn.q_proj.weight":{)",
                                 R"("model.layers.0.self_attn.q_proj.weight":{)"}});
       }},
      {"meta", "meta.json does not match its checksum",
       [&](const std::string& d) {
         swap_texts(d + meta, {{R"("samples_consumed": 16)", R"("samples_consumed": 17)"}});
       }},
  };
  for (const Damage& damage : damages) {
    SCOPED_TRACE(damage.name);
    const std::string run_dir = (dir_ / damage.name).string();
    fs::copy(good, run_dir, fs::copy_options::recursive);
    damage.apply(run_dir);
    const std::string ckpt = run_dir + "/checkpoints/step_00000004";
    const std::string instead = "--resume " + run_dir + "/checkpoints/step_00000002";

    Result r = run("verify " + run_dir);
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_NE(r.out.find("  problem: "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(damage.problem), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("keel: error: checkpoint " + ckpt +
                         " is damaged; use an earlier "
                         "checkpoint instead (to resume training: " +
                         instead),
              std::string::npos)
        << r.out;
    r = run("verify --all " + run_dir);
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_NE(r.out.find("2 checkpoints in " + run_dir + "/checkpoints: 1 good, 1 damaged"),
              std::string::npos)
        << r.out;
    EXPECT_NE(r.out.find("the newest good one is " + run_dir + "/checkpoints/step_00000002"),
              std::string::npos)
        << r.out;

    r = resume(run_dir);
    EXPECT_NE(r.code, 0) << r.out;
    EXPECT_NE(r.out.find(damage.problem), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(instead), std::string::npos) << r.out;
    r = run("export --format hf " + run_dir + " " + run_dir + "/hf");
    EXPECT_NE(r.code, 0) << r.out;
    EXPECT_NE(r.out.find(damage.problem), std::string::npos) << r.out;
    // The earlier checkpoint named resumes.
    r = train(1, (dir_ / "m.yaml").string(),
              " --set training.max_steps=6 " + instead + " --set training.output_dir=" + run_dir);
    EXPECT_EQ(r.code, 0) << r.out;
  }
}

// A checkpoint as keel wrote it before checksums (format version 1) resumes, saying its files
// were read unverified.
TEST_F(Verify, VersionOneCheckpointsStillResume) {
  const std::string run_dir = trained_run();
  const std::string ckpt = run_dir + "/checkpoints/step_00000004";
  fs::remove_all(run_dir + "/checkpoints/step_00000002");
  {
    const keel::runtime::SafeTensorsReader state(ckpt + "/rank_00000.safetensors");
    std::map<std::string, std::string> metadata = state.metadata();
    metadata.erase("keel_crc32c");
    metadata["keel_state"] = "1";
    std::vector<std::pair<std::string, keel::Tensor>> tensors;
    for (const std::string& name : state.names()) tensors.emplace_back(name, state.get(name));
    keel::runtime::write_safetensors(ckpt + "/rank_00000.v1", tensors, metadata);
  }
  fs::rename(ckpt + "/rank_00000.v1", ckpt + "/rank_00000.safetensors");
  nlohmann::json j = nlohmann::json::parse(file_bytes(ckpt + "/meta.json"));
  j.erase("checksum");
  j.erase("file_checksums");
  j["version"] = 1;
  write_bytes(ckpt + "/meta.json", j.dump(1) + "\n");

  Result r = run("verify " + run_dir);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("version 1: written before checksums"), std::string::npos) << r.out;
  r = resume(run_dir);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("resumed from " + ckpt + " at step 4"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("the checkpoint is of version 1, written before checksums: its files "
                       "were read unverified"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(metric_texts(run_dir + "/metrics.jsonl", "loss").size(), 6u);
}

// Under ZeRO every rank writes its own file, and rank 0 records every file's checksum: damage in
// rank 1's file is found by keel verify and by a resume on either rank count.
TEST_F(Verify, EveryRanksFileIsCovered) {
  if (!have_mpi()) GTEST_SKIP() << "needs MPI and mpirun";
  const std::string run_dir =
      trained_run(" --set parallel.zero_stage=2 --set training.per_device_train_batch_size=2", 2);
  ASSERT_EQ(run("verify " + run_dir).code, 0);
  const std::string rank1 = run_dir + "/checkpoints/step_00000004/rank_00001.safetensors";
  flip_tensor_bit(rank1, "optimizer.exp_avg_sq.model.norm.weight", 3);
  Result r = run("verify " + run_dir);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("  rank_00001.safetensors  DAMAGED: 1 of its "), std::string::npos) << r.out;
  const std::string problem =
      rank1 + ": tensor 'optimizer.exp_avg_sq.model.norm.weight' does not match its checksum";
  EXPECT_NE(r.out.find(problem), std::string::npos) << r.out;
  for (int ranks : {2, 1}) {
    r = resume(run_dir, ranks,
               " --set parallel.zero_stage=2 --set training.per_device_train_batch_size=" +
                   std::to_string(4 / ranks));
    EXPECT_NE(r.code, 0) << r.out;
    EXPECT_NE(r.out.find(problem), std::string::npos) << r.out;
  }
}

}  // namespace
