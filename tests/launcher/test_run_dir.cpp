// A run directory has one writer: a second `keel train` (or `keel import --force`) on a directory
// a run is training in is refused at its start, naming the run; a killed run's lock is free
// again; readers (eval, generate, export) work beside it. Also the edges of a run directory: one
// that cannot be created, a run read from another working directory, a changed global batch at
// resume, a config error under mpirun printed once.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <thread>

#include "cli_util.h"

namespace keel::test {
namespace {

// Lines of text that contain needle.
int count_lines(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

TEST_F(Cli, OneRunPerDirectory) {
  const std::string cfg = write("m.yaml", kParallelModel);
  const std::string out = out_dir(), lock = out + "/.keel.lock";
  const std::string to_out = " --set training.output_dir=" + out;
  Result r = train(1, cfg, " --set training.max_steps=2 --set training.save_steps=2" + to_out);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_FALSE(fs::exists(lock)) << "a finished run lets go of its directory";

  // A long run in the background (it resumes at step 2), holding the directory.
  r = shell("OMP_NUM_THREADS=1 " + std::string(KEEL_BINARY) + " train " + cfg +
            " --set training.max_steps=1000000 --set training.save_steps=0" + to_out + " > " +
            (dir_ / "first.log").string() + " 2>&1 & echo $!");
  ASSERT_EQ(r.code, 0) << r.out;
  const pid_t first = std::stoi(r.out);
  struct Reaper {  // the first run must not outlive a failed test
    pid_t pid;
    ~Reaper() { ::kill(pid, SIGKILL); }
  } reaper{first};
  const std::string named = "training.output_dir " + out + " is being trained by pid " +
                            std::to_string(first) + " on host ";
  for (int i = 0; i < 600 && file_bytes(lock).find('\n') == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_EQ(file_bytes(lock).rfind(std::to_string(first) + "\n", 0), 0u)
      << file_bytes(lock) << file_bytes((dir_ / "first.log").string());

  // The second is refused before it builds anything, naming the first and the ways out.
  r = train(1, cfg, " --set training.max_steps=3" + to_out);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_EQ(r.out.rfind("keel: error: " + named, 0), 0u) << r.out;
  EXPECT_NE(r.out.find(" since "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("; wait for it to finish, stop it, or set training.output_dir to another "
                       "directory"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  if (have_mpi()) {  // rank 0 alone locks; every rank stops, the refusal printed once
    r = run_ranks(2, std::string(KEEL_BINARY) + " train " + cfg + to_out);
    EXPECT_NE(r.code, 0) << r.out;
    EXPECT_EQ(count_lines(r.out, "keel: error: " + named), 1) << r.out;
    EXPECT_EQ(r.out.find("MPI_ABORT"), std::string::npos) << r.out;
  }

  // Readers need no lock.
  const std::string text = write("held_out.txt", std::string(4000, 'a'));
  r = run("eval " + out + " --data " + text + " --max-samples 2");
  EXPECT_EQ(r.code, 0) << r.out;
  r = run("generate " + out + " --prompt In --max-new-tokens 4");
  EXPECT_EQ(r.code, 0) << r.out;
  const std::string hf = (dir_ / "hf").string();
  r = run("export --format hf " + out + " " + hf);
  EXPECT_EQ(r.code, 0) << r.out;
  // An import over the run is refused while it trains, --force or not.
  r = run("import " + hf + " --out " + out + " --force --set data.train=data/kjv.txt.gz");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("--out " + out + " is being trained by pid " + std::to_string(first)),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("import into another directory"), std::string::npos) << r.out;
  EXPECT_EQ(file_bytes(out + "/checkpoints/latest").rfind("step_00000002", 0), 0u);

  // Killed, the first holds nothing: the kernel dropped its flock.
  ASSERT_EQ(::kill(first, SIGKILL), 0);
  for (int i = 0; i < 100 && ::kill(first, 0) == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_TRUE(fs::exists(lock)) << "a killed run leaves its lock file";
  r = train(1, cfg, " --set training.max_steps=3" + to_out);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("resumed from " + out + "/checkpoints/step_00000002 at step 2"),
            std::string::npos)
      << r.out;
  EXPECT_FALSE(fs::exists(lock));
}

// An output_dir that cannot be created stops the run before the model is built.
TEST_F(Cli, OutputDirThatCannotBeCreated) {
  const std::string file = write("a_file", "not a directory\n");
  const Result r = run("train " + write("m.yaml", kParallelModel) +
                       " --set training.output_dir=" + file + "/run");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_EQ(r.out.rfind("keel: error: cannot create training.output_dir " + file +
                            "/run: Not a directory; point training.output_dir at a directory",
                        0),
            0u)
      << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
}

// `keel eval RUN` from another working directory finds the data that the run's config names
// relative to where it was trained, also after the run moved; or says where it looked.
TEST_F(Cli, EvalFromAnotherDirectory) {
  std::string val;
  for (int i = 0; i < 40; ++i) val += "And the evening and the morning were the day. ";
  write("val.txt", val);
  fs::copy_file(std::string(KEEL_SOURCE_DIR) + "/data/kjv.txt.gz", dir_ / "corpus.txt.gz");
  write("m.yaml", R"(
model: {vocab_size: 256, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
        num_attention_heads: 2, num_key_value_heads: 1, max_position_embeddings: 64}
data: {train: corpus.txt.gz, validation: val.txt, seq_length: 48}
training: {max_steps: 2, per_device_train_batch_size: 4, output_dir: runs/x}
)");
  Result r =
      shell("cd " + dir_.string() + " && OMP_NUM_THREADS=1 " + KEEL_BINARY + " train m.yaml");
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string run_dir = (dir_ / "runs/x").string();
  r = run("eval " + run_dir);  // from the source directory
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("keel: eval of the final weights of " + run_dir + ": loss "),
            std::string::npos)
      << r.out;
  fs::create_directories(dir_ / "archive");
  fs::rename(dir_ / "runs", dir_ / "archive/runs");
  const std::string moved = (dir_ / "archive/runs/x").string();
  r = shell("cd / && " + std::string(KEEL_BINARY) + " eval " + moved);
  EXPECT_EQ(r.code, 0) << r.out;
  fs::remove(dir_ / "val.txt");
  r = run("eval " + moved);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("cannot find the run's data.validation 'val.txt' (looked in " +
                       fs::current_path().string() + ", " + (dir_ / "archive").string() + ", " +
                       (dir_ / "archive/runs").string() + ", " + dir_.string()),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("give the validation data with --data PATH"), std::string::npos) << r.out;
}

// A resume with another global batch says so, also when only the number of ranks changed.
TEST_F(Cli, ResumeNamesAChangedGlobalBatch) {
  const std::string cfg = write("m.yaml", kParallelModel);
  const std::string out = " --set training.output_dir=" + out_dir();
  Result r = train(1, cfg, " --set training.max_steps=2 --set training.save_steps=2" + out);
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string smaller = " --set training.per_device_train_batch_size=2";
  r = train(1, cfg, " --set training.max_steps=3 --set training.save_steps=3" + smaller + out);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("keel:   changed since: training.per_device_train_batch_size: 4 -> 2\n"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("keel:   changed since: global batch (per_device_train_batch_size x "
                       "gradient_accumulation_steps x data-parallel ranks): 4 x 1 x 1 = 4 -> "
                       "2 x 1 x 1 = 2 sequences\n"),
            std::string::npos)
      << r.out;
  if (!have_mpi()) return;
  r = train(2, cfg, " --set training.max_steps=4 --set training.save_steps=3" + smaller + out);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out.find("per_device_train_batch_size: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("changed since: global batch (per_device_train_batch_size x "
                       "gradient_accumulation_steps x data-parallel ranks): 2 x 1 x 1 = 2 -> "
                       "2 x 1 x 2 = 4 sequences\n"),
            std::string::npos)
      << r.out;
}

// Under mpirun a config error is one line, from rank 0, and no rank aborts the job.
TEST_F(Cli, ConfigErrorUnderMpiIsPrintedOnce) {
  if (!have_mpi()) GTEST_SKIP() << "no MPI in this build or no mpirun";
  const std::string cfg =
      write("bad.yaml", "training:\n  learnig_rate: 0.1\n  output_dir: " + out_dir() +
                            "\ndata:\n  train: data/kjv.txt.gz\n");
  const Result r = run_ranks(2, std::string(KEEL_BINARY) + " train " + cfg);
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_EQ(count_lines(r.out, "keel: error: "), 1) << r.out;
  EXPECT_EQ(count_lines(r.out, "training.learning_rate"), 1) << r.out;
  EXPECT_EQ(r.out.find("MPI_ABORT"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("aborting the job"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(out_dir()));
}

}  // namespace
}  // namespace keel::test
